"""The review campaign: persisted findings, reviewers' queues, decisions, escalation.

A campaign is started by ``pacs-bridge review run`` or ``serve``'s schedule (:func:`start`): the
review is computed (bridge/review/build.py), every user's findings and every assignment item are
stored, each item in one reviewer queue, and the older open campaign is closed (its undecided
items are simply superseded: their assignments are items of the new campaign again).

Who may decide an item (:func:`decide`), checked here and nowhere else, for the page and the CLI:

* a member of the item's queue as recorded when the campaign started (the reviewer group's
  members then), or a member of the privacy officer's queue once the item escalated;
* never the person the item is about (nobody recertifies their own access);
* only in the open campaign, only ``keep`` or ``revoke``, only with a comment, and only once.

Every decision, and every refused attempt, is an audit event (``review.decided``, outcome 4 when
refused).  A revoke becomes an exception the sync applies (bridge/review/exceptions.py); a keep
ends any earlier exception of the same assignment.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update

from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind, Outcome
from bridge.errors import InputError
from bridge.policy.loader import PRIVACY_OFFICER
from bridge.review.build import Review
from bridge.store.db import session, write_session
from bridge.store.models import (
    ReviewCampaign,
    ReviewException,
    ReviewItem,
    ReviewReviewer,
    ReviewUser,
    RoleAssignment,
    utcnow,
)

log = logging.getLogger(__name__)
BRIDGE = ev.Actor(client_id="pacs-sso-bridge", is_requestor=False)
DECISIONS = ("keep", "revoke")
MAX_COMMENT = 2000


class DecisionRefused(InputError):
    """A decision that may not be made (who, what or when); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reviewer:
    """Who is deciding: the directory id (the PACS token's ``sub``) and the username."""

    subject_id: str
    username: str | None = None
    actor: ev.Actor | None = None


def _audit(store: AuditStore | None, event: ev.AuditEvent) -> None:
    if store is not None:
        store.append(event)


def start(engine: Engine, review: Review, *, started_by: str, deadline_days: int, policy_source: str = "",
          audit: AuditStore | None = None, now: dt.datetime | None = None) -> int:
    """Persist ``review`` as a new open campaign (closing the previous one); returns its id."""
    now = now or utcnow()
    summary = review.summary()
    summary["warnings"] = review.warnings[:50]
    with write_session(engine) as s:
        s.execute(update(ReviewCampaign).where(ReviewCampaign.status == "open").values(status="closed"))
        camp = ReviewCampaign(started_at=now, deadline=now + dt.timedelta(days=deadline_days), status="open",
                              started_by=started_by, policy_source=policy_source, summary=summary)
        s.add(camp)
        s.flush()
        cid = camp.id
    users = [{"campaign_id": cid, "subject_id": u.subject_id, "username": u.username, "department": u.department,
              "last_login": u.last_login, "last_access": u.last_access, "flags": sorted(u.flags),
              "evidence": u.evidence} for u in review.users.values()]
    items = [{"campaign_id": cid, "subject_id": i.subject_id, "username": i.username, "department": i.department,
              "role": i.role, "source": i.source, "source_group_dn": i.source_group_dn, "rule_id": i.rule_id,
              "queue": i.queue} for i in review.items]
    reviewers = [{"campaign_id": cid, "queue": q, "subject_id": sid.lower(), "username": name}
                 for q, members in review.reviewers.items() for sid, name in members]
    with session(engine) as s:  # bulk inserts: 10,000 users in one transaction
        for model, rows in ((ReviewUser, users), (ReviewItem, items), (ReviewReviewer, reviewers)):
            for chunk in range(0, len(rows), 5000):
                if rows[chunk:chunk + 5000]:
                    s.execute(model.__table__.insert(), rows[chunk:chunk + 5000])
    _audit(audit, ev.AuditEvent(
        AuditEventType.REVIEW_STARTED, None, BRIDGE,
        (ev.ParticipantObject(ObjectKind.CONFIG, f"review-campaign:{cid}", "access review"),),
        details={"campaign": cid, "started_by": started_by, "deadline": ev.format_time(now + dt.timedelta(
            days=deadline_days)), "users": summary["users"], "items": summary["items"], "flags": summary["flags"],
            "queues": summary["queues"]},
        description=f"Access review {cid} started: {summary['items']} assignments of {summary['users']} users"))
    return cid


def current(engine: Engine) -> ReviewCampaign | None:
    with session(engine) as s:
        row = s.scalars(select(ReviewCampaign).order_by(ReviewCampaign.id.desc()).limit(1)).first()
        if row is not None:
            s.expunge(row)
        return row


def history(engine: Engine, limit: int = 24) -> list[ReviewCampaign]:
    with session(engine) as s:
        rows = list(s.scalars(select(ReviewCampaign).order_by(ReviewCampaign.id.desc()).limit(limit)))
        for r in rows:
            s.expunge(r)
        return list(reversed(rows))


def queues_of(engine: Engine, campaign_id: int, subject_id: str) -> set[str]:
    """The queues ``subject_id`` reviews in the campaign (empty: not a reviewer)."""
    with session(engine) as s:
        return set(s.scalars(select(ReviewReviewer.queue).where(
            ReviewReviewer.campaign_id == campaign_id, ReviewReviewer.subject_id == subject_id.lower())))


def visible_items(engine: Engine, campaign_id: int, subject_id: str) -> list[ReviewItem]:
    """The items ``subject_id`` may see and decide: their queues' items (the privacy officer also
    every escalated item), never their own."""
    queues = queues_of(engine, campaign_id, subject_id)
    if not queues:
        return []
    t = ReviewItem
    cond = t.queue.in_(sorted(queues))
    if PRIVACY_OFFICER in queues:
        cond = cond | t.escalated_at.is_not(None)
    with session(engine) as s:
        stmt = select(t).where(t.campaign_id == campaign_id, cond, func.lower(t.subject_id) != subject_id.lower())
        rows = list(s.scalars(stmt.order_by(t.department, t.username, t.role)))
        for r in rows:
            s.expunge(r)
        return rows


def items_of(engine: Engine, campaign_id: int) -> list[ReviewItem]:
    with session(engine) as s:
        rows = list(s.scalars(select(ReviewItem).where(ReviewItem.campaign_id == campaign_id).order_by(ReviewItem.id)))
        for r in rows:
            s.expunge(r)
        return rows


def users_of(engine: Engine, campaign_id: int, subjects: Sequence[str] | None = None) -> list[ReviewUser]:
    with session(engine) as s:
        stmt = select(ReviewUser).where(ReviewUser.campaign_id == campaign_id)
        if subjects is not None:
            stmt = stmt.where(ReviewUser.subject_id.in_(list(subjects)))
        rows = list(s.scalars(stmt.order_by(ReviewUser.username)))
        for r in rows:
            s.expunge(r)
        return rows


def _refuse(audit: AuditStore | None, who: Reviewer, item_id: Any, why: str, status: int = 403,
            item: ReviewItem | None = None) -> DecisionRefused:
    objects: list[ev.ParticipantObject] = [ev.ParticipantObject(ObjectKind.CONFIG, f"review-item:{item_id}")]
    if item is not None:
        objects += [ev.user(item.subject_id, item.username), ev.role(item.role)]
    _audit(audit, ev.AuditEvent(
        AuditEventType.REVIEW_DECIDED, Outcome.MINOR_FAILURE,
        who.actor or ev.Actor(user_id=who.subject_id, username=who.username), tuple(objects),
        details={"item": str(item_id)[:64], "refused": why}, description=f"Access review decision refused: {why}"))
    return DecisionRefused(why, status)


def decide(engine: Engine, item_id: int, decision: str, comment: str, who: Reviewer, *,
           audit: AuditStore | None = None, until: dt.datetime | None = None,
           now: dt.datetime | None = None) -> ReviewItem:
    """Record ``who``'s decision on one item (see the module docstring for the rules); raises
    :class:`DecisionRefused` (audited) when it may not be made."""
    now = now or utcnow()
    comment = (comment or "").strip()
    if decision not in DECISIONS:
        raise _refuse(audit, who, item_id, f"decision must be keep or revoke, not {decision[:20]!r}", 400)
    if not comment:
        raise _refuse(audit, who, item_id, "a comment is required", 400)
    if len(comment) > MAX_COMMENT:
        raise _refuse(audit, who, item_id, f"comment longer than {MAX_COMMENT} characters", 400)
    if until is not None and until <= now:
        raise _refuse(audit, who, item_id, "the exception's end date must lie in the future", 400)
    me = who.subject_id.lower()
    problem: tuple[str, int] | None = None
    with write_session(engine) as s:
        item = s.get(ReviewItem, item_id)
        camp = s.get(ReviewCampaign, item.campaign_id) if item is not None else None
        if item is None or camp is None:
            problem = ("no such review item", 404)
        else:
            s.expunge(item)
            problem = _may_decide(s, camp, item, me)
        if problem is None:
            assert item is not None and camp is not None
            if not _record(s, camp, item, decision, comment, who, me, until, now):
                problem = ("already decided (by a concurrent decision)", 409)
    if problem is not None:  # audited after the write transaction (SQLite: one writer at a time)
        raise _refuse(audit, who, item_id, problem[0], problem[1], item)
    assert item is not None
    _audit(audit, ev.AuditEvent(
        AuditEventType.REVIEW_DECIDED, Outcome.SUCCESS, who.actor or ev.Actor(user_id=me, username=who.username),
        (ev.user(item.subject_id, item.username), ev.role(item.role),
         ev.ParticipantObject(ObjectKind.CONFIG, f"review-item:{item.id}", f"campaign {item.campaign_id}")),
        details={"campaign": item.campaign_id, "item": item.id, "decision": decision, "comment": comment,
                 "queue": item.queue, "source": item.source, "group": item.source_group_dn, "rule": item.rule_id,
                 "until": ev.format_time(until) if until else None},
        description=f"Access review: {item.role} of {item.username} {'kept' if decision == 'keep' else 'revoked'}"))
    return item


def _may_decide(s: Any, camp: ReviewCampaign, item: ReviewItem, me: str) -> tuple[str, int] | None:
    """Why ``me`` may not decide ``item`` now (None: they may)."""
    queues = set(s.scalars(select(ReviewReviewer.queue).where(
        ReviewReviewer.campaign_id == camp.id, ReviewReviewer.subject_id == me)))
    if not (item.queue in queues or (PRIVACY_OFFICER in queues and item.escalated_at is not None)):
        return "not a reviewer of this item's queue", 403
    if item.subject_id.lower() == me:
        return "nobody reviews their own access", 403
    if camp.status != "open":
        return f"campaign {camp.id} is closed", 409
    if item.decision is not None:
        return f"already decided ({item.decision}) by {item.decided_by_name}", 409
    return None


def _record(s: Any, camp: ReviewCampaign, item: ReviewItem, decision: str, comment: str, who: Reviewer, me: str,
            until: dt.datetime | None, now: dt.datetime) -> bool:
    """Write the decision (guarded against a concurrent one: only an undecided row is updated) and
    its effect on the exceptions."""
    done = s.execute(update(ReviewItem).where(ReviewItem.id == item.id, ReviewItem.decision.is_(None)).values(
        decision=decision, comment=comment, decided_by=me, decided_by_name=who.username, decided_at=now))
    if done.rowcount != 1:
        return False
    item.decision, item.comment, item.decided_by, item.decided_by_name, item.decided_at = (
        decision, comment, me, who.username, now)
    s.execute(update(ReviewException).where(ReviewException.subject_id == item.subject_id.lower(),
                                            ReviewException.role == item.role,
                                            ReviewException.ended_at.is_(None)).values(ended_at=now))
    if decision == "revoke":
        s.add(ReviewException(subject_id=item.subject_id.lower(), username=item.username, role=item.role,
                              item_id=item.id, campaign_id=camp.id, created_by=who.username or me,
                              reason=f"access review {camp.id}: revoked by {who.username or me}: {comment[:300]}",
                              created_at=now, until=until))
        if item.source == "manual":  # a hand-made store row: the sync never touches it, so it goes now
            s.execute(delete(RoleAssignment).where(RoleAssignment.subject_id == item.subject_id,
                                                   RoleAssignment.role == item.role,
                                                   RoleAssignment.managed.is_(False)))
    return True


def escalate(engine: Engine, *, audit: AuditStore | None = None, notify: Callable[[dict[str, Any]], None] | None = None,
             now: dt.datetime | None = None) -> int:
    """Move every undecided item of the open campaign past its deadline to the privacy officer's
    queue (``escalated_at``); one audit event (shipped to syslog as a security alert) and one
    webhook call for the batch.  Returns how many items escalated."""
    now = now or utcnow()
    with write_session(engine) as s:
        camp = s.scalars(select(ReviewCampaign).where(ReviewCampaign.status == "open")
                         .order_by(ReviewCampaign.id.desc()).limit(1)).first()
        if camp is None or camp.deadline > now:
            return 0
        rows = list(s.scalars(select(ReviewItem).where(ReviewItem.campaign_id == camp.id,
                                                       ReviewItem.decision.is_(None),
                                                       ReviewItem.escalated_at.is_(None))))
        for r in rows:
            r.escalated_at = now
        payload = {"event": "review.escalated", "campaign": camp.id, "deadline": ev.format_time(camp.deadline),
                   "escalated_to": PRIVACY_OFFICER, "count": len(rows),
                   "queues": {q: sum(r.queue == q for r in rows) for q in sorted({r.queue for r in rows})},
                   "items": [{"id": r.id, "username": r.username, "role": r.role, "queue": r.queue}
                             for r in rows[:200]]}
    if not rows:
        return 0
    _audit(audit, ev.AuditEvent(
        AuditEventType.REVIEW_ESCALATED, None, BRIDGE,
        (ev.ParticipantObject(ObjectKind.CONFIG, f"review-campaign:{payload['campaign']}", "access review"),),
        details={k: v for k, v in payload.items() if k != "event"},
        description=f"Access review {payload['campaign']}: {len(rows)} items unanswered past the deadline, "
                    "escalated to the privacy officer"))
    if notify is not None:
        try:
            notify(payload)
        except Exception as exc:  # the escalation stands (recorded above); the webhook is retried never
            log.error("review escalation webhook failed: %s", exc)
            _audit(audit, ev.AuditEvent(
                AuditEventType.REVIEW_ESCALATED, Outcome.SERIOUS_FAILURE, BRIDGE,
                (ev.ParticipantObject(ObjectKind.CONFIG, f"review-campaign:{payload['campaign']}", "webhook"),),
                details={"campaign": payload["campaign"], "webhook_error": str(exc)[:300]},
                description="Access review escalation: the webhook could not be delivered"))
    return len(rows)
