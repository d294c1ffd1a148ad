"""Make Debian bookworm's Orthanc serve HTTPS: two tiny libraries its web server can load.

Why this exists: Orthanc 1.10.1 in Debian bookworm uses the system's civetweb 1.15, which does not
link OpenSSL but opens ``libssl.so`` and ``libcrypto.so`` at run time (``dlopen``, the unversioned
names that only the ``libssl-dev`` package installs) and looks up its functions by name.  One of
them, ``SSL_get_peer_certificate``, is no longer a function in OpenSSL 3 (a macro for
``SSL_get1_peer_certificate``), so the lookup yields a null pointer and **Orthanc crashes
(SIGSEGV) on the first HTTPS request**, right after a successful handshake.  Without
``libssl-dev`` HTTPS does not start at all.

The fix, without patching or rebuilding a package: a directory holding

* ``libssl.so``: a shared object that depends on the system's ``libssl.so.3`` and defines the one
  missing function as a call to ``SSL_get1_peer_certificate`` (same contract: a new reference the
  caller frees, which civetweb does);
* ``libcrypto.so``: an empty shared object that depends on ``libcrypto.so.3``.

Orthanc runs with ``LD_LIBRARY_PATH`` naming that directory, so civetweb's ``dlopen("libssl.so")``
finds the shim and every other name resolves in the real OpenSSL 3 (``dlsym`` on a handle searches
the object's dependencies).  Nothing else is affected: every other library, Orthanc itself and the
Python plugin's ``ssl`` module load ``libssl.so.3`` by its versioned name.  Building needs a C
compiler and ``libssl3`` (``cc``; ``gcc`` in Debian), once per host or image.
"""

from __future__ import annotations

from pathlib import Path

from bridge.deploy.c_build import BuildError, compile_shared, find_compiler

#: what Orthanc's environment needs: ``LD_LIBRARY_PATH=<the directory build() wrote>``
ENV_VAR = "LD_LIBRARY_PATH"

SSL_SHIM_SOURCE = """\
/* civetweb 1.15 looks this name up in libssl.so; OpenSSL 3 only has SSL_get1_peer_certificate. */
typedef struct ssl_st SSL;
typedef struct x509_st X509;
extern X509 *SSL_get1_peer_certificate(const SSL *s);
X509 *SSL_get_peer_certificate(const SSL *s) { return SSL_get1_peer_certificate(s); }
"""
CRYPTO_SHIM_SOURCE = "/* libcrypto.so for civetweb's dlopen: every symbol comes from libcrypto.so.3 */\n"


#: the error of a failed build (the name callers know)
ShimBuildError = BuildError


def build(out_dir: Path, cc: str | None = None) -> Path:
    """Write ``libssl.so`` and ``libcrypto.so`` into ``out_dir`` (atomically replaced); return it."""
    compiler = find_compiler(cc, "Orthanc's HTTPS needs the civetweb OpenSSL 3 shim")
    for name, source, needed in (("libssl.so", SSL_SHIM_SOURCE, "libssl.so.3"),
                                 ("libcrypto.so", CRYPTO_SHIM_SOURCE, "libcrypto.so.3")):
        compile_shared(compiler, source, out_dir / name, needed=(needed,))
    return out_dir


def built(out_dir: Path) -> bool:
    return (out_dir / "libssl.so").is_file() and (out_dir / "libcrypto.so").is_file()
