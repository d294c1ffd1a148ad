"""The plugin bundle is self-contained: Debian's ``/usr/bin/python3 -I`` (no venv, no checkout, no
user site) imports it, and it holds the core and the plugin modules and nothing else of the project."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.core import token_format
from bridge.deploy import plugin_bundle as bundle

SYSTEM_PYTHON = Path("/usr/bin/python3")

#: imports the entry with a stand-in ``orthanc`` module (the real one exists only inside Orthanc), then
#: prints where every ``bridge`` module came from and whether the venv's site-packages is reachable
_PROBE = r"""
import json, sys, types
calls = []
orthanc = types.ModuleType("orthanc")
orthanc.LogWarning = lambda m: calls.append(m)
orthanc.GetConfiguration = lambda: "{}"
for name in ("RegisterIncomingHttpRequestFilter", "RegisterReceivedInstanceCallback", "RegisterOnChangeCallback"):
    setattr(orthanc, name, lambda cb, name=name: calls.append(name))
orthanc.RegisterRestCallback = lambda uri, cb: calls.append("rest " + uri)
class _Enum:
    def __getattr__(self, name): return len(name)
orthanc.InstanceOrigin = orthanc.ChangeType = orthanc.ReceivedInstanceAction = _Enum()
sys.modules["orthanc"] = orthanc
sys.path.insert(0, sys.argv[1])
import pacs_bridge_plugin
import jwt, cryptography
print(json.dumps({
    "bridge_files": sorted(m.__file__ for n, m in sys.modules.items() if n == "bridge" or n.startswith("bridge.")),
    "calls": calls,
    "venv": any("venv" in p for p in sys.path),
    "jwt": jwt.__version__, "cryptography": cryptography.__version__,
    "allowed": pacs_bridge_plugin.orthanc_plugin.incoming_http_request_filter("/system", method=1, headers={}),
}))
"""


@pytest.fixture
def built(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["plugin", "bundle", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_bundle_holds_the_core_and_the_plugin_modules_only(built: Path) -> None:
    lib = built / bundle.LIB
    found = {str(p.relative_to(lib)) for p in lib.rglob("*.py")}
    core = {f"bridge/core/{p.name}" for p in (Path(bundle.__file__).parents[1] / "core").glob("*.py")}
    plugin = {f"bridge/pacs/{p.name}" for p in (Path(bundle.__file__).parents[1] / "pacs").glob("*.py")}
    assert found == core | plugin | {"bridge/__init__.py"}
    assert "bridge/pacs/gate.py" in plugin and not any("deploy" in f for f in found)
    assert {p.name for p in built.iterdir()} == {bundle.ENTRY, bundle.LIB, bundle.MANIFEST}


def test_bundle_carries_its_version_and_the_token_format(built: Path) -> None:
    manifest = json.loads((built / bundle.MANIFEST).read_text())
    assert manifest["token_format"] == token_format.CURRENT
    assert manifest["token_formats_understood"] == sorted(token_format.UNDERSTOOD)
    assert manifest["bundle_version"].startswith("0.") and "+" in manifest["bundle_version"]
    assert set(manifest["files"]) == {str(p.relative_to(built)) for p in built.rglob("*.py")}
    assert manifest["bundle_version"] in (built / bundle.LIB / "bridge" / "__init__.py").read_text()


def test_rebuilding_replaces_the_previous_bundle(built: Path) -> None:
    stale = built / bundle.LIB / "bridge" / "tokens" / "service.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise SystemExit('stale')\n")
    bundle.build(built)
    assert not stale.exists()


def test_bundle_imports_under_system_python_isolated(built: Path, tmp_path: Path) -> None:
    # not skipped when missing: the dev stack installs orthanc-python's python3 with python3-jwt
    assert SYSTEM_PYTHON.exists(), "Debian's /usr/bin/python3 with python3-jwt and python3-cryptography"
    run = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", _PROBE, str(built)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    assert not probe["venv"]
    assert probe["bridge_files"] and all(f.startswith(str(built / bundle.LIB) + "/") for f in probe["bridge_files"])
    assert "RegisterIncomingHttpRequestFilter" in probe["calls"]
    # the filtered listings and the public DICOMweb root are served by the plugin's own callbacks
    assert {"rest /studies", "rest /patients", "rest /series", "rest /instances", "rest /tools/find",
            "rest /dicom-web/(.*)"} <= set(probe["calls"])
    assert any("plugin bundle" in c and "token format" in c for c in probe["calls"])
    assert probe["allowed"] is False  # no configuration: fail closed


#: verifies tokens with the bundle's core under Debian's PyJWT 2.6 / cryptography 38 (the venv runs
#: the same tests with its own versions): a good token is allowed, a tampered or unknown-format one refused
_VERIFY = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/pacs_bridge_plugin_lib")
from bridge.core.verifier import Verifier, VerifierConfig
import jwt
data = json.loads(sys.stdin.read())
fetch = lambda url, body, headers: json.dumps(data["jwks"] if url.endswith("jwks.json") else {"revoked": []}).encode()
v = Verifier(VerifierConfig(issuer=data["issuer"], audience="pacs", jwks_url=data["issuer"] + "/jwks.json",
                            revocation_url=data["issuer"] + "/revocations"), fetch=fetch)
out = {name: v.authorize("Bearer " + tok, "GET", "/studies/abc").allow for name, tok in data["tokens"].items()}
out["jwt"] = jwt.__version__
print(json.dumps(out))
"""


def test_bundled_core_verifies_under_system_pyjwt(built: Path, tmp_path: Path) -> None:
    from pacs_bridge_double import ISSUER, FakeBridge

    from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository

    assert SYSTEM_PYTHON.exists(), "Debian's /usr/bin/python3 with python3-jwt and python3-cryptography"
    double = FakeBridge(KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()),
                                refresh_seconds=0))
    good = double.token()
    head, body, sig = good.split(".")
    tokens = {"good": good, "tampered": f"{head}.{body}.{sig[:-4]}AAAA",
              "future_format": double.token(**{token_format.CLAIM: token_format.CURRENT + 1})}
    run = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", _VERIFY, str(built)], cwd=tmp_path, timeout=60,
                         input=json.dumps({"issuer": ISSUER, "jwks": double.ring.jwks(), "tokens": tokens}),
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result.pop("jwt").startswith("2.")
    assert result == {"good": True, "tampered": False, "future_format": False}
