"""Break-glass against the real stack (Keycloak, Samba AD, Orthanc with the bridge's plugin,
PostgreSQL, rsyslog), through the gateway over HTTP with Keycloak's real login forms:

* a request whose new login is not fresh (the redirect's prompt=login/max_age=0 stripped, so
  Keycloak answers from its SSO session) is refused, and nothing is granted;
* a request with a fresh password + TOTP login yields a 60-minute grant on that study only: the
  PACS serves it and refuses the same patient's other study and another patient's study;
* the alert reaches rsyslog at alert severity and the webhook's HTTPS receiver (stack CA);
* the queue shows the item, /metrics counts it, until another person (an auditor) closes it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bg_helpers import NAV, World, received_syslog, webhook_bodies

from bridge.core import grants as grants_mod
from bridge.core.audit_codes import AuditEventType
from bridge.http import pinned_session
from bridge.web.gateway import views

#: a Cardiology-only cardiologist of the demo hospital (the role carries the emergency capability)
REQUESTER = "card.kara"
REVIEWER = "comp.olga"


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert m, "no CSRF token on the page"
    return m.group(1)


def _open_metric(world: World) -> float:
    text = pinned_session(world.ca).get(world.origin + "/metrics", timeout=10).text
    m = re.search(r"^pacs_bridge_break_glass_open_reviews (\S+)$", text, re.M)
    assert m, text[-500:]
    return float(m.group(1))


def _form(csrf: str, study_uid: str) -> dict[str, str]:
    return {"csrf_token": csrf, "target_kind": "study", "target": study_uid,
            "reason": "Unconscious patient in ED, prior chest CT needed now", "purpose_of_use": "BTG"}


def _grants(world: World, bg: Any) -> list[Any]:
    return [i for i in world.services.break_glass.items(None, 50) if i.subject_id == world.ids[REQUESTER]
            and i.target.value == bg]


def test_break_glass_end_to_end(bg_world: World, expire_after: Any) -> None:
    w = bg_world
    expire_after(w.ids[REQUESTER])
    study = w.upload(f"BG-{time.time_ns() % 10**9}", "Oncology")
    same_patient = w.upload(study["patient_id"], "Oncology")
    other = w.upload(f"BG-{time.time_ns() % 10**9}x", "Oncology")
    open_before = _open_metric(w)

    http = w.log_in(REQUESTER)
    landing = http.get(w.gateway + "/", headers=NAV)
    assert landing.status_code == 200 and 'action="/pacs/break-glass"' in landing.text
    csrf = _csrf(landing.text)
    assert http.get(f"{w.gateway}/studies/{study['study_id']}").status_code == 403  # not in her scope

    # 1. the new login is not fresh: the redirect's prompt=login and max_age=0 are stripped, so
    #    Keycloak answers at once from its SSO session with the earlier auth_time -> refused
    time.sleep(3)
    asked = w.post(http, "/break-glass", _form(csrf, study["study_uid"]))
    assert asked.status_code == 302
    parts = urlsplit(asked.headers["Location"])
    query = dict(parse_qsl(parts.query))
    assert query["prompt"] == "login" and query["max_age"] == "0"
    stripped = urlunsplit(parts._replace(query=urlencode(
        {k: v for k, v in query.items() if k not in ("prompt", "max_age")})))
    back = w.keycloak_forms(http, http.get(stripped, allow_redirects=False, headers=NAV), REQUESTER)
    assert back.status_code == 401 and "Emergency access refused" in back.text, back.text[:400]
    assert "predates" in back.text
    assert _grants(w, study["study_uid"]) == []
    assert http.get(f"{w.gateway}/studies/{study['study_id']}").status_code == 403

    # 2. the real thing: a new password + TOTP login
    landing = http.get(w.gateway + "/", headers=NAV)
    asked = w.post(http, "/break-glass", _form(_csrf(landing.text), study["study_uid"]))
    assert asked.status_code == 302
    kc_page = http.get(asked.headers["Location"], allow_redirects=False, headers=NAV)
    assert kc_page.status_code == 200 and "kc-form-login" in kc_page.text  # Keycloak asks again
    back = w.keycloak_forms(http, kc_page, REQUESTER)
    assert back.status_code == 200 and "Emergency access granted" in back.text, back.text[:400]
    (item,) = _grants(w, study["study_uid"])
    assert item.expires_at - item.created_at == dt.timedelta(minutes=60)
    assert item.permissions == ("download", "view") and item.review_state == "open"

    # the session's PACS token carries it, limited to that study
    raw = http.cookies.get(views.COOKIE)
    login = w.app.extensions[views.EXTENSION].store.get(raw)
    claims = views._token_claims(login.tokens.pacs_token)
    (bg,) = [g for g in grants_mod.from_claims(claims) if g.kind == "break-glass"]
    assert bg.studies == frozenset({study["study_uid"]}) and bg.exp == int(item.expires_at.timestamp())
    assert "BTG" in [p["code"] for p in claims["extensions"]["ihe_iua"]["purpose_of_use"]]

    # the PACS (Orthanc's plugin) allows that study and refuses the others, through the gateway...
    assert http.get(f"{w.gateway}/studies/{study['study_id']}").status_code == 200
    assert http.get(f"{w.gateway}/studies/{study['study_id']}/archive").status_code == 200
    assert http.get(f"{w.gateway}/studies/{same_patient['study_id']}").status_code == 403
    assert http.get(f"{w.gateway}/studies/{other['study_id']}").status_code == 403
    # ...and directly with a token of the stack's token service
    orthanc = pinned_session(w.ca)
    token = {"Authorization": f"Bearer {w.pacs_token(REQUESTER)}"}
    assert orthanc.get(f"{w.stack['orthanc']['url']}/studies/{study['study_id']}", headers=token).status_code == 200
    assert orthanc.get(f"{w.stack['orthanc']['url']}/studies/{other['study_id']}", headers=token).status_code == 403

    # 3. at once: the audit record, the syslog alert (severity 1: <81>), the webhook
    events = w.services.audit_store.query(types=[AuditEventType.BREAK_GLASS_START.value], study=study["study_uid"])
    assert len(events) == 1
    deadline = time.time() + 20
    alert = hook = None
    while time.time() < deadline and not (alert and hook):
        alert = [line for line in received_syslog(w) if line.startswith(b"<81>1 ")
                 and study["study_uid"].encode() in line]
        hook = [b for b in webhook_bodies() if b["grant"]["id"] == item.id]
        time.sleep(0.5)
    assert alert, "no alert-severity syslog message reached rsyslog"
    assert b"110127" in alert[0] and b"BTG" in alert[0]
    assert hook and hook[0]["type"] == "break-glass.started" and hook[0]["grant"]["purpose_of_use"] == "BTG"
    assert "token" not in str(hook[0]).lower() and "secret" not in str(hook[0]).lower()

    # 4. the queue: counted in /metrics, not visible to the requester, closed by another person
    assert _open_metric(w) == open_before + 1
    assert http.get(w.gateway + "/break-glass/reviews", headers=NAV).status_code == 403
    auditor = w.log_in(REVIEWER)
    queue = auditor.get(w.gateway + "/break-glass/reviews", headers=NAV)
    assert queue.status_code == 200 and f'/break-glass/reviews/{item.id}"' in queue.text
    closed = w.post(auditor, f"/break-glass/reviews/{item.id}",
                    {"csrf_token": _csrf(queue.text), "verdict": "justified", "comment": "ED record confirms"})
    assert closed.status_code == 303, closed.text[:300]
    assert w.services.break_glass.item(item.id).review_state == "justified"  # type: ignore[union-attr]
    assert _open_metric(w) == open_before
    queue = auditor.get(w.gateway + "/break-glass/reviews", headers=NAV)
    assert "justified by comp.olga" in queue.text
