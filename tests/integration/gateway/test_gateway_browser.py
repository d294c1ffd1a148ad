"""Staff open the PACS in a real browser (Debian's Chromium) through the bridge's gateway: password
+ TOTP at Keycloak, the landing page, Orthanc Explorer through the gateway, logout and Back, the
idle timeout, an upload, a leaver's open tab, and no token anywhere the browser can show."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gw_browser_helpers import APPS, Stack
from sqlalchemy import delete, select

from bridge.store.db import session
from bridge.store.models import RoleAssignment
from pacs_devstack import browser, demo_data
from pacs_devstack.browser import Browser
from pacs_devstack.kc_login import fresh_totp
from pacs_devstack.realm import AD_REALM

pytestmark = pytest.mark.integration

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.")


def _login(b: Browser, username: str, gateway: str) -> None:
    """Answer Keycloak's password and OTP forms; wait until the browser is back at the gateway."""
    assert b.wait_for(lambda: b.element("#kc-form-login") is not None), b.url()
    b.fill("#username", username)
    b.fill("#password", str(demo_data.user(username)["password"]))
    b.click("#kc-login")
    assert b.wait_for(lambda: b.element("#otp") is not None), (b.url(), b.source()[:500])
    b.fill("#otp", fresh_totp(demo_data.user(username)["totp_secret"], f"{AD_REALM}/{username}")())
    b.click("#kc-login")
    assert b.wait_for(lambda: b.url().startswith(gateway)), b.url()


def _issued_token(text: str) -> bool:
    """A JWT that Keycloak or the bridge issued: its header names a signing key (``kid``).  Other tests
    of the suite store JWT-looking *patient names* in the shared Orthanc (audit evasion); the explorer
    shows them, and they are data, not credentials."""
    header = text.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except ValueError:
        return True  # undecodable: count it, never hide a real one
    return not isinstance(decoded, dict) or "kid" in decoded


def _no_token_anywhere(b: Browser) -> None:
    """No JWT in the URL, the page source, the cookies (HttpOnly ones too) or web storage."""
    found = b.execute("return [location.href, document.documentElement.outerHTML, "
                      "JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.cookie];")
    cookies = b.cookies()
    for text in [*found, b.url(), *(str(c.get("value")) for c in cookies)]:
        for match in JWT.finditer(text or ""):
            where = (text or "")[max(0, match.start() - 300):match.start() + 40]
            assert not _issued_token(match.group(0)), f"a token is visible to the browser: ...{where!r}"
    names = {c["name"] for c in cookies}
    gw = [c for c in cookies if c["name"].startswith("__Host-")]
    assert gw and all(c["secure"] and c["httpOnly"] and c.get("sameSite") == "Lax" and c["path"] == "/" for c in gw), (
        names, gw)


def test_radiologist_logs_in_sees_landing_finds_study_and_logs_out(gw_stack: Stack, tmp_path: Path) -> None:
    browser.ensure_installed()
    study = gw_stack.upload("GATEWAY^ALICE^STUDY")
    gateway = gw_stack.gateway
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        b.go(gateway + "/")
        _login(b, "rad.alice", gateway)
        assert b.wait_for(lambda: "Your roles" in b.source()), b.source()[:500]
        page = b.source()
        assert "rad.alice" in page and "radiologist" in page and "/app/explorer.html" in page
        _no_token_anywhere(b)

        # Orthanc Explorer through the gateway: the patient list, then the study
        b.go(gateway + "/app/explorer.html#find-patients")
        assert b.wait_for(lambda: "GATEWAY^ALICE^STUDY" in b.source() or "GATEWAY ALICE" in b.source(),
                          timeout=30), b.source()[:1500]
        b.go(gateway + f"/app/explorer.html#study?uuid={study['study_id']}")
        assert b.wait_for(lambda: study["study_uid"] in b.source(), timeout=30), b.source()[:1500]
        assert b.url().startswith(gateway)
        _no_token_anywhere(b)

        # logout (the landing page's button: a POST with the CSRF token), then Back
        b.go(gateway + "/")
        assert b.wait_for(lambda: b.element("form[action$='/logout'] button") is not None)
        b.click("form[action$='/logout'] button")
        assert b.wait_for(lambda: b.url().startswith(gateway + "/logged-out")), b.url()
        assert not any(c["name"].startswith("__Host-") for c in b.cookies())
        b.back()
        assert b.wait_for(lambda: b.element("#kc-form-login") is not None), (b.url(), b.source()[:300])


def test_idle_timeout_logs_out_and_the_next_visit_asks_for_the_password(
    private_gateway: Callable[..., str], gw_stack: Stack, tmp_path: Path,
) -> None:
    browser.ensure_installed()
    gateway = private_gateway(idle_timeout_seconds=10)
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        b.go(gateway + "/")
        _login(b, "rad.chen", gateway)
        assert b.wait_for(lambda: "Your roles" in b.source())
        time.sleep(12)  # > the 10 s idle timeout, without a request
        b.go(gateway + "/")
        # not silently back in through the live Keycloak session: the password form again
        assert b.wait_for(lambda: b.element("#kc-form-login") is not None), (b.url(), b.source()[:500])
        assert b.element("#password") is not None


def test_technologist_uploads_a_file_through_the_explorer(gw_stack: Stack, tmp_path: Path) -> None:
    from pacs_devstack.pacs_double import dicom_instance

    browser.ensure_installed()
    name = f"GATEWAY^UPLOAD^{int(time.time())}"
    uid = f"1.2.826.0.1.3680043.10.1137.78.{int(time.time())}"
    dcm = tmp_path / "upload.dcm"
    dcm.write_bytes(dicom_instance(patient_id=f"GWU-{int(time.time())}", patient_name=name, study_uid=uid + ".1",
                                   series_uid=uid + ".2", sop_uid=uid + ".3"))
    gateway = gw_stack.gateway
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        b.go(gateway + "/app/explorer.html#upload")
        _login(b, "tech.uma", gateway)
        # the fragment does not survive the login's redirects: open the upload page again
        b.go(gateway + "/app/explorer.html#upload")
        assert b.wait_for(lambda: b.element("#upload.ui-page-active") is not None), b.url()
        b.send_file("#fileupload", dcm)
        assert b.wait_for(lambda: "upload.dcm" in b.source()), b.source()[:1000]
        # the explorer's jQuery Mobile button is styled over; a DOM click reaches its handler
        b.execute("document.getElementById('upload-button').click();")
        from bridge.http import pinned_session

        http = pinned_session(gw_stack.info["ca"]["file"])
        token = gw_stack.pacs_token("tech.tom")

        def stored() -> bool:
            r = http.post(gw_stack.orthanc + "/tools/find", json={"Level": "Study", "Query": {
                "StudyInstanceUID": uid + ".1"}}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            return r.status_code == 200 and len(r.json()) == 1

        assert b.wait_for(stored, timeout=30), b.source()[:2000]


def test_a_leavers_open_tab_is_refused_after_the_sync_revokes(gw_stack: Stack, tmp_path: Path) -> None:
    browser.ensure_installed()
    user = "rad.dana"
    sub = gw_stack.directory_ids[user]
    eng = gw_stack.services.engine
    gateway = gw_stack.gateway
    with session(eng) as s:
        rows = [(r.role, r.source_group_dn, r.rule_id, dict(r.scopes), r.managed) for r in
                s.scalars(select(RoleAssignment).where(RoleAssignment.subject_id == sub)).all()]
    assert rows, f"{user} holds no PACS role in the demo directory"
    try:
        with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
            b.go(gateway + "/")
            _login(b, user, gateway)
            assert b.wait_for(lambda: "Your roles" in b.source())
            b.go(gateway + "/studies")
            assert b.wait_for(lambda: "[" in b.source()), b.source()[:300]
            # the sync sees a leaver: the assignments go, the subject's tokens are revoked
            with session(eng) as s:
                s.execute(delete(RoleAssignment).where(RoleAssignment.subject_id == sub))
            from bridge.sync.factory import revoke_subject_hook

            revoke_subject_hook(eng, gw_stack.settings.tokens.max_lifetime_seconds)(sub)
            # refused within the revocation interval (the gateway's and the plugin's revocation caches
            # refresh every few seconds): reload until then, never longer
            deadline = time.monotonic() + 10
            while True:
                b.go(gateway + "/studies")
                page = b.source()
                # refused: a page that is not the study list (a bare "403" matched a study id in the list)
                if ("No PACS access" in page or "kc-form-login" in page
                        or not b.execute("return document.body.innerText;").lstrip().startswith("[")):
                    break
                assert time.monotonic() < deadline, page[:500]
                time.sleep(0.5)
            assert "[" not in b.execute("return document.body.innerText;")[:5]
    finally:
        with session(eng) as s:
            for role, dn, rule, scopes, managed in rows:
                s.add(RoleAssignment(subject_id=sub, username=user, role=role, source_group_dn=dn, rule_id=rule,
                                     scopes=scopes, managed=managed))


def test_renewal_through_keycloak_keeps_the_session_and_orthanc_accepts_the_new_token(
    private_gateway: Callable[..., str], gw_stack: Stack, tmp_path: Path,
) -> None:
    """Every request renews (margin > token lifetime): Keycloak's real refresh, the MFA rule on the
    refreshed token, a new PACS token that Orthanc accepts, and no login form in between."""
    browser.ensure_installed()
    gw_stack.upload("GATEWAY^RENEWAL")
    gateway = private_gateway(renew_margin_seconds=100_000)
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        b.go(gateway + "/")
        _login(b, "rad.bruno", gateway)
        assert b.wait_for(lambda: "Your roles" in b.source())
        store = APPS[gateway].extensions["pacs_bridge_gateway"].store
        raw = next(c["value"] for c in b.cookies() if c["name"] == "__Host-pacs-gateway")
        seen = {store.get(raw).tokens.pacs_token}
        for _ in range(3):
            b.go(gateway + "/studies")
            assert b.wait_for(lambda: b.source().count('"') >= 2 and "kc-form-login" not in b.source()), \
                b.source()[:500]
            assert b.url() == gateway + "/studies"
            seen.add(store.get(raw).tokens.pacs_token)
        assert len(seen) == 4, "each request should have renewed the PACS token"
        b.go(gateway + "/")
        assert b.wait_for(lambda: "Your roles" in b.source()), b.source()[:500]
