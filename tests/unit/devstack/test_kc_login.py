"""The browserless login's HTML and redirect handling, on canned Keycloak pages."""

from __future__ import annotations

import pytest

from pacs_devstack import kc_login
from pacs_devstack.kc_login import BrowserlessLogin, LoginError

LOGIN_PAGE = """<html><head><title>Sign in to St. Aldhelm</title></head><body>
<form id="kc-form-login" class="pf-v5-c-form" onsubmit="login.disabled = true; return true;"
      action="https://127.0.0.1:8443/realms/hospital/login-actions/authenticate?session_code=a&amp;execution=b&amp;tab_id=c"
      method="post" novalidate="novalidate">
  <input type="hidden" id="id-hidden-input" name="credentialId" value="">
  <input id="username" name="username" type="text">
</form>
<span id="input-error" class="pf-v5-c-helper-text__item-text" aria-live="polite">
  Invalid username or password.</span>
</body></html>"""


def client() -> BrowserlessLogin:
    return BrowserlessLogin("https://127.0.0.1:8443", "hospital", "pacs-viewer",
                            kc_login.REDIRECT_URIS["pacs-viewer"], ca_file="/nonexistent")


def test_form_action_is_unescaped_by_the_caller() -> None:
    form_id, action, hidden = kc_login._form(LOGIN_PAGE)
    assert form_id == "kc-form-login"
    assert "&amp;" in action  # html.unescape happens right before the POST
    assert hidden == {"credentialId": ""}


def test_error_text_is_the_keycloak_message() -> None:
    assert kc_login._error_text(LOGIN_PAGE) == "Invalid username or password."


def test_page_without_form() -> None:
    with pytest.raises(LoginError, match="no Keycloak form"):
        kc_login._form("<html><title>We are sorry...</title></html>")


def test_redirect_checks_state_and_issuer() -> None:
    c = client()
    base = kc_login.REDIRECT_URIS["pacs-viewer"]
    assert c._code_from(f"{base}?state=s1&code=abc&iss={c.issuer}", "s1") == "abc"
    with pytest.raises(LoginError, match="state mismatch"):
        c._code_from(f"{base}?state=other&code=abc", "s1")
    with pytest.raises(LoginError, match="redirect iss"):
        c._code_from(f"{base}?state=s1&code=abc&iss=https://evil.example/realms/hospital", "s1")
    with pytest.raises(LoginError, match="access_denied"):
        c._code_from(f"{base}?error=access_denied&state=s1", "s1")


def test_fresh_totp_never_repeats_a_code_in_a_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000_005.0]
    monkeypatch.setattr(kc_login.time, "time", lambda: now[0])
    monkeypatch.setattr(kc_login.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(kc_login.pyotp.TOTP, "now", lambda self: self.at(now[0]))
    provide = kc_login.fresh_totp("WPRBW5BZTMMG3XJKCDYPASENYLUR3K7Q", "unit/test")
    first, second = provide(), provide()
    assert first != second
    assert now[0] >= 1_000_000_020.0  # waited for the next 30 s window
