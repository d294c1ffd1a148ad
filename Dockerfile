# The bridge's image for docker-compose deployments (the dev stack does not need Docker).
FROM python:3.11-slim
# /etc/orthanc/pacs-bridge: where the orthanc-config service writes Orthanc's configuration (a
# named volume takes this owner on first use)
RUN useradd --system --home /var/lib/pacs-bridge pacs-bridge \
    && install -d -o pacs-bridge /var/lib/pacs-bridge /etc/orthanc/pacs-bridge
WORKDIR /opt/pacs-bridge
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir '.[postgres,server]'
USER pacs-bridge
WORKDIR /var/lib/pacs-bridge
EXPOSE 9443
# the web app under granian (docker-compose.yml runs `pacs-bridge serve` from the same image too)
CMD ["pacs-bridge", "web"]
