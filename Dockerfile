# The bridge's image for docker-compose deployments (the dev stack does not need Docker).
FROM python:3.11-slim
RUN useradd --system --home /var/lib/pacs-bridge pacs-bridge && mkdir -p /var/lib/pacs-bridge \
    && chown pacs-bridge /var/lib/pacs-bridge
WORKDIR /opt/pacs-bridge
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir '.[postgres,server]'
USER pacs-bridge
WORKDIR /var/lib/pacs-bridge
EXPOSE 9443
CMD ["pacs-bridge", "serve"]
