"""The share lifecycle (docs/sharing.md, "Share lifecycle"): create, list, revoke, a new passcode,
internal shares as token grants, and the external recipient's way in (link + passcode -> a share
token for the share endpoint) and out (the study, de-identified, as a ZIP of DICOM files).

Who may share what is decided the way the PACS decides a request: the sharer's PACS token's grants
(:mod:`bridge.core.grants`) must hold ``share`` in ONE grant that covers the study, whose
:class:`~bridge.core.grants.StudyInfo` the bridge reads from Orthanc *with the sharer's own token*
(the plugin then refuses a study the sharer cannot see at all); the policy's
:func:`~bridge.sharing.policy.decide_share` decides the recipient and the terms with that grant's
permissions.

Why the share endpoint reads Orthanc with a token of its own, minted per request: the external
recipient never gets a token the PACS accepts.  The bridge signs, for the time of one request, a
PACS token whose only grant is kind ``share`` on that one study (view + download, ``exp`` at the
share's end), subject ``share:<id>``, ``auth_time`` the recipient's passcode entry and ``amr``
``pwd`` + ``mfa`` (link and passcode are the two factors of this path, issue 14): Orthanc's plugin
decides and audits it like any other token, and a bug here cannot reach another study.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import multiprocessing
import re
import secrets
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.core import grants as grants_mod
from bridge.core import token_format
from bridge.core.audit_codes import AuditEventType, ObjectKind, Outcome
from bridge.core.audit_events import Actor, AuditEvent, ParticipantObject, patient, study, user
from bridge.core.errors import VerificationError
from bridge.core.permissions import Permission, expand
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.directory.model import normalize_dn
from bridge.policy.sharing import SharingPolicy, parse_duration
from bridge.sharing.deidentify import DeidentificationRefused, Deidentifier, share_uid
from bridge.sharing.policy import (
    ExternalRecipient,
    InternalGroup,
    InternalUser,
    Recipient,
    ShareRequest,
    decide_share,
)
from bridge.sharing.store import ShareRecord, ShareStore, check_passcode, hash_passcode, link_hash, new_passcode
from bridge.tokens import claims as claims_mod
from bridge.tokens.keys import KeyRing

#: the ``client_id`` of the PACS tokens the share endpoint mints for itself (Orthanc's audit trail)
PACS_CLIENT = "pacs-bridge-share"
SUBJECT_PREFIX = "share:"
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_TEXT = 256
#: the bridge's own PACS token for one request to Orthanc (seconds)
PACS_TOKEN_SECONDS = 120
#: instances fetched ahead while one is de-identified (bounded: at most this many in memory)
PREFETCH = 4


class ShareError(Exception):
    """A refusal for the caller: HTTP status, OAuth-style error code, a description naming the field."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class StudySource(Protocol):
    """How the bridge reads a study from the PACS (Orthanc over HTTP: :class:`OrthancSource`)."""

    def study(self, token: str, study_uid: str) -> grants_mod.StudyInfo | None: ...

    def instances(self, token: str, orthanc_study: str) -> list[dict[str, Any]]: ...

    def file(self, token: str, instance: str) -> bytes: ...


class OrthancSource:
    """Orthanc's REST API with a bearer token per call (the plugin decides each one)."""

    def __init__(self, url: str, ca_file: str | None = None, timeout: float = 60.0):
        from bridge.http import pinned_session

        self.url = url.rstrip("/")
        # pinned: requests lets REQUESTS_CA_BUNDLE override a session's own CA file
        self.http = pinned_session(ca_file)
        self.timeout = timeout

    def _get(self, token: str, path: str, **kw: Any) -> Any:
        r = self.http.request(kw.pop("method", "GET"), self.url + path, timeout=self.timeout,
                              headers={"Authorization": f"Bearer {token}"}, **kw)
        if r.status_code in (401, 403, 404):
            return None
        r.raise_for_status()
        return r

    def study(self, token: str, study_uid: str) -> grants_mod.StudyInfo | None:
        r = self._get(token, "/tools/find", method="POST",
                      json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        found = r.json() if r is not None else []
        if len(found) != 1 or not isinstance(found[0], str):
            return None
        sid = found[0]
        s = self._get(token, f"/studies/{sid}")
        if s is None:
            return None
        body = s.json()
        tags, ptags = body.get("MainDicomTags", {}), body.get("PatientMainDicomTags", {})
        department, institution = "", str(tags.get("InstitutionName", ""))
        inst = self._get(token, f"/studies/{sid}/instances")
        items = inst.json() if inst is not None else []
        if items:
            # InstitutionalDepartmentName is no main tag in Orthanc 1.10 (as bridge/pacs/scopes.py reads it)
            simple = self._get(token, f"/instances/{items[0]['ID']}/simplified-tags")
            if simple is not None:
                t = simple.json()
                department = str(t.get("InstitutionalDepartmentName", ""))
                institution = institution or str(t.get("InstitutionName", ""))
        if str(tags.get("StudyInstanceUID", "")) != study_uid:
            return None
        return grants_mod.StudyInfo(sid, study_uid, str(ptags.get("PatientID", "")), department.strip(),
                                    institution.strip())

    def instances(self, token: str, orthanc_study: str) -> list[dict[str, Any]]:
        r = self._get(token, f"/studies/{orthanc_study}/instances")
        return list(r.json()) if r is not None else []

    def file(self, token: str, instance: str) -> bytes:
        r = self._get(token, f"/instances/{instance}/file")
        if r is None:
            raise ShareError(502, "pacs_refused", "the PACS refused an instance of the share")
        return bytes(r.content)


@dataclass(frozen=True)
class Sharer:
    """The caller of the share API: their verified PACS token and what it holds."""

    subject: str
    username: str | None
    issuer: str
    roles: tuple[str, ...]
    grants: tuple[grants_mod.Grant, ...]
    token: str
    address: str | None = None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], grants: tuple[grants_mod.Grant, ...], token: str,
                    address: str | None) -> Sharer:
        roles = claims.get("roles")
        return cls(str(claims["sub"]), claims.get("preferred_username") if isinstance(
            claims.get("preferred_username"), str) else None, str(claims.get("iss", "")),
            tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (), grants, token,
            address)


def _text(body: Mapping[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise ShareError(400, "invalid_request", f"{key}: required")
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT * 2 or any(ord(c) < 0x20 for c in value):
        raise ShareError(400, "invalid_request", f"{key}: must be a plain text string")
    return value.strip()


def _lifetime(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise ShareError(400, "invalid_request", "lifetime: a duration like 30m, 72h or 7d, or seconds")
    return seconds


def _permissions(value: Any) -> frozenset[Permission]:
    names = ["view"] if value is None else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ShareError(400, "invalid_request", "permissions: a list such as [\"view\", \"download\"]")
    try:
        return frozenset(Permission(n) for n in names)
    except ValueError:
        raise ShareError(400, "invalid_request", f"permissions: unknown permission in {names!r}") from None


#: wrong passcodes over all sources, as a multiple of the per-source limit, that lock a whole share
#: until the sharer issues a new passcode (many addresses guessing the same share)
SHARE_WIDE_FACTOR = 4


def source_key(address: str | None) -> str:
    """Where passcode attempts are counted: the client address, an IPv6 address by its /64 (one
    host can take any address of its /64), an IPv4-mapped IPv6 address as the IPv4 address."""
    import ipaddress

    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return (address or "unknown")[:128]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class ShareService:
    store: ShareStore
    policy: SharingPolicy | None
    ring: KeyRing
    source: StudySource
    issuer: str
    pacs_audience: str
    #: the audience of share tokens: the share endpoint, ``<sharing.public_url><prefix>``
    share_audience: str
    #: where recipients open a link: ``<share_audience>/<link id>``
    link_base: str
    append: Callable[[AuditEvent], Any]
    session_seconds: int = 1800
    lockout_failures: int = 5
    #: processes de-identifying an export in parallel (0: in the request's thread)
    deidentify_workers: int = 0
    #: the policy's roles that hold ``share``: an internal share lives only while its sharer still
    #: holds one of them (a sharer who lost the role must not keep access through a share); None:
    #: not checked (unit tests of other rules)
    share_roles: frozenset[str] | None = None
    clock: Callable[[], float] = time.time
    _verifier: Verifier | None = field(default=None, repr=False)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # ---- audit

    def _audit(self, kind: AuditEventType, rec: ShareRecord | None, *, actor: Actor, outcome: Outcome | None = None,
               share_id: str | None = None, **details: Any) -> None:
        objects: list[ParticipantObject] = []
        sid = rec.id if rec is not None else share_id
        if sid:
            objects.append(ParticipantObject(ObjectKind.SHARE, sid, rec.kind if rec else None))
        if rec is not None:
            objects.append(study(rec.study_uid))
            if rec.patient_id:
                objects.append(patient(rec.patient_id))
            if rec.recipient_kind == "user":
                objects.append(user(rec.recipient))
            details = {"recipient_kind": rec.recipient_kind, "recipient": rec.recipient,
                       "recipient_name": rec.recipient_name, "recipient_organisation": rec.recipient_org,
                       "recipient_country": rec.recipient_country, "rule": rec.rule_id,
                       "purpose_of_use": rec.purpose, "legal_basis": rec.legal_basis,
                       "transfer_basis": rec.transfer_basis, "deidentified": rec.deidentified, **details}
        self.append(AuditEvent(kind, outcome, actor=actor, objects=tuple(objects),
                               details={k: v for k, v in details.items() if v is not None}))

    def _sharer_actor(self, sharer: Sharer) -> Actor:
        return Actor(user_id=f"{sharer.subject}@{sharer.issuer}", username=sharer.username,
                     client_id="pacs-bridge-shares", network_address=sharer.address)

    @staticmethod
    def _recipient_actor(rec: ShareRecord | None, address: str | None, share_id: str | None = None) -> Actor:
        sid = rec.id if rec is not None else share_id
        return Actor(user_id=f"{SUBJECT_PREFIX}{sid}" if sid else None,
                     username=rec.recipient_name if rec is not None else None, client_id=PACS_CLIENT,
                     network_address=address)

    def _deny(self, sharer: Sharer, reason: str, status: int, error: str, *, study_uid: str | None = None,
              share: str | None = None, **details: Any) -> ShareError:
        """Audit a refused sharer request (access.denied, naming the study or share) and return its error."""
        objects = [study(study_uid)] if study_uid else []
        if share:
            objects.append(ParticipantObject(ObjectKind.SHARE, share))
        self.append(AuditEvent(AuditEventType.ACCESS_DENIED, Outcome.MINOR_FAILURE, actor=self._sharer_actor(sharer),
                               objects=tuple(objects), details={"endpoint": "shares", "reason": reason, **details}))
        return ShareError(status, error, reason)

    # ---- creating

    def create(self, sharer: Sharer, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a share from the API's JSON body; for an external share the answer carries the link
        and the passcode, shown this once (only hashes are kept)."""
        if not isinstance(body, Mapping):
            raise ShareError(400, "invalid_request", "body: a JSON object is required")
        study_uid = _text(body, "study_uid")
        assert study_uid is not None
        if len(study_uid) > 64 or not UID.match(study_uid):
            raise ShareError(400, "invalid_request", "study_uid: not a DICOM UID")
        recipient = self._recipient(sharer, body.get("recipient"))
        if isinstance(recipient, InternalUser) and recipient.id == sharer.subject:
            # a share to oneself would outlive one's own role (a grant that no sync removes)
            raise ShareError(400, "invalid_request", "recipient: you cannot share a study with yourself")
        request = ShareRequest(
            purpose=_text(body, "purpose") or "", legal_basis=_text(body, "legal_basis") or "",
            lifetime_seconds=_lifetime(body.get("lifetime")), max_uses=self._uses(body.get("max_uses")),
            permissions=_permissions(body.get("permissions")), deidentify=self._bool(body, "deidentify"),
            transfer_basis=_text(body, "transfer_basis", required=False))
        info = self.source.study(sharer.token, study_uid)
        if info is None:
            raise self._deny(sharer, f"study {study_uid} not found or not visible to the sharer", 404, "not_found",
                             study_uid=study_uid)
        grant = grants_mod.allows(sharer.grants, [Permission.SHARE.value], [info])
        if grant is None:
            raise self._deny(sharer, "no grant of the sharer holds 'share' on this study", 403, "access_denied",
                             study_uid=study_uid)
        # nobody hands out more than they hold: the share's permissions must all be in that grant
        # (decide_share checks them against the rule only)
        lacking = sorted(p.value for p in request.permissions if p.value not in grant.permissions)
        if lacking:
            raise self._deny(sharer, f"the sharer's grant on this study does not hold {', '.join(lacking)}", 403,
                             "access_denied", study_uid=study_uid)
        decision = decide_share(self.policy, grant.permissions, recipient, request, sharer.roles)
        if not decision.allowed:
            raise self._deny(sharer, decision.reason, 403, "policy_refused", study_uid=study_uid,
                             rule=decision.rule)
        external = isinstance(recipient, ExternalRecipient)
        if not external and decision.deidentify:
            raise self._deny(sharer, f"sharing rule {decision.rule!r}: de-identification is required, but an "
                             "internal share is a grant on the original study; share it with an external link",
                             403, "policy_refused", study_uid=study_uid, rule=decision.rule)
        now = self.now()
        share_id = secrets.token_urlsafe(12)
        link = secrets.token_urlsafe(32) if external else None
        passcode = new_passcode() if external else None
        secret = secrets.token_bytes(32) if decision.deidentify else None
        values: dict[str, Any] = dict(
            id=share_id, kind="external" if external else "internal", study_uid=study_uid,
            patient_id=info.patient_id or None, created_by=sharer.subject, created_by_name=sharer.username,
            rule_id=decision.rule or "", purpose=request.purpose, legal_basis=request.legal_basis,
            transfer_basis=request.transfer_basis, permissions=sorted(p.value for p in decision.permissions),
            deidentified=decision.deidentify,
            secret=self.ring.encryptor.derived("share secrets").encrypt(secret, share_id) if secret else None,
            link_hash=link_hash(link) if link else None,
            passcode_hash=hash_passcode(passcode) if passcode else None, passcode_version=0,
            created_at=now, expires_at=now + dt.timedelta(seconds=decision.lifetime_seconds),
            max_uses=decision.max_uses, use_count=0)
        if isinstance(recipient, ExternalRecipient):
            values.update(recipient_kind="external", recipient=recipient.email, recipient_name=recipient.name,
                          recipient_org=recipient.institution, recipient_country=recipient.country.upper())
        elif isinstance(recipient, InternalGroup):
            values.update(recipient_kind="group", recipient=normalize_dn(recipient.dn))
        else:
            values.update(recipient_kind="user", recipient=recipient.id, recipient_name=body["recipient"].get(
                "username") if isinstance(body.get("recipient"), Mapping) else None)
        rec = self.store.add(**values)
        self._audit(AuditEventType.SHARE_CREATED, rec, actor=self._sharer_actor(sharer),
                    permissions=rec.permissions, expires_at=rec.expires_at.isoformat(), max_uses=rec.max_uses,
                    reason=decision.reason)
        out = self.describe(rec)
        if link and passcode:
            out["link"] = f"{self.link_base}/{link}"
            out["passcode"] = passcode
        return out

    @staticmethod
    def _bool(body: Mapping[str, Any], key: str) -> bool | None:
        value = body.get(key)
        if value is not None and not isinstance(value, bool):
            raise ShareError(400, "invalid_request", f"{key}: true or false")
        return value

    @staticmethod
    def _uses(value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ShareError(400, "invalid_request", "max_uses: a positive whole number")
        return value

    def _recipient(self, sharer: Sharer, spec: Any) -> Recipient:
        if not isinstance(spec, Mapping):
            raise ShareError(400, "invalid_request", "recipient: an object with type user, group or external")
        kind = spec.get("type")
        if kind == "user":
            key = _text(spec, "id", required=False) or _text(spec, "username", required=False)
            if not key:
                raise ShareError(400, "invalid_request", "recipient.id or recipient.username: required")
            found = self.store.user(key)
            if found is None:
                raise ShareError(400, "invalid_request", f"recipient: no single directory account {key!r} is "
                                 "known to the sync")
            sub, _, groups = found
            from bridge.policy.model import GroupRef

            return InternalUser(dn="", id=sub, groups=tuple(GroupRef(dn=g) for g in sorted(groups)))
        if kind == "group":
            dn = _text(spec, "dn")
            assert dn is not None
            if not self.store.members_known(normalize_dn(dn)):
                raise ShareError(400, "invalid_request", "recipient.dn: the sync records no member of this group "
                                 "(a group recipient must be a group the policy maps to a role)")
            return InternalGroup(dn=dn)
        if kind == "external":
            return ExternalRecipient(name=_text(spec, "name") or "", institution=_text(spec, "institution") or "",
                                     email=_text(spec, "email") or "", country=_text(spec, "country") or "")
        raise ShareError(400, "invalid_request", "recipient.type: user, group or external")

    # ---- listing, revoking, passcodes

    def describe(self, rec: ShareRecord) -> dict[str, Any]:
        return {"id": rec.id, "kind": rec.kind, "study_uid": rec.study_uid, "state": rec.state(self.now()),
                "recipient": {"type": rec.recipient_kind, "id": rec.recipient, "name": rec.recipient_name,
                              "institution": rec.recipient_org, "country": rec.recipient_country},
                "rule": rec.rule_id, "purpose": rec.purpose, "legal_basis": rec.legal_basis,
                "transfer_basis": rec.transfer_basis, "permissions": rec.permissions,
                "deidentified": rec.deidentified, "created_at": rec.created_at.isoformat(),
                "expires_at": rec.expires_at.isoformat(),
                "revoked_at": rec.revoked_at.isoformat() if rec.revoked_at else None,
                "max_uses": rec.max_uses, "use_count": rec.use_count}

    def mine(self, sharer: Sharer) -> list[dict[str, Any]]:
        return [self.describe(r) for r in self.store.created_by(sharer.subject)]

    def _own(self, sharer: Sharer, share_id: str) -> ShareRecord:
        rec = self.store.get(share_id)
        if rec is None or rec.created_by != sharer.subject:
            # the same answer for another sharer's share as for none: ids are not confirmed to outsiders
            raise self._deny(sharer, "share not found among the caller's shares", 404, "not_found", share=share_id)
        return rec

    def one(self, sharer: Sharer, share_id: str) -> dict[str, Any]:
        return self.describe(self._own(sharer, share_id))

    def revoke(self, sharer: Sharer, share_id: str) -> dict[str, Any]:
        rec = self._own(sharer, share_id)
        if self.store.revoke(rec.id, sharer.subject, self.now()):
            rec = self.store.get(rec.id) or rec
            self._audit(AuditEventType.SHARE_REVOKED, rec, actor=self._sharer_actor(sharer))
        return self.describe(rec)

    def renew_passcode(self, sharer: Sharer, share_id: str) -> dict[str, Any]:
        rec = self._own(sharer, share_id)
        if rec.kind != "external":
            raise ShareError(400, "invalid_request", "an internal share has no passcode")
        if rec.state(self.now()) in ("revoked", "expired"):
            raise ShareError(409, "share_ended", f"the share is {rec.state(self.now())}")
        passcode = new_passcode()
        self.store.renew_passcode(rec.id, hash_passcode(passcode))
        self._audit(AuditEventType.SHARE_PASSCODE_RENEWED, rec, actor=self._sharer_actor(sharer))
        return {**self.describe(rec), "passcode": passcode}

    # ---- internal shares as grants (TokenService.extra_grants)

    def grants_for(self, subject: Any) -> list[grants_mod.Grant]:
        """The live internal shares of ``subject`` (a user, or a group the sync records them in), each
        a grant of kind ``share`` on its one study, ending with the share (the PACS enforces ``exp``)."""
        out = []
        sharers: dict[str, bool] = {}
        for rec in self.store.live_internal(str(subject.id), self.now()):
            if self.share_roles is not None:
                if rec.created_by not in sharers:
                    sharers[rec.created_by] = self.store.holds_any_role(rec.created_by, self.share_roles)
                if not sharers[rec.created_by]:
                    continue  # the sharer no longer holds `share` (role removed, leaver): the share is void
            perms = frozenset(p.value for p in expand([Permission(p) for p in rec.permissions]))
            out.append(grants_mod.Grant(perms, studies=frozenset({rec.study_uid}), kind="share",
                                        exp=int(rec.expires_at.timestamp())))
        return out

    # ---- the external recipient

    def open(self, link: str, passcode: str, address: str) -> tuple[ShareRecord, str, int]:
        """Link + passcode -> (share, share token, its lifetime); ShareError otherwise (audited)."""
        source = source_key(address)
        rec = self.store.by_link(link) if isinstance(link, str) and 20 <= len(link) <= 64 else None
        if rec is None:
            self._audit(AuditEventType.SHARE_PASSCODE_FAILED, None, actor=self._recipient_actor(None, address),
                        reason="the link names no share")
            raise ShareError(404, "not_found", "this share link is not valid")
        actor = self._recipient_actor(rec, address)
        now = self.now()
        # the attempt is counted BEFORE the passcode is checked: guesses sent in parallel each take a
        # slot (checked first, then counted, all of them would be tried); the right passcode gives
        # its slot back.  Per source (an IPv6 /64 is one source) and per share over all sources.
        n = self.store.fail(rec.id, source, now)
        if n > self.lockout_failures or self.store.total_failures(rec.id) > self.lockout_failures * SHARE_WIDE_FACTOR:
            self._audit(AuditEventType.SHARE_PASSCODE_FAILED, rec, actor=actor, reason="locked out")
            raise ShareError(429, "locked", "too many wrong passcodes from this address; ask the sender for a "
                             "new passcode")
        state = rec.state(now)
        if state != "active":
            self._audit(AuditEventType.ACCESS_DENIED, rec, actor=actor, reason=f"share {state}")
            raise ShareError(410, "share_ended", f"this share is no longer available ({state})")
        if not check_passcode(passcode, rec.passcode_hash):
            self._audit(AuditEventType.SHARE_PASSCODE_FAILED, rec, actor=actor, failures=n)
            if n >= self.lockout_failures:
                self._audit(AuditEventType.SHARE_LOCKED_OUT, rec, actor=actor, failures=n)
                raise ShareError(429, "locked", "too many wrong passcodes from this address; ask the sender for "
                                 "a new passcode")
            raise ShareError(401, "wrong_passcode", "wrong passcode")
        self.store.forgive(rec.id, source)  # the right passcode: this attempt was no guess
        if not self.store.use(rec.id, now):
            fresh = self.store.get(rec.id) or rec
            self._audit(AuditEventType.ACCESS_DENIED, fresh, actor=actor, reason=f"share {fresh.state(now)}")
            raise ShareError(410, "share_ended", f"this share is no longer available ({fresh.state(now)})")
        rec = self.store.get(rec.id) or rec
        self._audit(AuditEventType.SHARE_USED, rec, actor=actor, use_count=rec.use_count)
        iat = int(self.clock())
        exp = min(iat + self.session_seconds, int(rec.expires_at.timestamp()))
        claims = {"iss": self.issuer, "sub": SUBJECT_PREFIX + rec.id, "aud": self.share_audience,
                  "client_id": PACS_CLIENT, "iat": iat, "nbf": iat, "exp": exp, "auth_time": iat,
                  "amr": ["pwd", "mfa"], "jti": secrets.token_urlsafe(18), "share_id": rec.id,
                  "share_passcode_version": rec.passcode_version, token_format.CLAIM: token_format.CURRENT}
        return rec, self.ring.sign(claims), exp - iat

    @property
    def verifier(self) -> Verifier:
        """Share tokens are checked like PACS tokens (signature, issuer, times), for the share endpoint's
        audience: a PACS token is no share token, and the PACS refuses a share token."""
        if self._verifier is None:
            import json

            cfg = VerifierConfig(issuer=self.issuer, audience=self.share_audience,
                                 jwks_url="https://local.invalid/jwks.json", mfa_rule=None,
                                 jwks_min_refresh_seconds=1.0, jwks_max_age_seconds=30.0)
            self._verifier = Verifier(cfg, fetch=lambda url, body, headers: json.dumps(self.ring.jwks()).encode())
        return self._verifier

    def session(self, token: str | None) -> tuple[ShareRecord, dict[str, Any]] | None:
        """The share and claims of a live share session (the cookie's token), else None."""
        if not token:
            return None
        try:
            claims = self.verifier.verify(token).claims
        except VerificationError:
            return None
        sid = claims.get("share_id")
        rec = self.store.get(sid) if isinstance(sid, str) and claims.get("sub") == SUBJECT_PREFIX + sid else None
        if rec is None or rec.kind != "external" or rec.passcode_version != claims.get("share_passcode_version"):
            return None
        if rec.state(self.now()) in ("revoked", "expired"):
            return None  # a used-up share still serves the sessions already opened with its uses
        return rec, claims

    def pacs_token(self, rec: ShareRecord, claims: Mapping[str, Any]) -> str:
        """The bridge's own PACS token for one request about this share (see the module docstring)."""
        grant = grants_mod.Grant(frozenset({Permission.VIEW.value, Permission.DOWNLOAD.value}),
                                 studies=frozenset({rec.study_uid}), kind="share",
                                 exp=int(rec.expires_at.timestamp()))
        subject = claims_mod.Subject(id=SUBJECT_PREFIX + rec.id, username=SUBJECT_PREFIX + rec.id,
                                     name=rec.recipient_name, organization=rec.recipient_org,
                                     auth_time=int(claims["auth_time"]), amr=("pwd", "mfa"))
        settings = claims_mod.TokenSettings(self.issuer, self.pacs_audience, PACS_TOKEN_SECONDS, PACS_TOKEN_SECONDS)
        body = claims_mod.build(settings, subject, claims_mod.Grant((), (grant,), "share"), PACS_CLIENT)
        return self.ring.sign(body)

    def instances(self, rec: ShareRecord, claims: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The study's instances as the recipient sees them: UIDs remapped with the share's key,
        series and instance numbers and modality (no free text), sorted."""
        token = self.pacs_token(rec, claims)
        info = self.source.study(token, rec.study_uid)
        if info is None:
            return []
        secret = self._secret(rec)
        series: dict[str, int] = {}
        out = []
        for item in self.source.instances(token, info.orthanc_id):
            tags = item.get("MainDicomTags", {})
            sop = str(tags.get("SOPInstanceUID", ""))
            # Orthanc's ids are hashes of the original UIDs: never shown, series are numbered instead
            number = series.setdefault(str(item.get("ParentSeries")), len(series) + 1)
            out.append({"series": number, "sop_instance_uid": share_uid(secret, sop) if sop else "",
                        "instance_number": str(tags.get("InstanceNumber", ""))})
        out.sort(key=lambda i: (i["series"], int(i["instance_number"]) if i["instance_number"].isdigit() else 0))
        return out

    def _secret(self, rec: ShareRecord) -> bytes:
        if rec.secret is None:
            raise ShareError(500, "server_error", "share without a de-identification key")
        return self.ring.encryptor.derived("share secrets").decrypt(rec.secret, rec.id, what="share key")

    def export(self, rec: ShareRecord, claims: Mapping[str, Any], address: str | None,
               deidentify: bool = True) -> Iterator[bytes]:
        """The study as a ZIP of DICOM files, de-identified in memory one instance at a time and
        streamed (nothing is written to disk); refused instances (burned-in annotation) are left out
        and counted.  ``deidentify`` False only for the benchmark's baseline."""
        actor = self._recipient_actor(rec, address)
        token = self.pacs_token(rec, claims)
        info = self.source.study(token, rec.study_uid)
        if info is None:
            raise ShareError(404, "not_found", "the shared study is no longer in the PACS")
        items = self.source.instances(token, info.orthanc_id)
        if deidentify and self.policy is None:
            raise ShareError(500, "server_error", "the policy has no sharing section: nothing may leave")
        profile = self.policy.deidentification if self.policy is not None else None
        secret = self._secret(rec) if deidentify else b""
        deid = Deidentifier(profile, secret) if deidentify and profile is not None else None

        def fetched() -> Iterator[tuple[int, bytes]]:
            """The instances' files in order, PREFETCH of them in flight: the PACS reads and sends the
            next ones while this thread de-identifies (Orthanc's work and ours overlap)."""
            nonlocal token
            with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="share-fetch") as pool:
                pending: deque[tuple[int, Future[bytes]]] = deque()
                for n, item in enumerate(items, start=1):
                    if n % 50 == 1:  # a fresh token now and then: a long download outlives one
                        if n > 1:  # ...but only while the share lives: a revocation stops it mid-way
                            fresh = self.store.get(rec.id)
                            if fresh is None or fresh.state(self.now()) not in ("active", "used-up"):
                                raise ShareError(410, "share_ended", "the share ended during the download")
                        token = self.pacs_token(rec, claims)
                    pending.append((n, pool.submit(self.source.file, token, str(item["ID"]))))
                    if len(pending) >= PREFETCH:
                        done, future = pending.popleft()
                        yield done, future.result()
                while pending:
                    done, future = pending.popleft()
                    yield done, future.result()

        def transformed() -> Iterator[tuple[int, bytes | None, str | None]]:
            """(number, output or None, why refused) in order: inline, or over the worker processes."""
            if deid is None:
                yield from ((n, data, None) for n, data in fetched())
            elif self.deidentify_workers > 0:
                yield from _in_workers(fetched(), self.deidentify_workers, profile, secret)
            else:
                for n, data in fetched():
                    try:
                        yield n, deid.instance(data), None
                    except DeidentificationRefused as exc:
                        yield n, None, str(exc)[:200]

        def generate() -> Iterator[bytes]:
            sink = _Sink()
            sent, refused = 0, []
            with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
                for n, out, why in transformed():
                    if out is None:
                        refused.append(why or "refused")
                        continue
                    zf.writestr(f"DICOM/I{n:05d}.dcm", out)
                    sent += 1
                    yield sink.take()
            yield sink.take()
            self._audit(AuditEventType.SHARE_EXPORTED, rec, actor=actor, instances=sent, refused=len(refused),
                        refused_reasons=refused[:10], study_instances=len(items))

        return generate()


# --------------------------------------------------------------------------- worker processes

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` de-identification processes, started on first use.  Why
    processes: pydicom is pure Python, threads would share one core; ``spawn`` because the web
    worker runs threads (a fork could copy a held lock)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return pool


@functools.lru_cache(maxsize=8)
def _worker_deidentifier(profile: Any, secret: bytes) -> Deidentifier:
    return Deidentifier(profile, secret)


def _deidentify_one(profile: Any, secret: bytes, data: bytes) -> tuple[bytes | None, str | None]:
    """In a worker process: one instance, or why it was refused (exceptions do not cross as such)."""
    try:
        return _worker_deidentifier(profile, secret).instance(data), None
    except DeidentificationRefused as exc:
        return None, str(exc)[:200]


def _in_workers(fetched: Iterator[tuple[int, bytes]], workers: int, profile: Any,
                secret: bytes) -> Iterator[tuple[int, bytes | None, str | None]]:
    """De-identify over the pool, two instances per process in flight, results in order."""
    pool = _pool(workers)
    pending: deque[tuple[int, Future[tuple[bytes | None, str | None]]]] = deque()
    try:
        for n, data in fetched:
            pending.append((n, pool.submit(_deidentify_one, profile, secret, data)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield (done, *future.result())
        while pending:
            done, future = pending.popleft()
            yield (done, *future.result())
    except BrokenProcessPool:
        with _POOLS_LOCK:
            _POOLS.pop(workers, None)  # the next export starts a fresh pool
        raise
    finally:
        for _, future in pending:
            future.cancel()


class _Sink(io.RawIOBase):
    """A write-only stream the ZIP writer fills and the response drains (no seeking: data descriptors)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.parts.append(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class _NoPacs:
    """The study source when no Orthanc URL is configured: every share action needing the PACS fails."""

    def _down(self, *args: Any) -> Any:
        raise ShareError(503, "temporarily_unavailable", "no PACS is configured (pacs.orthanc_url)")

    study = instances = file = _down


def from_settings(settings: Any, engine: Any, ring: KeyRing, append: Callable[[AuditEvent], Any]) -> ShareService:
    """The share service as configured (built once per process by bridge/services.py): the policy's
    ``sharing:`` section, Orthanc at ``pacs.orthanc_url`` (else the gateway's), the share endpoint at
    ``sharing.public_url`` (else ``bridge.public_url``) + ``sharing.prefix``."""
    from bridge.policy.loader import load_policy

    policy_file = settings.sync.policy_file
    full = load_policy(policy_file) if policy_file else None
    policy = full.sharing if full is not None else None
    share_roles = frozenset(name for name, role in full.roles.items()
                            if Permission.SHARE in expand(list(role.permissions))) if full is not None else None
    url = settings.pacs.orthanc_url or settings.gateway.orthanc_url
    # the CA that goes with the URL used (pacs.ca_file for pacs.orthanc_url)
    ca = settings.pacs.ca_file if settings.pacs.orthanc_url else settings.gateway.orthanc_ca_file
    source: StudySource = OrthancSource(url, str(ca) if ca else None) if url else _NoPacs()
    public = str(settings.sharing.public_url or settings.bridge.public_url).rstrip("/")
    audience = public + settings.sharing.prefix
    return ShareService(
        store=ShareStore(engine), policy=policy, ring=ring, source=source,
        issuer=settings.tokens.issuer or settings.bridge.public_url, pacs_audience=settings.pacs.audience,
        share_audience=audience, link_base=audience, append=append,
        session_seconds=settings.sharing.session_minutes * 60, lockout_failures=settings.sharing.lockout_failures,
        deidentify_workers=settings.sharing.deidentify_workers, share_roles=share_roles)
