"""Compile the small C libraries that run inside Debian's Orthanc (needs ``gcc``, once per host or image).

Two exist: the civetweb OpenSSL 3 shim (:mod:`bridge.deploy.civetweb_tls`) and the plugin that calls
Orthanc's REST API without holding Python's lock (:mod:`bridge.deploy.orthanc_rest_plugin`).  Both
are built where Orthanc runs, from source in this package, so nothing binary ships with the bridge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class BuildError(RuntimeError):
    pass


def find_compiler(cc: str | None, purpose: str) -> str:
    """``cc``, else ``$CC``, else ``cc``/``gcc`` on PATH; a clear error naming ``purpose`` if none."""
    compiler = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise BuildError(f"no C compiler (install gcc): {purpose}")
    return compiler


def compile_shared(cc: str, source: str, out: Path, *, needed: tuple[str, ...] = ()) -> None:
    """Compile ``source`` into the shared object ``out`` (written beside it, then renamed: a running
    Orthanc never sees half a file), linked against the exact sonames in ``needed``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tempfile.TemporaryDirectory() as work:
        src = Path(work) / "source.c"
        src.write_text(source)
        argv = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(src), "-Wl,--no-as-needed",
                *(f"-l:{lib}" for lib in needed)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BuildError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    tmp.chmod(0o644)
    tmp.replace(out)
