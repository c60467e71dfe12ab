"""Append records to the audit trail and read it back for verification."""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from medannot.audit import GENESIS_HASH, AuditEntry, record_hash
from medannot.server.models import AuditRecord, utcnow

AUDIT_LOCK = 0x4D41_4155


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def append_audit(session: Session, user: str | None, action: str, entity: str, old: Any = None, new: Any = None,
                 reason: str | None = None) -> AuditRecord:
    """Append one record in the caller's transaction, chained to the last one.

    On PostgreSQL an advisory transaction lock serialises appends; SQLite transactions are already serialised.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})
    last = session.execute(select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)).first()
    seq = (last.seq if last else 0) + 1
    prev = last.hash if last else GENESIS_HASH
    when = utcnow().replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
    old_text, new_text = _dump(old), _dump(new)
    digest = record_hash(seq, when, user, action, entity, old_text, new_text, reason, prev)
    record = AuditRecord(seq=seq, time=when, user=user, action=action, entity=entity, old_value=old_text,
                         new_value=new_text, reason=reason, prev_hash=prev, hash=digest)
    session.add(record)
    session.flush()
    return record


def audit_entries(session: Session, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
    """The trail in sequence order: the whole of it, or the page of at most ``limit`` records after ``after``."""
    query = select(AuditRecord).where(AuditRecord.seq > after).order_by(AuditRecord.seq)
    rows = session.scalars(query if limit is None else query.limit(limit)).all()
    return [AuditEntry(r.seq, r.time, r.user, r.action, r.entity, r.old_value, r.new_value, r.reason, r.prev_hash,
                       r.hash) for r in rows]
