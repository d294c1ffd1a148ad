"""Log a user in through Keycloak's *browser* flow without a browser (tests, demo, benchmarks).

Why the browser flow and not the password grant: only the browser flow runs the LoA step-up
(`acr`) and the OTP form the PACS relies on; a password grant proves nothing about MFA.

What it does, as a browser would: authorization code + PKCE (S256) + state + nonce; GET the
authorization endpoint, parse the login form, POST username and password, answer the OTP form if
Keycloak shows one, take the code from the redirect (never followed: nothing listens there),
check `state` and `iss`, redeem the code at the token endpoint.  TLS is verified against the dev
CA.  Keycloak sets its login cookies `Secure`; the stack serves HTTPS, so Python's cookie jar
sends them back (over plain HTTP it would not: "Cookie not found").

OTP codes cannot be reused within their 30 s window (`otpPolicyCodeReusable=false`):
`fresh_totp` waits for the next window when a user's current code was already spent here.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pyotp
import requests

from bridge.http import pinned_session


class LoginError(RuntimeError):
    """The login did not end with tokens; the message says at which step (never a secret)."""


_FORM = re.compile(r"<form\b[^>]*\bid=\"(?P<id>[^\"]+)\"[^>]*>", re.I | re.S)
_ACTION = re.compile(r"\baction=\"(?P<action>[^\"]*)\"", re.I)
_HIDDEN = re.compile(r"<input\b[^>]*type=\"hidden\"[^>]*>", re.I | re.S)
_ATTR = re.compile(r"\b(name|value)=\"([^\"]*)\"", re.I)
_ERROR = re.compile(r"(?:id=\"input-error[^\"]*\"|class=\"[^\"]*(?:kc-feedback-text|alert-error|pf-m-danger)"
                    r"[^\"]*\")[^>]*>(?P<text>.*?)<", re.I | re.S)

#: redirect URIs registered for the clients in keycloak-realm/hospital-realm.json (never followed here)
REDIRECT_URIS = {
    "pacs-viewer": "https://127.0.0.1:9443/viewer/oidc/callback",
    "pacs-bridge": "https://127.0.0.1:8443/oidc/callback",
}

# ----------------------------------------------------------------- TOTP without reuse

_spent: dict[tuple[str, str], str] = {}
_spent_lock = threading.Lock()


def fresh_totp(secret_base32: str, key: str, *, period: int = 30) -> Callable[[], str]:
    """A code provider for `login(otp=...)` that never hands out a code already spent for `key`.

    `key` identifies the credential (e.g. "hospital/rad.alice"): Keycloak rejects a reused code,
    so a second login within the same window waits for the next one (at most `period` seconds).
    """
    totp = pyotp.TOTP(secret_base32, interval=period)

    def provide() -> str:
        with _spent_lock:
            code = totp.now()
            while _spent.get((key, secret_base32)) == code:
                time.sleep(period - time.time() % period + 0.2)
                code = totp.now()
            _spent[(key, secret_base32)] = code
            return code

    return provide


# ----------------------------------------------------------------- the login


@dataclass
class LoginResult:
    tokens: dict[str, Any]
    #: each step's form id, e.g. ["kc-form-login", "kc-otp-login-form"]: which factors were asked
    steps: list[str] = field(default_factory=list)

    @property
    def access_token(self) -> str:
        return str(self.tokens["access_token"])

    @property
    def id_token(self) -> str:
        return str(self.tokens["id_token"])


@dataclass
class BrowserlessLogin:
    """One OIDC client of one realm.  `client_secret` only for confidential clients."""

    base_url: str
    realm: str
    client_id: str
    redirect_uri: str
    ca_file: str
    client_secret: str | None = None
    scope: str = "openid"
    timeout: float = 30.0

    @property
    def issuer(self) -> str:
        return f"{self.base_url.rstrip('/')}/realms/{self.realm}"

    def _session(self) -> requests.Session:
        return pinned_session(self.ca_file)

    def login(self, username: str, password: str, *, otp: str | Callable[[], str] | None = None,
              acr_values: str | None = None, session: requests.Session | None = None,
              extra_params: dict[str, str] | None = None) -> LoginResult:
        """Run the flow; `otp` (a code or a provider) is used only if Keycloak asks for it.

        Pass the same `session` again to log in with the SSO cookie of an earlier login (step-up).
        """
        http = session or self._session()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        params = {"client_id": self.client_id, "redirect_uri": self.redirect_uri, "response_type": "code",
                  "scope": self.scope, "state": state, "nonce": nonce, "code_challenge": challenge,
                  "code_challenge_method": "S256", **(extra_params or {})}
        if acr_values:
            params["acr_values"] = acr_values
        res = http.get(f"{self.issuer}/protocol/openid-connect/auth", params=params,
                       allow_redirects=False, timeout=self.timeout)
        steps: list[str] = []
        for _ in range(6):
            location = res.headers.get("Location", "")
            if res.status_code in (302, 303) and location.startswith(self.redirect_uri):
                code = self._code_from(location, state)
                return LoginResult(self._redeem(http, code, verifier), steps)
            if res.status_code in (301, 302, 303):  # Keycloak-internal redirect (e.g. required action)
                res = http.get(urljoin(res.url, res.headers["Location"]), allow_redirects=False,
                               timeout=self.timeout)
                continue
            if res.status_code != 200:
                raise LoginError(f"{self.realm}/{self.client_id}: login for {username!r}: HTTP "
                                 f"{res.status_code} at step {len(steps) + 1}: {_error_text(res.text)}")
            form_id, action, hidden = _form(res.text)
            if form_id in steps and form_id == "kc-form-login":
                raise LoginError(f"{self.realm}: login form shown again for {username!r}: "
                                 f"{_error_text(res.text)}")
            steps.append(form_id)
            if form_id == "kc-form-login":
                data = {**hidden, "username": username, "password": password, "credentialId": ""}
            elif form_id == "kc-otp-login-form":
                if otp is None:
                    raise LoginError(f"{self.realm}: Keycloak asks {username!r} for an OTP code; none given")
                if len(steps) > 1 and steps[-2] == "kc-otp-login-form":
                    raise LoginError(f"{self.realm}: OTP code rejected for {username!r}: "
                                     f"{_error_text(res.text)}")
                data = {**hidden, "otp": otp() if callable(otp) else otp}
            elif form_id == "kc-totp-settings-form":
                raise LoginError(f"{self.realm}: {username!r} has no OTP credential; Keycloak asks to enrol")
            else:
                raise LoginError(f"{self.realm}: unexpected form {form_id!r} for {username!r}: "
                                 f"{_error_text(res.text)}")
            res = http.post(html.unescape(action), data=data, allow_redirects=False, timeout=self.timeout)
        raise LoginError(f"{self.realm}: login for {username!r} did not finish after {len(steps)} steps")

    def _code_from(self, location: str, state: str) -> str:
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if "error" in query:
            raise LoginError(f"{self.realm}: authorization error {query['error']}: "
                             f"{query.get('error_description', '')}")
        if query.get("state") != state:
            raise LoginError(f"{self.realm}: state mismatch in the redirect (CSRF check)")
        if query.get("iss") not in (None, self.issuer):
            raise LoginError(f"{self.realm}: redirect iss {query.get('iss')!r} is not {self.issuer!r}")
        if "code" not in query:
            raise LoginError(f"{self.realm}: redirect without a code")
        return query["code"]

    def _redeem(self, http: requests.Session, code: str, verifier: str) -> dict[str, Any]:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "client_id": self.client_id, "code_verifier": verifier}
        auth = (self.client_id, self.client_secret) if self.client_secret else None
        res = http.post(f"{self.issuer}/protocol/openid-connect/token", data=data, auth=auth,
                        timeout=self.timeout)
        if res.status_code != 200:
            body = res.json() if res.headers.get("Content-Type", "").startswith("application/json") else {}
            raise LoginError(f"{self.realm}/{self.client_id}: code redemption failed: HTTP {res.status_code} "
                             f"{body.get('error', '')} {body.get('error_description', '')}".rstrip())
        return dict(res.json())

    def verified_claims(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """Claims of a token after checking signature (realm JWKS), issuer, expiry and `audience` if given."""
        http = self._session()
        jwks = http.get(f"{self.issuer}/protocol/openid-connect/certs", timeout=self.timeout).json()
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [k for k in jwks.get("keys", []) if k.get("kid") == kid and k.get("use", "sig") == "sig"]
        if not keys:
            raise LoginError(f"{self.realm}: no signing key {kid!r} in the realm's JWKS")
        key = jwt.PyJWK(keys[0])
        return dict(jwt.decode(token, key.key, algorithms=[keys[0].get("alg", "RS256")], issuer=self.issuer,
                               audience=audience, options={"verify_aud": audience is not None}))


def _form(page: str) -> tuple[str, str, dict[str, str]]:
    """(form id, action URL, hidden fields) of the first Keycloak form on a page."""
    for m in _FORM.finditer(page):
        action = _ACTION.search(m.group(0))
        if action and m.group("id").startswith("kc-"):
            end = page.find("</form>", m.end())
            body = page[m.end(): end if end > 0 else len(page)]
            hidden = {}
            for inp in _HIDDEN.findall(body):
                attrs = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(inp)}
                if "name" in attrs:
                    hidden[attrs["name"]] = attrs.get("value", "")
            return m.group("id"), action.group("action"), hidden
    raise LoginError(f"no Keycloak form on the page: {_error_text(page)}")


def _error_text(page: str) -> str:
    """The message Keycloak shows (e.g. 'Invalid username or password.'), for error reports."""
    m = _ERROR.search(page)
    if m:
        return " ".join(html.unescape(m.group("text")).split()) or "(no message)"
    title = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
    return " ".join(title.group(1).split()) if title else page[:120].replace("\n", " ")


def client_for(stack: dict[str, Any], realm: str, client_id: str) -> BrowserlessLogin:
    """A login helper for a client of the running dev stack (`stack.json` contents).

    The confidential `pacs-bridge` client gets its secret from the stack's secrets file.
    """
    from pacs_devstack import keycloak
    from pacs_devstack.service import StackContext

    if client_id not in REDIRECT_URIS:
        raise LoginError(f"no redirect URI known for client {client_id!r}; known: {', '.join(REDIRECT_URIS)}")
    ctx = StackContext(ca_file=Path(stack["ca"]["file"]))
    secret = ctx.secret(keycloak.CLIENT_SECRET) if client_id == "pacs-bridge" else None
    return BrowserlessLogin(stack["keycloak"]["url"], realm, client_id, REDIRECT_URIS[client_id],
                            ca_file=str(ctx.ca_file), client_secret=secret)
