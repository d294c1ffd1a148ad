"""Target: the bridge's own ``role_assignments`` table, read by the PACS token service and the
Orthanc plugin.  Only rows with ``managed = true`` belong to the sync; hand-made rows are never
read as actual state and never removed.

One managed row per (user, role), carrying the first granting group and rule of the policy and
the role's scopes; those details are refreshed in place when they change (not counted as a change).
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, select

from bridge.policy.model import Role
from bridge.store.db import session, write_session
from bridge.store.models import RoleAssignment, utcnow
from bridge.sync.model import ActualState, Change, DesiredState
from bridge.sync.targets.base import Target


class StoreTarget(Target):
    name = "store"

    def __init__(self, engine: Engine):
        self.engine = engine

    def read(self, desired: DesiredState) -> ActualState:
        with session(self.engine) as s:
            rows = s.execute(select(RoleAssignment.subject_id, RoleAssignment.role, RoleAssignment.username)
                             .where(RoleAssignment.managed.is_(True))).all()
        names = {r.subject_id: r.username for r in rows}
        # roles "exist" in the store as soon as the policy defines them: nothing to create
        return ActualState(frozenset(desired.roles), frozenset((r.subject_id, r.role) for r in rows), names)

    def create_role(self, role: Role) -> None:  # pragma: no cover - never planned for the store
        return None

    def add(self, change: Change, desired: DesiredState) -> None:
        role = desired.roles[change.role]
        with session(self.engine) as s:
            s.add(RoleAssignment(subject_id=change.user_id, username=change.username, role=change.role,
                                 source_group_dn=change.group_dn, rule_id=change.rule_id,
                                 scopes=role.scope(), managed=True))

    def remove(self, change: Change) -> None:
        with session(self.engine) as s:
            s.execute(delete(RoleAssignment).where(RoleAssignment.subject_id == change.user_id,
                                                   RoleAssignment.role == change.role,
                                                   RoleAssignment.managed.is_(True)))

    def refresh(self, desired: DesiredState) -> int:
        """Update usernames (renames), granting group/rule and scopes of existing managed rows."""
        n = 0
        with write_session(self.engine) as s:
            for row in s.scalars(select(RoleAssignment).where(RoleAssignment.managed.is_(True))):
                why = desired.assignments.get((row.subject_id, row.role))
                user = desired.users.get(row.subject_id)
                if why is None or user is None:
                    continue
                scopes = desired.roles[row.role].scope()
                if (row.username, row.source_group_dn, row.rule_id, row.scopes) != (
                        user.username, why.group_dn, why.rule_id, scopes):
                    row.username, row.source_group_dn, row.rule_id, row.scopes = (
                        user.username, why.group_dn, why.rule_id, scopes)
                    row.updated_at = utcnow()
                    n += 1
        return n
