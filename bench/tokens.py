"""Benchmark of the PACS token service; prints one JSON document.

1. In process, per algorithm: signing a PACS token (claims + JWS) and verifying a *new* token
   (verifier cache miss: header, signature, claims, MFA), each next to the raw ``cryptography``
   sign / verify rate of the same key over a message of the same size (``ratio`` = ours / raw).
   Also the verifier's cache-hit cost.
2. With the dev stack running (``PACS_BRIDGE_DEVSTACK_DIR``, Keycloak up): ``/token`` exchange under
   load on loopback (granian, 2 workers x 2 app threads, keep-alive, plain HTTP on 127.0.0.1)
   with req/s, p50, p99, and Keycloak's client-credentials grant (HTTPS) under the same load as
   the reference.

    .venv/bin/python bench/tokens.py [--seconds 10] [--concurrency 16] [--no-http]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from bridge.core.verifier import Verifier, VerifierConfig
from bridge.tokens.claims import Grant, Subject, TokenSettings, build, grant_from_roles
from bridge.tokens.keys import ALGORITHMS, KeyEncryptor, KeyRing, MemoryKeyRepository
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS

ISSUER = "https://127.0.0.1:9443"


def _rate(fn: Any, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(50):
            fn()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def _raw(alg: str, key: Any, message: bytes) -> tuple[Any, Any]:
    pub = key.public_key()
    if alg == "ES256":
        sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
        return (lambda: key.sign(message, ec.ECDSA(hashes.SHA256())),
                lambda: pub.verify(sig, message, ec.ECDSA(hashes.SHA256())))
    if alg == "RS256":
        sig = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return (lambda: key.sign(message, padding.PKCS1v15(), hashes.SHA256()),
                lambda: pub.verify(sig, message, padding.PKCS1v15(), hashes.SHA256()))
    sig = key.sign(message)
    return lambda: key.sign(message), lambda: pub.verify(sig, message)


def in_process(seconds: float) -> dict[str, Any]:
    settings = TokenSettings(issuer=ISSUER, audience="pacs")
    subject = Subject(id="3f2a9c1e-guid", username="rad.alice", name="Alice Rad", auth_time=int(time.time()),
                      acr="mfa", amr=("pwd", "otp"))
    grant: Grant = grant_from_roles(["radiologist"], DEFAULT_ROLE_PERMISSIONS, ["Radiology"])
    out: dict[str, Any] = {}
    for alg in ALGORITHMS:
        ring = KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()),
                       algorithm=alg, refresh_seconds=3600)
        key = ring.active().private_key
        jwks = json.dumps(ring.jwks()).encode()
        verifier = Verifier(VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=ISSUER + "/jwks.json",
                                           cache_size=10**7),
                            fetch=lambda url, body, headers, j=jwks: j)
        sample = ring.sign(build(settings, subject, grant, "viewer"))
        signing_input = sample.rsplit(".", 1)[0].encode()
        raw_sign, raw_verify = _raw(alg, key, signing_input)
        t = seconds / 4
        sign_rate = _rate(lambda r=ring: r.sign(build(settings, subject, grant, "viewer")), t)
        tokens = [ring.sign(build(settings, subject, grant, "viewer")) for _ in range(max(200, int(sign_rate * t)))]
        t0 = time.perf_counter()
        for tok in tokens:  # every token new to the verifier: signature and claims checked
            verifier.verify(tok)
        verify_rate = len(tokens) / (time.perf_counter() - t0)
        verifier.verify(sample)
        hit_rate = _rate(lambda v=verifier, s=sample: v.verify(s), t / 2)
        raw_s, raw_v = _rate(raw_sign, t), _rate(raw_verify, t)
        out[alg] = {
            "sign_per_s": round(sign_rate), "raw_sign_per_s": round(raw_s), "sign_ratio": round(sign_rate / raw_s, 3),
            "verify_new_per_s": round(verify_rate), "raw_verify_per_s": round(raw_v),
            "verify_ratio": round(verify_rate / raw_v, 3),
            "cache_hit_us": round(1e6 / hit_rate, 2), "token_bytes": len(sample),
        }
    return out


# --------------------------------------------------------------------------- HTTP load


def _worker(args: tuple[str, int, str, dict[str, str], float, float, bool, str | None]) -> tuple[int, int, list[float]]:
    host, port, path, form, start_at, seconds, tls, ca = args
    body = urllib.parse.urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if "_basic" in form:
        user, pw = form.pop("_basic").split(":", 1)
        body = urllib.parse.urlencode(form).encode()
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    def connect() -> http.client.HTTPConnection:
        if tls:
            return http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca), timeout=10)
        return http.client.HTTPConnection(host, port, timeout=10)

    while time.time() < start_at:
        time.sleep(0.001)
    conn, ok, bad, lat = connect(), 0, 0, []
    end = start_at + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                ok += 1
                lat.append(time.perf_counter() - t0)
            else:
                bad += 1
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = connect()
        except (OSError, http.client.HTTPException):
            bad += 1
            conn.close()
            conn = connect()
    return ok, bad, lat


def load(url: str, form: dict[str, str], seconds: float, concurrency: int, ca: str | None = None) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(url)
    tls = parsed.scheme == "https"
    port = parsed.port or (443 if tls else 80)
    start_at = time.time() + 1.0
    jobs = [(parsed.hostname, port, parsed.path, dict(form), start_at, seconds, tls, ca) for _ in range(concurrency)]
    with mp.get_context("fork").Pool(concurrency) as pool:
        results = pool.map(_worker, jobs)
    ok = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)) if lat else (lambda q: None)
    return {"requests_per_s": round(ok / seconds, 1), "ok": ok, "errors": bad, "p50_ms": pick(0.5),
            "p99_ms": pick(0.99), "concurrency": concurrency, "seconds": seconds}


# --------------------------------------------------------------------------- wrk (C load generator)


# wrk only reports "Non-2xx or 3xx responses: N"; this counts every status per thread, keeps the
# first bodies of failed answers (OAuth error JSON: no token in it) and prints one JSON line at
# the end, so the bench says *what* failed, not just how many.
_WRK_STATUS_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
statuses = {}
samples = {}
function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if (status < 200 or status >= 400) and #samples < 5 then
    table.insert(samples, k .. " " .. string.sub(body or "", 1, 300))
  end
end
local function quote(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end
function done(summary, latency, requests)
  local total, bodies = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
    for _, b in ipairs(t:get("samples")) do if #bodies < 5 then table.insert(bodies, quote(b)) end end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, quote(k) .. ":" .. v) end
  local e = summary.errors
  io.write("WRK_STATUS_JSON {\"statuses\":{" .. table.concat(parts, ",") .. "},\"failed_bodies\":[" ..
    table.concat(bodies, ",") .. "],\"socket_errors\":{\"connect\":" .. e.connect .. ",\"read\":" .. e.read ..
    ",\"write\":" .. e.write .. ",\"timeout\":" .. e.timeout .. ",\"status\":" .. e.status .. "}}\n")
end
"""


def _wrk_script(form: dict[str, str], directory: Path) -> Path:
    """A wrk Lua script POSTing the form (and HTTP Basic when the form holds ``_basic``)."""
    form = dict(form)
    basic = form.pop("_basic", None)
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(urllib.parse.urlencode(form))}",
             'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"']
    if basic:
        lines.append(f'wrk.headers["Authorization"] = "Basic {base64.b64encode(basic.encode()).decode()}"')
    lines.append(_WRK_STATUS_LUA)
    path = directory / f"post-{abs(hash(tuple(form))) % 10**8}.lua"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # holds a bearer-equivalent subject token / client secret
    return path


def _ms(value: str) -> float:
    num = float(re.sub(r"[a-z]+$", "", value))
    unit = re.search(r"[a-z]+$", value)
    return num * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit.group(0) if unit else "s"]


def wrk_load(url: str, form: dict[str, str], seconds: float, connections: int, threads: int = 1) -> dict[str, Any]:
    """Load with Debian's ``wrk`` (one C thread: it leaves the second core to the server)."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as d:
        script = _wrk_script(form, Path(d))
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, int(seconds))}s",
                              "--latency", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    detail = re.search(r"^WRK_STATUS_JSON (.*)$", out, re.M)
    status = json.loads(detail.group(1)) if detail else {}
    sockets = status.get("socket_errors", {})
    return {"requests_per_s": round(rps, 1), "p50_ms": round(_ms(lat["50"]), 2), "p99_ms": round(_ms(lat["99"]), 2),
            "errors": (int(non2xx.group(1)) if non2xx else 0) + sum(v for k, v in sockets.items() if k != "status"),
            "statuses": dict(sorted(status.get("statuses", {}).items())), "socket_errors": sockets,
            "failed_bodies": status.get("failed_bodies", []),
            "connections": connections, "seconds": seconds, "generator": f"wrk -t{threads}"}


def _loader(use_wrk: bool) -> Any:
    if not use_wrk:
        return lambda url, form, seconds, concurrency, ca=None: load(url, form, seconds, concurrency, ca)
    from pacs_devstack import install

    if shutil.which("wrk") is None:
        install.apt_install(["wrk"])
    return lambda url, form, seconds, concurrency, ca=None: wrk_load(url, form, seconds, concurrency)


def _tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of the server's log: worker restarts and tracebacks show up here."""
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


def http_part(seconds: float, concurrency: int, use_wrk: bool = True, threads: int = 2) -> dict[str, Any]:
    from bridge.store.db import migrate
    from pacs_devstack import demo_data
    from pacs_devstack import keycloak as kc
    from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
    from pacs_devstack.service import StackContext
    from pacs_devstack.state import free_port, read_stack

    stack = read_stack()
    if "keycloak" not in stack:
        return {"skipped": "no running dev stack with keycloak (set PACS_BRIDGE_DEVSTACK_DIR, `devstack up`)"}
    ca = stack["ca"]["file"]
    kc_url, realm = stack["keycloak"]["url"], stack["keycloak"].get("realm", "hospital")
    user = "rad.alice"
    login = BrowserlessLogin(kc_url, realm, "pacs-viewer", "https://127.0.0.1:9443/viewer/oidc/callback", ca_file=ca)
    subject = login.login(user, str(demo_data.user(user)["password"]),
                          otp=fresh_totp(demo_data.user(user)["totp_secret"], f"{realm}/{user}")).access_token
    tmp = Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    db = f"sqlite:///{tmp}/bridge.db"
    migrate(db)
    # what the sync writes for a radiologist: keyed by the directory id the token carries (the
    # exchange looks a federated user up by that id only; the token's signature is the server's job)
    import jwt

    from bridge.store.db import engine, session
    from bridge.store.models import RoleAssignment
    from bridge.tokens.claims import subject_from_keycloak

    directory_id = subject_from_keycloak(jwt.decode(subject, options={"verify_signature": False}))[0].id
    with session(engine(db)) as s:
        s.add(RoleAssignment(subject_id=directory_id, username=user, role="radiologist", scopes={}))
    cfg = tmp / "bridge.yaml"
    cfg.write_text(json.dumps({
        "keycloak": {"url": kc_url, "realm": realm, "ca_file": ca},
        "store": {"url": db},
        "tokens": {"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": ISSUER,
                   "clients": [{"client_id": "pacs-viewer"}]},
    }))
    port = free_port()
    errlog = tmp / "server.log"
    env = {**os.environ, "PACS_BRIDGE_CONFIG": str(cfg), "PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_TOKEN": "1000000/second"}
    # the web server of every deployment (bridge/deploy/web_server.py), here without TLS: this part
    # measures the exchange itself
    threads = max(threads, 1)
    server = f"granian 2 workers x {threads} app threads, plain HTTP on 127.0.0.1"
    granian = [str(Path(sys.executable).with_name("granian")), "--interface", "wsgi", "--http", "1", "--no-ws",
               "--workers", "2", "--blocking-threads", str(threads), "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "bridge.web.wsgi:app"]
    with errlog.open("wb") as log:  # the workers' tracebacks too
        proc = subprocess.Popen(granian, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/jwks.json")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "client_id": "pacs-viewer",
                "subject_token": subject, "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        probe.request("POST", "/token", body=urllib.parse.urlencode(form),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = probe.getresponse()
        if answer.status != 200:
            return {"error": f"exchange probe: HTTP {answer.status} {answer.read()[:200]!r}"}
        run_load = _loader(use_wrk)
        run_load(f"http://127.0.0.1:{port}/token", form, 1.0, 2)  # warm-up
        exchange = run_load(f"http://127.0.0.1:{port}/token", form, seconds, concurrency)
    finally:
        proc.terminate()
        proc.wait(10)
    secret = StackContext(ca_file=Path(ca)).secret(kc.CLIENT_SECRET)
    kc_form = {"grant_type": "client_credentials", "_basic": f"pacs-bridge:{secret}"}
    kc_token_url = f"{kc_url}/realms/{realm}/protocol/openid-connect/token"
    run_load(kc_token_url, dict(kc_form), 1.0, 2, ca)  # warm-up
    reference = run_load(kc_token_url, kc_form, seconds, concurrency, ca)
    return {
        "exchange": {**exchange, "server": server, "server_log_tail": _tail(errlog)},
        "keycloak_client_credentials": {**reference, "server": "Keycloak 26.5 start-dev, HTTPS keep-alive"},
        "exchange_vs_keycloak": round(exchange["requests_per_s"] / max(reference["requests_per_s"], 0.1), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--python-load", action="store_true", help="the Python load generator instead of wrk")
    ap.add_argument("--threads", type=int, default=2,
                    help="app threads per server worker (2 measured best on 2 cores)")
    args = ap.parse_args()
    result: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    result["in_process"] = in_process(args.seconds / 2)
    result["cpus"] = os.cpu_count()
    if not args.no_http:
        result["http"] = http_part(args.seconds, args.concurrency, use_wrk=not args.python_load, threads=args.threads)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
