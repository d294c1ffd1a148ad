"""Read the hospital directory into a :class:`DirectorySnapshot` (ldap3), AD or OpenLDAP flavour.

One interface, :class:`DirectoryReader`; the flavours differ only in filters, attribute names,
how an account is disabled and how to tell whether anything changed since the last read.

Safety first: every failure that could make the directory *look* emptier than it is (no route,
TLS failure, bind refused, missing base DN, zero users) raises :class:`DirectoryUnavailable`, so
that the sync stops before computing a plan.  Every value placed in a filter is escaped.

Incremental runs: reading 10k users and 500 groups takes a few seconds, but most scheduled runs
see no change at all.  Each full read records a flavour-specific *watermark*; the next run asks
the server a few cheap questions ("anything with uSNChanged above N?", "anything deleted?") and,
if nothing in scope changed, the previous snapshot is reused unchanged.  Any change triggers a
full read (membership closure needs the whole group graph anyway), and every Nth run is full
regardless (``sync.full_sync_every``).
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from bridge.config import DirectorySection
from bridge.directory.model import (
    DirectoryGroup,
    DirectorySnapshot,
    DirectoryUnavailable,
    DirectoryUser,
    normalize_dn,
)
from bridge.directory.nesting import effective_memberships

log = logging.getLogger(__name__)

#: AD userAccountControl ACCOUNTDISABLE bit
UAC_ACCOUNTDISABLE = 0x2
#: AD accountExpires "never" values
_AD_NEVER = {0, 0x7FFFFFFFFFFFFFFF}
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"


@dataclass(frozen=True)
class _Entry:
    dn: str
    attrs: dict[str, list[Any]]

    def first(self, name: str, default: Any = "") -> Any:
        vals = self.attrs.get(name) or []
        return vals[0] if vals else default


class DirectoryReader:
    """Base reader: connection, TLS, paging, range retrieval, snapshot assembly.

    Subclasses define the attribute map (`user_attrs`, `group_attrs`, filters) and
    `_stable_id`, `_is_disabled`, `_watermark`, `_changed_since`."""

    kind = "ldap"
    user_filter = "(objectClass=person)"
    group_filter = "(objectClass=groupOfNames)"
    username_attr = "uid"
    member_attrs: tuple[str, ...] = ("member",)
    id_attr = "entryUUID"
    user_attrs: tuple[str, ...] = ()
    group_attrs: tuple[str, ...] = ()

    def __init__(self, cfg: DirectorySection, bind_password: str | None = None):
        self.cfg = cfg
        self._password = bind_password if bind_password is not None else (
            cfg.bind_password.get_secret_value() if cfg.bind_password else None
        )
        self.users_dn = cfg.users_dn or cfg.base_dn
        self.groups_dn = cfg.groups_dn or cfg.base_dn

    # ------------------------------------------------------------------ connection

    def _server(self) -> ldap3.Server:
        url = urlparse(self.cfg.url)
        use_ssl = url.scheme == "ldaps"
        tls = None
        if use_ssl or self.cfg.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(self.cfg.ca_file) if self.cfg.ca_file else None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        port = url.port or (636 if use_ssl else 389)
        # allowed_referral_hosts=[]: no host may receive a referred operation (ldap3's default,
        # ('*', True), would re-send the bind DN and password to any host a referral names)
        return ldap3.Server(
            url.hostname or "127.0.0.1", port=port, use_ssl=use_ssl, tls=tls,
            get_info=ldap3.NONE, connect_timeout=self.cfg.timeout_seconds, allowed_referral_hosts=[],
        )

    def _connection(self) -> ldap3.Connection:
        """The connection object, not yet opened.  auto_referrals=False: a referral or search
        continuation reference (AD returns them for other domains of the forest) is never followed,
        so a directory entry cannot send the bridge, and its credentials, to another server;
        _search skips the references."""
        return ldap3.Connection(
            self._server(), user=self.cfg.bind_dn or None, password=self._password,
            auto_bind=ldap3.AUTO_BIND_NONE, read_only=True, raise_exceptions=False,
            receive_timeout=self.cfg.timeout_seconds, auto_range=False,
            return_empty_attributes=False, auto_referrals=False,
        )

    def connect(self) -> ldap3.Connection:
        """Open, secure and bind; any failure is DirectoryUnavailable (message names the URL)."""
        where = self.cfg.url
        try:
            conn = self._connection()
            conn.open()  # raises LDAPSocketOpenError (incl. TLS verification failures)
            if self.cfg.start_tls and not self.cfg.url.startswith("ldaps://") and not conn.start_tls():
                raise DirectoryUnavailable(f"{where}: StartTLS refused: {conn.result}")
            if not conn.bind():
                desc = conn.result.get("description") if conn.result else "unknown"
                raise DirectoryUnavailable(f"{where}: bind as {self.cfg.bind_dn!r} refused ({desc})")
        except DirectoryUnavailable:
            raise
        except (ldap_exc.LDAPException, OSError, ssl.SSLError) as exc:
            raise DirectoryUnavailable(f"{where}: {type(exc).__name__}: {exc}") from exc
        return conn

    # ------------------------------------------------------------------ searching

    def _search(self, conn: ldap3.Connection, base: str, flt: str, attrs: tuple[str, ...] | list[str],
                scope: str = ldap3.SUBTREE, controls: list[Any] | None = None,
                size_limit: int = 0) -> Iterator[_Entry]:
        """Paged search (RFC 2696): AD returns at most MaxPageSize (1000) entries otherwise."""
        cookie: bytes | None = None
        while True:
            try:
                ok = conn.search(base, flt, search_scope=scope, attributes=list(attrs),
                                 paged_size=self.cfg.page_size if size_limit == 0 else None,
                                 paged_cookie=cookie, controls=controls, size_limit=size_limit,
                                 time_limit=self.cfg.timeout_seconds)
            except (ldap_exc.LDAPException, OSError) as exc:
                raise DirectoryUnavailable(f"{self.cfg.url}: search under {base!r} failed: {exc}") from exc
            result = conn.result or {}
            if not ok and result.get("result") not in (0, 4):  # success / sizeLimitExceeded
                if result.get("result") == 32:
                    raise DirectoryUnavailable(f"{self.cfg.url}: base {base!r} does not exist")
                raise DirectoryUnavailable(
                    f"{self.cfg.url}: search under {base!r} failed: {result.get('description')} "
                    f"{result.get('message', '')}".rstrip()
                )
            for item in conn.response or []:
                if item.get("type") != "searchResEntry":
                    continue
                yield _Entry(item["dn"], dict(item.get("raw_attributes") or {}))
            if size_limit:
                return
            cookie = (((result.get("controls") or {}).get("1.2.840.113556.1.4.319") or {})
                      .get("value") or {}).get("cookie")
            if not cookie:
                return

    def _complete_ranges(self, conn: ldap3.Connection, entry: _Entry) -> _Entry:
        """Follow AD range retrieval (``member;range=0-1499`` then ``member;range=1500-*``...).

        Why by hand: ldap3's auto_range is fragile with paging and empty attributes (see
        docs/sync.md); the algorithm is small and this way it is tested explicitly."""
        attrs = dict(entry.attrs)
        for key in [k for k in attrs if ";range=" in k.lower()]:
            name, _, rng = key.partition(";")
            values = list(attrs.pop(key))
            end = rng.split("=", 1)[1].split("-", 1)[1]
            while end != "*":
                start = int(end) + 1
                want = f"{name};range={start}-*"
                more = list(self._search(conn, entry.dn, "(objectClass=*)", [want], scope=ldap3.BASE,
                                         size_limit=1))
                if not more:
                    break
                prefix = name.lower() + ";range="
                got = {k: v for k, v in more[0].attrs.items() if k.lower().startswith(prefix)}
                if not got:
                    break
                (gkey, gvals), = got.items()
                values.extend(gvals)
                end = gkey.split("=", 1)[1].split("-", 1)[1]
            attrs[name] = attrs.get(name, []) + values
        return _Entry(entry.dn, attrs)

    # ------------------------------------------------------------------ flavour hooks

    def _stable_id(self, entry: _Entry) -> str:
        raise NotImplementedError

    def _is_disabled(self, entry: _Entry) -> bool:
        raise NotImplementedError

    def _user(self, entry: _Entry) -> DirectoryUser:
        raise NotImplementedError

    def _watermark(self, conn: ldap3.Connection, users: int, groups: int) -> dict[str, str]:
        return {}

    def _changed_since(self, conn: ldap3.Connection, watermark: dict[str, str]) -> bool:
        return True

    # ------------------------------------------------------------------ the read

    def read(self, previous: DirectorySnapshot | None = None, *, full: bool = True) -> DirectorySnapshot:
        """A snapshot; with ``full=False`` and an unchanged directory, `previous` itself is returned."""
        started = time.monotonic()
        conn = self.connect()
        try:
            if not full and previous is not None and previous.watermark:
                try:
                    changed = self._changed_since(conn, dict(previous.watermark))
                except DirectoryUnavailable:
                    raise
                except Exception as exc:  # an unsupported control etc.: be safe, read fully
                    log.info("incremental check failed (%s); reading fully", exc)
                    changed = True
                if not changed:
                    log.info("directory unchanged since last read; reusing snapshot")
                    return previous
            snap = self._read_full(conn)
        finally:
            conn.unbind()
        log.info("directory read: %s in %.2f s", snap.summary(), time.monotonic() - started)
        return snap

    def _read_full(self, conn: ldap3.Connection) -> DirectorySnapshot:
        users: dict[str, DirectoryUser] = {}
        user_by_dn: dict[str, str] = {}
        for e in self._search(conn, self.users_dn, self.user_filter, self.user_attrs):
            u = self._user(e)
            users[u.id] = u
            user_by_dn[normalize_dn(u.dn)] = u.id
        if not users:
            raise DirectoryUnavailable(
                f"{self.cfg.url}: no user under {self.users_dn!r} with {self.user_filter}; "
                "refusing to treat an empty directory as 'everyone left'"
            )
        raw_groups: list[tuple[DirectoryGroup, list[str]]] = []
        for e in self._search(conn, self.groups_dn, self.group_filter, self.group_attrs):
            e = self._complete_ranges(conn, e)
            gid = self._stable_id(e)
            name = _text(e.first("cn")) or e.dn.split(",", 1)[0].partition("=")[2]
            members = [_text(v) for a in self.member_attrs for v in e.attrs.get(a, [])]
            raw_groups.append((DirectoryGroup(gid, e.dn, name), members))
        groups = {g.id: g for g, _ in raw_groups}
        group_by_dn = {normalize_dn(g.dn): g.id for g in groups.values()}
        direct_users: dict[str, set[str]] = {}
        direct_groups: dict[str, set[str]] = {}
        for g, members in raw_groups:
            du, dg = direct_users.setdefault(g.id, set()), direct_groups.setdefault(g.id, set())
            for m in members:
                key = normalize_dn(m)
                if key in user_by_dn:
                    du.add(user_by_dn[key])
                elif key in group_by_dn:
                    dg.add(group_by_dn[key])
                # else: outside the configured scope (foreign principal, other OU): ignored
        memberships, cycles = effective_memberships(direct_users, direct_groups)
        for cyc in cycles:
            log.warning("nested group cycle: %s", " -> ".join(groups[g].dn for g in cyc))
        watermark = self._watermark(conn, len(users), len(groups))
        return DirectorySnapshot(users, groups, memberships, source=self.cfg.url, watermark=watermark)


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


class ActiveDirectoryReader(DirectoryReader):
    """Active Directory (and Samba AD).  Stable id: objectGUID (little-endian GUID layout)."""

    kind = "ad"
    user_filter = "(&(objectCategory=person)(objectClass=user))"
    group_filter = "(objectClass=group)"
    username_attr = "sAMAccountName"
    id_attr = "objectGUID"
    user_attrs = ("objectGUID", "sAMAccountName", "displayName", "mail", "department", "company",
                  "userAccountControl", "accountExpires")
    group_attrs = ("objectGUID", "cn", "member")

    def _stable_id(self, entry: _Entry) -> str:
        raw = entry.first("objectGUID", None)
        if not isinstance(raw, bytes) or len(raw) != 16:
            raise DirectoryUnavailable(f"{self.cfg.url}: {entry.dn!r} has no objectGUID")
        return str(uuid.UUID(bytes_le=raw))

    def _is_disabled(self, entry: _Entry) -> bool:
        try:
            uac = int(_text(entry.first("userAccountControl", b"0")))
        except ValueError:
            uac = 0
        if uac & UAC_ACCOUNTDISABLE:
            return True
        try:
            expires = int(_text(entry.first("accountExpires", b"0")))
        except ValueError:
            expires = 0
        if expires not in _AD_NEVER:
            # FILETIME: 100 ns intervals since 1601-01-01
            unix = expires / 10_000_000 - 11_644_473_600
            return unix < time.time()
        return False

    def _user(self, e: _Entry) -> DirectoryUser:
        return DirectoryUser(
            id=self._stable_id(e), dn=e.dn, username=_text(e.first("sAMAccountName")),
            display_name=_text(e.first("displayName")), email=_text(e.first("mail")),
            department=_text(e.first("department")), institution=_text(e.first("company")),
            disabled=self._is_disabled(e),
        )

    def _root(self, conn: ldap3.Connection) -> tuple[int, str]:
        """highestCommittedUSN and the DC's invocationId (a restored DC gets a new one)."""
        root = list(self._search(conn, "", "(objectClass=*)", ["highestCommittedUSN", "dsServiceName"],
                                 scope=ldap3.BASE, size_limit=1))
        if not root:
            raise DirectoryUnavailable(f"{self.cfg.url}: rootDSE unreadable")
        usn = int(_text(root[0].first("highestCommittedUSN", b"0")))
        service = _text(root[0].first("dsServiceName"))
        inv = ""
        if service:
            ntds = list(self._search(conn, service, "(objectClass=*)", ["invocationId"], scope=ldap3.BASE,
                                     size_limit=1))
            raw = ntds[0].first("invocationId", b"") if ntds else b""
            inv = str(uuid.UUID(bytes_le=raw)) if isinstance(raw, bytes) and len(raw) == 16 else _text(raw)
        return usn, f"{service}|{inv}"

    def _watermark(self, conn: ldap3.Connection, users: int, groups: int) -> dict[str, str]:
        usn, dc = self._root(conn)
        return {"usn": str(usn), "dc": dc}

    def _changed_since(self, conn: ldap3.Connection, watermark: dict[str, str]) -> bool:
        usn, dc = self._root(conn)
        if dc != watermark.get("dc"):
            return True  # another DC or a restored one: USNs are not comparable
        prev = int(watermark["usn"])
        if usn == prev:
            return False
        flt = f"(uSNChanged>={escape(str(prev + 1))})"
        for base in {self.users_dn, self.groups_dn}:
            if list(self._search(conn, base, flt, ["1.1"], size_limit=1)):
                return True
        # deletions leave the scope: look for tombstones changed since
        deleted = list(self._search(conn, self.cfg.base_dn, f"(&(isDeleted=TRUE){flt})", ["1.1"],
                                    controls=[(SHOW_DELETED_OID, True, None)], size_limit=1))
        return bool(deleted)


class OpenLdapReader(DirectoryReader):
    """OpenLDAP.  Stable id: entryUUID; disabled: a configurable attribute (``directory.disabled_attribute``).

    ``disabled_attribute`` is either ``name`` (present = disabled, e.g. ppolicy's
    ``pwdAccountLockedTime``) or ``name=value`` (disabled when the attribute has that value,
    compared case-insensitively)."""

    kind = "openldap"
    user_filter = "(|(objectClass=inetOrgPerson)(objectClass=posixAccount))"
    group_filter = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
    username_attr = "uid"
    member_attrs = ("member", "uniqueMember")

    def __init__(self, cfg: DirectorySection, bind_password: str | None = None):
        super().__init__(cfg, bind_password)
        attr, _, value = cfg.disabled_attribute.partition("=")
        self._disabled_attr, self._disabled_value = attr.strip(), value.strip().lower()
        base_attrs = ("entryUUID", "uid", "cn", "displayName", "mail", "departmentNumber", "ou", "o")
        self.user_attrs = (*base_attrs, self._disabled_attr) if self._disabled_attr else base_attrs
        self.group_attrs = ("entryUUID", "cn", "member", "uniqueMember")

    def _stable_id(self, entry: _Entry) -> str:
        raw = _text(entry.first("entryUUID"))
        if not raw:
            raise DirectoryUnavailable(f"{self.cfg.url}: {entry.dn!r} has no entryUUID")
        return raw.lower()

    def _is_disabled(self, entry: _Entry) -> bool:
        if not self._disabled_attr:
            return False
        values = [_text(v).strip().lower() for v in entry.attrs.get(self._disabled_attr, [])]
        if self._disabled_value:
            return self._disabled_value in values
        return bool(values)

    def _user(self, e: _Entry) -> DirectoryUser:
        return DirectoryUser(
            id=self._stable_id(e), dn=e.dn, username=_text(e.first("uid")),
            display_name=_text(e.first("displayName")) or _text(e.first("cn")),
            email=_text(e.first("mail")),
            department=_text(e.first("departmentNumber")) or _text(e.first("ou")),
            institution=_text(e.first("o")), disabled=self._is_disabled(e),
        )

    def _max_csn(self, conn: ldap3.Connection) -> tuple[str, int]:
        """Highest entryCSN in scope and the number of entries (a deletion lowers the count)."""
        best, count = "", 0
        for base, flt in {(self.users_dn, self.user_filter), (self.groups_dn, self.group_filter)}:
            for e in self._search(conn, base, flt, ["entryCSN"]):
                count += 1
                csn = _text(e.first("entryCSN"))
                best = max(best, csn)
        return best, count

    def _watermark(self, conn: ldap3.Connection, users: int, groups: int) -> dict[str, str]:
        csn, count = self._max_csn(conn)
        return {"csn": csn, "count": str(count)} if csn else {}

    def _changed_since(self, conn: ldap3.Connection, watermark: dict[str, str]) -> bool:
        csn, count = self._max_csn(conn)
        return csn != watermark.get("csn") or str(count) != watermark.get("count")


def reader_for(cfg: DirectorySection, bind_password: str | None = None) -> DirectoryReader:
    """The reader for ``directory.kind``."""
    cls = ActiveDirectoryReader if cfg.kind == "ad" else OpenLdapReader
    return cls(cfg, bind_password)


def escape(value: str) -> str:
    """Escape a value for an LDAP filter (RFC 4515); the one function every filter value goes through."""
    return str(escape_filter_chars(value))
