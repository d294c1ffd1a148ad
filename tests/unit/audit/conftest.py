from __future__ import annotations

import pytest

from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.store import db


def sample_event(i: int = 0, type_: AuditEventType = AuditEventType.STUDY_ACCESSED) -> ev.AuditEvent:
    return ev.AuditEvent(
        type_,
        actor=ev.Actor("f3a9c1@https://kc.hospital.test/realms/hospital", "rad.alice", "viewer", "10.1.2.3"),
        objects=(ev.patient(f"PAT{i}", "Doe^Jane"), ev.study(f"1.2.826.0.1.3680043.2.1125.{i}", NumberOfInstances="3")),
        correlation_id=f"req-{i}",
        details={"n": i},
    )


@pytest.fixture
def store(tmp_path) -> AuditStore:
    url = f"sqlite:///{tmp_path}/audit.db"
    db.migrate(url)
    return AuditStore(db.engine(url), CheckpointKey.generate(), checkpoint_every=4)


@pytest.fixture
def make_event():
    return sample_event
