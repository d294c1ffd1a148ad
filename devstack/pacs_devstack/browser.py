"""Headless Chromium for login tests, driven over the W3C WebDriver protocol of Debian's
``chromedriver`` (plain HTTP+JSON: no selenium needed).

The dev CA is trusted through ``--ignore-certificate-errors-spki-list`` (the SPKI hashes of the
stack's own server certificates only; every other certificate is still verified) with a private
``--user-data-dir``, without which Chromium ignores that flag.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.http import pinned_session
from pacs_devstack import install
from pacs_devstack.state import free_port

#: what a machine needs for the browser tests (installed by `ensure_installed`, as CI does)
APT_PACKAGES = ("chromium", "chromium-driver")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def ensure_installed() -> None:
    install.apt_install(APT_PACKAGES)


def spki_hash(cert_file: str | Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate, as Chromium's flag wants it."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Browser:
    """One WebDriver session: `go`, `url`, `fill`, `click`, `source`, `back`, `execute`, `cookies`."""

    def __init__(self, base: str, session_id: str):
        self.base = f"{base}/session/{session_id}"
        self.http = pinned_session()  # chromedriver on loopback http: no proxy, no env CA bundle

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        res = self.http.request(method, self.base + path, json=body, timeout=60)
        value = res.json().get("value")
        if res.status_code >= 300:
            raise RuntimeError(f"webdriver {path}: {value.get('error') if isinstance(value, dict) else value}")
        return value

    def go(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def url(self) -> str:
        return str(self._call("GET", "/url"))

    def source(self) -> str:
        return str(self._call("GET", "/source"))

    def element(self, css: str) -> str | None:
        try:
            found = self._call("POST", "/element", {"using": "css selector", "value": css})
        except RuntimeError:
            return None
        return str(next(iter(found.values())))

    def fill(self, css: str, text: str) -> None:
        el = self.element(css)
        if el is None:
            raise RuntimeError(f"no element {css!r} on {self.url()}")
        self._call("POST", f"/element/{el}/value", {"text": text})

    def click(self, css: str) -> None:
        el = self.element(css)
        if el is None:
            raise RuntimeError(f"no element {css!r} on {self.url()}")
        self._call("POST", f"/element/{el}/click", {})

    def back(self) -> None:
        self._call("POST", "/back", {})

    def refresh(self) -> None:
        self._call("POST", "/refresh", {})

    def execute(self, script: str, *args: Any) -> Any:
        """Run JavaScript in the page (W3C ``execute/sync``); ``return`` gives the value back."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def execute_async(self, script: str, *args: Any) -> Any:
        """Run JavaScript that calls its last argument with the result (W3C ``execute/async``)."""
        return self._call("POST", "/execute/async", {"script": script, "args": list(args)})

    def cdp(self, command: str, params: dict[str, Any] | None = None) -> Any:
        """A Chrome DevTools Protocol command through chromedriver (e.g. ``Network.setExtraHTTPHeaders``)."""
        return self._call("POST", "/goog/cdp/execute", {"cmd": command, "params": params or {}})

    def cookies(self) -> list[dict[str, Any]]:
        """Every cookie of the current page's site, HttpOnly ones included (WebDriver sees them)."""
        return list(self._call("GET", "/cookie"))

    def send_file(self, css: str, path: str | Path) -> None:
        """Choose ``path`` in the file input ``css`` (WebDriver: the path as the element's keys)."""
        self.fill(css, str(path))

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return True
            time.sleep(0.2)
        return False


@contextmanager
def chromium(trusted_certs: Iterable[str | Path], profile_dir: Path) -> Iterator[Browser]:
    """A headless Chromium trusting exactly the given server certificates; closed afterwards."""
    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    http = pinned_session()
    session_id = None
    try:
        for _ in range(100):
            try:
                if http.get(base + "/status", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        spki = ",".join(spki_hash(c) for c in trusted_certs)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [*FLAGS, f"--user-data-dir={profile_dir}", f"--ignore-certificate-errors-spki-list={spki}"],
        }}}}
        res = http.post(base + "/session", json=caps, timeout=60)
        value = res.json()["value"]
        if res.status_code >= 300:
            raise RuntimeError(f"chromedriver could not start Chromium: {value.get('message', '')[:300]}")
        session_id = value["sessionId"]
        yield Browser(base, session_id)
    finally:
        if session_id:
            with suppress(requests.RequestException):
                http.delete(f"{base}/session/{session_id}", timeout=30)
        driver.terminate()
        try:
            driver.wait(10)
        except subprocess.TimeoutExpired:
            driver.kill()
