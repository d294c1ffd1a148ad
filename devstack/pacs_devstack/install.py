"""Install what the dev stack needs, idempotently: Debian packages, Maven artifacts.

Each service declares the commands it needs and the packages that provide them; a package is
installed only when a command is missing, so a warm machine pays nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pacs_devstack.process import DevstackError, run

_apt_updated = False


def have(command: str) -> bool:
    return shutil.which(command) is not None or Path(command).exists()


def dpkg_installed(package: str) -> bool:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                         check=False)
    return res.returncode == 0 and "install ok installed" in res.stdout


def apt_install(packages: Iterable[str]) -> None:
    """apt-get install the packages that are not installed yet (needs root, as on CI)."""
    global _apt_updated
    missing = [p for p in packages if not dpkg_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise DevstackError(f"missing Debian packages {' '.join(missing)}; install them as root: "
                            f"apt-get install -y {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        run(["apt-get", "update", "-q"], what="apt-get update", env=env, timeout=600)
        _apt_updated = True
    # policy-rc.d keeps postinst scripts from starting system-wide daemons on 0.0.0.0
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            what=f"apt-get install {' '.join(missing)}", env=env, timeout=1200)
    finally:
        if created:
            policy.unlink(missing_ok=True)


def maven_copy(artifact: str, dest: Path) -> Path:
    """`mvn dependency:copy` an artifact (group:artifact:version:type) into `dest`; cached."""
    _group, name, version, kind = artifact.split(":")
    target = dest / f"{name}-{version}.{kind}"
    if target.exists() and target.stat().st_size > 0:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    if not have("mvn"):
        apt_install(["maven"])
    run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={dest}"],
        what=f"download {artifact} from Maven Central", timeout=1200)
    if not target.exists():
        raise DevstackError(f"mvn dependency:copy reported success but {target} is missing")
    return target
