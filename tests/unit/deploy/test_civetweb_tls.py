"""The civetweb OpenSSL 3 shim (bridge/deploy/civetweb_tls.py): what civetweb's ``dlopen("libssl.so")``
+ ``dlsym`` will find in it.  Orthanc serving HTTPS with it: tests/integration/transport/."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest

from bridge.deploy import civetweb_tls

needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                              reason="no C compiler here (the dev stack installs gcc for the shim)")


@needs_cc
def test_the_shim_defines_the_missing_function_and_resolves_the_rest_in_openssl_3(tmp_path: Path) -> None:
    out = civetweb_tls.build(tmp_path / "shim")
    assert civetweb_tls.built(out)
    ssl_lib = ctypes.CDLL(str(out / "libssl.so"))
    # the one name OpenSSL 3 lacks, and names civetweb needs that come from libssl.so.3 through the shim
    for name in ("SSL_get_peer_certificate", "SSL_get1_peer_certificate", "SSL_CTX_new", "OPENSSL_init_ssl"):
        assert getattr(ssl_lib, name) is not None, name
    crypto = ctypes.CDLL(str(out / "libcrypto.so"))
    for name in ("ERR_get_error", "X509_free", "CRYPTO_free"):
        assert getattr(crypto, name) is not None, name


@needs_cc
def test_a_rebuild_replaces_the_files(tmp_path: Path) -> None:
    out = civetweb_tls.build(tmp_path / "shim")
    first = (out / "libssl.so").stat().st_ino
    civetweb_tls.build(out)
    assert (out / "libssl.so").stat().st_ino != first  # atomically replaced, never written in place
    assert not list(out.glob(".*.tmp"))


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(civetweb_tls.ShimBuildError, match="gcc"):
        civetweb_tls.build(tmp_path / "shim")


def test_a_failing_compiler_is_named(tmp_path: Path) -> None:
    with pytest.raises(civetweb_tls.ShimBuildError, match="failed"):
        civetweb_tls.build(tmp_path / "shim", cc="false")
