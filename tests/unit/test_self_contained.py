"""No project file refers to a path outside the repository.

Why: the repository must stand alone (a fresh clone, CI, a site's build); a pointer to a file on one
developer's machine is a broken reference for everybody else.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# built from parts so this file does not match itself
OUTSIDE = re.compile("|".join([
    r"\.\./" + "shared", "/" + "work/", "/" + "home/[a-z]", "/" + "root/", "shared/" + "reference",
]))


def _project_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_no_project_file_refers_to_a_path_outside_the_repository():
    hits = []
    for path in _project_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary fixtures
        hits += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []


def test_the_pattern_catches_each_kind_of_outside_path():
    for line in ["see ../" + "shared/x.md", "/" + "work/tools/x", "/" + "home/alice/x", "/" + "root/.cache"]:
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search('self._req("PATCH", f"/Users/{uid}")')
