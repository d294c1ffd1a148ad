"""One decision per Orthanc HTTP request: token -> route permission -> study scope -> audit.

Orthanc-agnostic (Orthanc's REST API comes in as two callables) so the whole decision can be
unit-tested and reused by another Python PACS front-end; :mod:`bridge.pacs.orthanc_plugin` is
only the glue.  Stdlib + PyJWT/cryptography only.

Order, cheapest first, every step fails closed:

1. method known (GET/POST/PUT/DELETE), else deny;
2. ``Authorization: Bearer`` parsed (scheme case-insensitive, one token, size-capped) and
   verified by :class:`bridge.core.verifier.Verifier` (signature, claims, MFA, revocation; a
   cache hit on repeated tokens);
3. :func:`judge`, the one decision shared with the official plugin's web service
   (:mod:`bridge.web.orthanc_auth`): the route table (:mod:`bridge.core.routes`, via
   :func:`bridge.core.verifier.decide`) gives the permission(s), unknown route: deny; then ONE of the
   token's grants (:mod:`bridge.core.grants`, one per role, never merged) must hold them all and
   cover every study the request names (path, QIDO ``StudyInstanceUID`` read as the DICOMweb plugin
   reads it, WADO-URI ``objectUID``; resolved through Orthanc and cached).  A request naming no study
   (lists, queries, bulk tools) needs a grant that is unrestricted, since Orthanc 1.10.1's filter
   cannot filter an answer (it can only allow or deny); ambiguous queries likewise.  A token whose
   holding grants include an unrestricted one is decided on the route alone (the hot path);
4. every denial and every allowed request on patient data is recorded for the audit trail;
5. the request's claims and grants stay with the HTTP thread (:data:`_REQUESTS`) so that the
   received-instance callback can check an upload's *content* against the upload grants
   (:meth:`Gate.admit_instance`);
   a configuration without ``revocation_url`` denies everything.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core import grants as grants_mod
from bridge.core.errors import VerificationError
from bridge.core.grants import Grant
from bridge.core.jwks import Fetch
from bridge.core.verifier import Verifier, bearer_token, decide
from bridge.pacs import dicomweb, listing, scopes, study_index
from bridge.pacs.audit_shipper import ACCESS_EVENTS, AuditShipper
from bridge.pacs.plugin_config import PluginConfig

#: Orthanc's ``method`` argument (OrthancPluginHttpMethod)
METHODS: dict[int, str] = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}
#: permissions whose routes touch no existing patient data, so a scoped grant needs no study check
#: (uploads are checked on the content, see :meth:`Gate.admit_instance`).  Not ``admin``: its
#: server-wide routes reach every study (a job's output archive, the job list, a Lua script), so a
#: scoped admin grant gets only the admin routes below a resource it covers
SCOPE_FREE = frozenset({"upload", "settings", "audit-logs"})
#: feeds that list every resource of the server (Orthanc ids and arrival times, out-of-scope studies
#: included): a scope-free permission does not open them to a restricted grant, an unrestricted one must hold it
SERVER_WIDE_FEEDS = ("/changes", "/exports")
#: permissions whose study must be resolved *before* the request runs (it may be gone after)
RESOLVE_FIRST = frozenset({"delete", "modify", "anonymize", "send"})
#: upload routes whose body may make Orthanc copy *stored* data into the new instance (create-dicom's
#: ``Parent``): a scoped upload there needs scope over the whole patient the instance lands in
COPYING_UPLOADS = frozenset({"/tools/create-dicom"})
#: what storing an instance needs (one grant holding it must cover what the instance touches)
UPLOAD = ("upload",)
NO_REVOCATION_REASON = "plugin configuration has no revocation_url: every request is denied"
SCOPED_LIST_REASON = (
    "scoped token: a request across studies (list, query, bulk tool) that the plugin does not filter; "
    "use the filtered listings (/studies, /tools/find, QIDO) or open studies by id"
)
INTERNAL_REASON = "the DICOMweb plugin's internal root is not reachable from outside (use /dicom-web/)"


class Gate:
    """The plugin's state for one configuration: verifier, study resolver, audit shipper."""

    def __init__(
        self,
        config: PluginConfig,
        rest_get: scopes.RestGet,
        rest_post: scopes.RestPost,
        fetch: Fetch | None = None,
        shipper: AuditShipper | None = None,
        send: dicomweb.Send | None = None,
    ):
        """``send``: how the ``/dicom-web/`` callback reaches the DICOMweb plugin's internal root
        (:func:`bridge.pacs.dicomweb.loopback_sender`); without it that callback answers 503."""
        self.config = config
        self.verifier = Verifier(config.verifier_config(), fetch=fetch)
        self.resolver = scopes.StudyResolver(rest_get, rest_post, ttl=config.scope_cache_seconds)
        self.audit = shipper or AuditShipper(
            source=config.pacs_name,
            issuer=config.issuer,
            spool_dir=config.audit_spool_dir,
            audit_url=config.audit_url,
            audit_token_file=config.audit_token_file,
            ca_file=config.ca_file,
            flush_seconds=config.audit_flush_seconds,
            resolver=self.resolver,
            orthanc_log_file=config.orthanc_log_file,
        )
        self.lister = listing.Lister(rest_get, rest_post, self.resolver,
                                     index=study_index.StudyIndex(rest_get, self.resolver))
        self.proxy = dicomweb.Proxy(send, self.resolver) if send is not None else None
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None

    # ------------------------------------------------------------------ background work

    def start(self) -> None:
        """Audit shipping, and revocation-list refreshes off the request path."""
        self.audit.start()
        if self._maintenance is None:
            self._maintenance = threading.Thread(target=self._refresh_loop, name="pacs-bridge-revocations",
                                                 daemon=True)
            self._maintenance.start()

    def stop(self) -> None:
        self._stop.set()
        self.audit.stop()

    def _refresh_loop(self) -> None:
        # wake at half the refresh period and renew once the list is that old: the request path's
        # own "due after revocation_refresh_seconds" check then never fires while this thread runs
        period = max(0.2, self.config.revocation_refresh_seconds / 2)
        while True:
            # failures are fine here: staleness is enforced on the request path
            with contextlib.suppress(Exception):
                self.verifier.refresh_revocations(time.time(), max_age=period)
            if self._stop.wait(period):
                return

    # ------------------------------------------------------------------ the decision

    def decide(
        self, uri: str, method: int, headers: Mapping[str, str], get: Mapping[str, str] | None, ip: str = ""
    ) -> bool:
        """True to let Orthanc serve the request.  Raises only on bugs (the caller denies then)."""
        clear_request_context()  # a new request on this HTTP thread: nothing of the last one survives
        verb = METHODS.get(method)
        if verb is None:
            self.audit.record("deny", None, str(method), uri, ip, None, "unsupported HTTP method")
            return False
        if not self.config.revocation_url:
            self.audit.record("deny", None, verb, uri, ip, None, NO_REVOCATION_REASON)
            return False
        if dicomweb.looks_internal(uri):
            # only the plugin's own loopback call for an outer request judged a moment ago, which lends
            # this inner request its context (a STOW-RS upload is then checked against its scope)
            outer = dicomweb.PASSES.redeem(headers.get("authorization"), uri, ip)
            if outer is None:
                self.audit.record("deny", None, verb, uri, ip, None, INTERNAL_REASON)
                return False
            _REQUESTS[threading.get_ident()] = outer
            return True
        try:
            verified = self.verifier.verify(bearer_token(headers.get("authorization")))
        except VerificationError as exc:
            self.audit.record("deny", None, verb, uri, ip, None, exc.reason)
            return False
        claims = verified.claims
        verdict = judge(claims, verb, uri, get, self.resolver.studies, verified.grants,
                        filtered_listings=True)
        target = verdict.targets[0] if verdict.targets else None
        if not verdict.allow:
            if target is None:  # refused before its study was named (a missing permission): named for the audit
                target = _named_target(uri, get)
            self.audit.record("deny", claims, verb, uri, ip, verdict.permission, verdict.reason, target,
                              verdict.studies)
            return False
        permission = verdict.permission or ""
        _REQUESTS[threading.get_ident()] = RequestContext(claims, verb, uri, ip, verified.grants)
        if permission in ACCESS_EVENTS:
            studies = verdict.studies
            if studies is None and len(verdict.targets) > 1:  # a UID list: audit every study, not the first
                studies = [s for t in verdict.targets for s in self.resolver.studies(t)]
            self.audit.record("allow", claims, verb, uri, ip, permission, verdict.reason, target, studies)
        return True

    # ------------------------------------------------------------------ Orthanc's changes

    def changed(self, change: str) -> None:
        """Orthanc reported a change (``deleted``, ``new-study``; others are ignored): the study
        resolver drops what it may no longer know (:meth:`bridge.pacs.scopes.StudyResolver.changed`)."""
        self.resolver.changed(change)

    # ------------------------------------------------------------------ instances being stored

    def admit_instance(self, origin: str, tags: Callable[[], Mapping[str, Any]]) -> bool:
        """Whether Orthanc may store an incoming instance (its received-instance callback).

        The HTTP filter cannot read a request body, so a scoped upload is checked here, on the
        instance itself.  Checked on Orthanc 1.10.1: ``POST /instances`` (also a ZIP), STOW-RS and
        ``/tools/create-dicom`` call this on the HTTP thread that ran the filter, so the token's claims
        come from :data:`_REQUESTS` (set by :meth:`decide` for that request, reset by the next one).

        * ``dicom`` (C-STORE): kept; Orthanc admits only configured modalities from their hosts.
        * ``rest``/``plugin`` with a request context: ONE grant holding ``upload`` must cover the
          instance (its department, institution, study, patient) *and* the existing study its
          StudyInstanceUID names (and, for create-dicom, every study of the patient it copies).
        * ``rest``/``plugin`` without one (modify/anonymize jobs, DICOMweb retrieve jobs run on
          Orthanc's job threads): kept only if it does not join a study of another department.
        * anything else (Lua, WebDAV, unknown): discarded.

        ``tags`` is called only when needed (parsing costs more than the rest).  Every discard is
        audited.  Raises only on bugs (the caller discards then).
        """
        if origin == "dicom":
            return True
        context = current_request()
        if origin not in ("rest", "plugin"):
            self.audit.record("deny", None, "STORE", f"({origin})", "", "upload",
                              f"instance of origin {origin}: not accepted")
            return False
        uploaders = grants_mod.holding(context.grants, UPLOAD) if context is not None else ()
        if context is not None and any(g.unrestricted for g in uploaders):
            return True
        instance = scopes.instance_info(tags())
        # strict: a failed lookup must not read as "no such study yet" (it raises: the caller discards)
        existing = self.resolver.studies(scopes.Target("study-uid", instance.study_uid), strict=True) \
            if instance.study_uid else []
        copying = context is not None and context.uri.rstrip("/") in COPYING_UPLOADS
        if copying and not instance.patient_id:  # the patient stored under "" cannot be looked up
            ok, reason = False, "upload: a create-dicom instance without PatientID: its patient cannot be checked"
        elif context is not None:
            patient = self.resolver.studies(scopes.Target("patient-id", instance.patient_id), strict=True) \
                if copying else None
            ok, reason = scopes.upload_allowed(uploaders, instance, existing, patient)
        else:
            ok, reason = scopes.joins_consistently(instance, existing)
        if not ok:
            c = context or RequestContext(None, "STORE", "(job)", "")
            self.audit.record("deny", c.claims, c.method, c.uri, c.ip, "upload", reason,
                              scopes.Target("study-uid", instance.study_uid), existing or [instance])
        return ok


@dataclass(frozen=True)
class RequestContext:
    """The allowed request an HTTP thread is serving (what the received-instance callback needs)."""

    claims: Mapping[str, Any] | None
    method: str
    uri: str
    ip: str
    grants: tuple[Grant, ...] = ()


#: OS thread id -> the allowed request that Orthanc HTTP thread serves now (set by the filter, reset on
#: every request).  Keyed by ``threading.get_ident()`` rather than a ``threading.local``: orthanc-python
#: may give a thread a fresh Python thread state per callback (see the plugin's thread-state pinning),
#: and a thread-local would not survive from the filter to the received-instance callback then.  One
#: entry per HTTP thread at most (a fixed pool); job threads never run the filter, so never have one.
_REQUESTS: dict[int, RequestContext] = {}


def clear_request_context() -> None:
    """Forget this thread's request (the plugin calls it first on every request, even with no gate)."""
    _REQUESTS.pop(threading.get_ident(), None)


def current_request() -> RequestContext | None:
    """The allowed request this thread is serving, if it is an HTTP thread inside one."""
    return _REQUESTS.get(threading.get_ident())


def _named_target(path: str, query: Mapping[str, str] | None) -> scopes.Target | None:
    """The first study-level target a request names, for the audit record of a refusal only (the
    shipper resolves it to the study and patient, so the refusal is in that patient's access report)."""
    try:
        return next(iter(scopes.targets_of(path, query).targets), None)
    except Exception:  # never let the audit's parsing change a refusal
        return None


def judge(
    claims: Mapping[str, Any],
    method: str,
    path: str,
    query: Mapping[str, str] | None,
    studies_of: Callable[[scopes.Target], list[scopes.StudyInfo]],
    grants: tuple[Grant, ...] | None = None,
    filtered_listings: bool = False,
) -> Verdict:
    """THE decision for a verified token: route permission, then ONE grant that holds it and covers
    the studies.  Used by the Orthanc plugin (:meth:`Gate.decide`) and by the official authorization
    plugin's web service (:mod:`bridge.web.orthanc_auth`), so one request gets one answer on both paths.

    ``query``: the GET arguments as Orthanc hands them to a filter (undecoded, last value per key);
    ``studies_of``: the stored studies behind a target ([] when unknown: only an unrestricted grant
    allows then); ``grants``: the token's parsed grants (the verifier's cache keeps them), parsed
    from ``claims`` when None.  An allowed verdict names its grant (:attr:`Verdict.grant`); a denial
    says why no grant fits.
    ``filtered_listings``: the PACS answers the listing routes of :func:`filtered_listing` with a filtered
    list (this bridge's Orthanc plugin does; the official authorization plugin does not), so a token
    whose grants are all restricted may send them.  Off by default: where nothing filters, such a
    token is refused every list.
    """
    route = decide(claims, method, path, query, grants)
    if not route.allow or route.route is None:
        return Verdict(False, route.reason, route.permission)
    rule = route.route
    named = scopes.targets_of(path, query)
    holders = route.holders
    if holders[0].unrestricted:  # the hot path (one unscoped role, say): no study decides anything
        everywhere: Grant | None = holders[0]
        permission = route.permission or ""
    else:
        everywhere = next((g for g in holders if g.unrestricted), None)
        permission = "" if everywhere is None else rule.granted(everywhere.permissions) or ""
    if everywhere is not None:
        studies: list[scopes.StudyInfo] | None = None
        if named.targets and permission in RESOLVE_FIRST:  # for the audit trail (it may be gone after)
            studies = [s for target in named.targets for s in studies_of(target)]
        return Verdict(True, _allowed(route.reason, everywhere), permission, named.targets, studies, everywhere)
    permission = route.permission or ""
    if named.problem:
        return Verdict(False, "scoped token: " + named.problem, permission, named.targets)
    if not named.targets:
        server_wide = path.rstrip("/") in SERVER_WIDE_FEEDS
        free = None if server_wide else next(
            (g for g in route.holders if rule.granted(g.permissions) in SCOPE_FREE), None)
        if free is None and (named.static or (filtered_listings and filtered_listing(method, path))):
            # no patient data (static files), or an answer the plugin filters by every grant itself
            free = route.holders[0]
        if free is None:
            return Verdict(False, SCOPED_LIST_REASON, permission)
        return Verdict(True, _allowed(route.reason, free), rule.granted(free.permissions), (), None, free)
    studies = []
    for target in named.targets:
        found = studies_of(target)
        if not found:
            return Verdict(False, "study not found: cannot check the token's scope", permission,
                           named.targets, studies)
        studies.extend(found)
    chosen = grants_mod.allows(route.holders, (), studies)
    if chosen is None:
        return Verdict(False, grants_mod.why_not(route.holders, studies), permission, named.targets, studies)
    return Verdict(True, _allowed(route.reason, chosen), rule.granted(chosen.permissions), named.targets,
                   studies, chosen)


def _allowed(reason: str, grant: Grant) -> str:
    """An allowed request's reason names the grant that allowed it (audit trail)."""
    return f"{reason}; by {grant.describe()}"


def filtered_listing(method: str, path: str) -> bool:
    """Is this exactly a request the plugin's callbacks answer with a filtered list (so a scoped token may
    send it)?  The core's listings (:mod:`bridge.pacs.listing`) and QIDO-RS (:mod:`bridge.pacs.dicomweb`);
    any other spelling of those routes stays refused to scoped tokens."""
    if listing.serves(method, path):
        return True
    return path.startswith(dicomweb.PUBLIC_ROOT) and dicomweb.is_qido(method.upper(),
                                                                       path[len(dicomweb.PUBLIC_ROOT):])


@dataclass(frozen=True)
class Verdict:
    """One request's answer, with what the audit trail needs."""

    allow: bool
    reason: str
    permission: str | None = None
    targets: tuple[scopes.Target, ...] = ()
    studies: list[scopes.StudyInfo] | None = None
    #: the grant that allowed the request (None on a denial)
    grant: Grant | None = None
