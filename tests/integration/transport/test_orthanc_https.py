"""Orthanc serves HTTPS only (issue 12 item 1): a certificate of the stack CA, TLS 1.2 or later,
no answer to plain HTTP on its port; the stack's bridge and gateway reach it over verified HTTPS
without any ``allow_plaintext``."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from pacs_devstack import tls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orthanc(stack: dict[str, Any]) -> dict[str, Any]:
    if "orthanc" not in stack:
        pytest.skip("the dev stack's Orthanc is not part of this run")
    return dict(stack["orthanc"])


def _port(orthanc: dict[str, Any]) -> int:
    url = urlsplit(orthanc["url"])
    assert url.scheme == "https" and url.port
    return url.port


def test_orthanc_answers_https_with_a_stack_ca_certificate(orthanc: dict[str, Any]) -> None:
    r = requests.get(orthanc["url"] + "/system", timeout=10, verify=orthanc["ca_file"])
    assert r.status_code == 403 and r.content == b""  # the plugin's answer: no token, no data
    context = ssl.create_default_context(cafile=orthanc["ca_file"])
    with socket.create_connection(("127.0.0.1", _port(orthanc)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert s.getpeercert()["issuer"] == ((("commonName", tls.CA_NAME),),)


def test_plain_http_gets_no_answer(orthanc: dict[str, Any]) -> None:
    """Not a 400 or a redirect: no HTTP at all on the port (the request is never parsed as HTTP)."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(orthanc), timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("GET", "/system")
        conn.getresponse()
    conn.close()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(orthanc["url"].replace("https://", "http://") + "/system", timeout=10)


def test_tls_below_1_2_is_refused(orthanc: dict[str, Any]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(orthanc["ca_file"])
    context.set_ciphers("DEFAULT@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", _port(orthanc)), timeout=10) as raw, \
            pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_an_unknown_ca_is_refused_by_the_client(orthanc: dict[str, Any], tmp_path: Path) -> None:
    """A client that trusts another CA refuses Orthanc's certificate (the certificate is checked)."""
    other = tls.issue_foreign_client(tmp_path, "x.test")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(orthanc["url"] + "/system", timeout=10, verify=str(other.ca))


def test_the_stack_configures_no_plaintext_for_orthanc(stack: dict[str, Any], orthanc: dict[str, Any]) -> None:
    """The bridge's configuration of this stack: Orthanc's URLs are https with the stack CA, no opt-out."""
    if "bridge" not in stack:
        pytest.skip("the stack's bridge is not part of this run")
    config = yaml.safe_load(Path(stack["bridge"]["config"]).read_text())
    pacs, gateway = config["pacs"], config.get("gateway", {})
    assert pacs["orthanc_url"] == orthanc["url"] and pacs["ca_file"] == stack["ca"]["file"]
    assert "allow_plaintext" not in pacs
    assert gateway["orthanc_url"].startswith("https://") and gateway["orthanc_ca_file"] == stack["ca"]["file"]
    assert "allow_plaintext" not in gateway
