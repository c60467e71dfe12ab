"""Append records to the audit trail and read it back for verification."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from medannot.audit import GENESIS_HASH, AuditEntry, record_hash
from medannot.server.models import AuditRecord, utcnow

AUDIT_LOCK = 0x4D41_4155
KEY_FILE_ENV = "MEDANNOT_AUDIT_KEY_FILE"


@lru_cache(maxsize=4)
def _read_key(path: str) -> bytes:
    from medannot.errors import MedAnnotError

    try:
        key = bytes.fromhex(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MedAnnotError(f"{KEY_FILE_ENV}={path}: cannot read the audit key ({exc}); it must hold at least 32 "
                            "hexadecimal bytes, e.g. from 'medannot deid keygen --output FILE'") from None
    if len(key) < 16:
        raise MedAnnotError(f"{KEY_FILE_ENV}={path}: the audit key has {len(key)} bytes; use at least 16")
    return key


def audit_key() -> bytes | None:
    """The server's audit key (``MEDANNOT_AUDIT_KEY_FILE``: a hex file outside the database), or None."""
    path = os.environ.get(KEY_FILE_ENV, "").strip()
    return _read_key(path) if path else None


def seal(key: bytes, record_hash_hex: str) -> str:
    """A record's MAC: HMAC-SHA256 of its chained hash under the server's key."""
    return hmac.new(key, b"medannot-audit:" + record_hash_hex.encode("ascii"), hashlib.sha256).hexdigest()


def check_seals(session: Session, key: bytes) -> tuple[int, int, str | None]:
    """(records sealed, unsealed records before the first seal, the first problem or None): every record after
    the first sealed one must carry a seal that matches under ``key``."""
    sealed = before = 0
    for seq, digest, mac in session.execute(select(AuditRecord.seq, AuditRecord.hash, AuditRecord.mac)
                                            .order_by(AuditRecord.seq)):
        if mac is None:
            if sealed:
                return sealed, before, (f"record {seq} has no seal after {sealed} sealed records: written without "
                                        "the server's audit key")
            before += 1
            continue
        if not hmac.compare_digest(mac, seal(key, digest)):
            return sealed, before, (f"record {seq}: its seal does not match its hash under this audit key (the "
                                    "record, or the chain after it, was rewritten, or the key is another)")
        sealed += 1
    return sealed, before, None


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
    key = audit_key()
    record = AuditRecord(seq=seq, time=when, user=user, action=action, entity=entity, old_value=old_text,
                         new_value=new_text, reason=reason, prev_hash=prev, hash=digest,
                         mac=seal(key, digest) if key else None)
    session.add(record)
    session.flush()
    return record


def audit_entries(session: Session, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
    """The trail in sequence order: the whole of it, or the page of at most ``limit`` records after ``after``."""
    query = select(AuditRecord).where(AuditRecord.seq > after).order_by(AuditRecord.seq)
    rows = session.scalars(query if limit is None else query.limit(limit)).all()
    return [AuditEntry(r.seq, r.time, r.user, r.action, r.entity, r.old_value, r.new_value, r.reason, r.prev_hash,
                       r.hash) for r in rows]
