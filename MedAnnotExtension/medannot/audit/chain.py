"""The audit hash chain: canonical hashing of one record and verification of a whole trail."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from medannot.errors import MedAnnotError

GENESIS_HASH = "0" * 64


class AuditTrailBroken(MedAnnotError):
    """An audit record was changed or removed after it was written."""


@dataclass(frozen=True)
class AuditEntry:
    """One audit record as stored: what changed, who did it, when (server UTC), and the chain hashes."""

    seq: int
    time: str  # ISO 8601 UTC, as stored
    user: str | None
    action: str
    entity: str
    old_value: Any
    new_value: Any
    reason: str | None
    prev_hash: str
    hash: str


def record_hash(seq: int, time: str, user: str | None, action: str, entity: str, old_value: Any, new_value: Any,
                reason: str | None, prev_hash: str) -> str:
    """sha256 over the canonical JSON of a record's content and the previous record's hash."""
    payload = json.dumps(
        {"seq": seq, "time": time, "user": user, "action": action, "entity": entity, "old": old_value,
         "new": new_value, "reason": reason, "prev": prev_hash},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditBreak:
    """The first place a trail fails verification."""

    seq: int
    problem: str

    def __str__(self) -> str:
        return f"audit record {self.seq}: {self.problem}"


def verify_chain(entries: Iterable[AuditEntry]) -> tuple[int, AuditBreak | None]:
    """Check sequence continuity, each record's own hash, and each link to the previous record.

    Returns the number of records checked and the first break (``None`` when the chain is intact).
    """
    expected_seq = 1
    prev = GENESIS_HASH
    count = 0
    for entry in entries:
        count += 1
        if entry.seq != expected_seq:
            missing = f"{expected_seq}" if entry.seq == expected_seq + 1 else f"{expected_seq}..{entry.seq - 1}"
            return count, AuditBreak(expected_seq, f"missing (removed); the trail jumps to record {entry.seq} "
                                     f"(records {missing} absent)")
        if entry.prev_hash != prev:
            return count, AuditBreak(entry.seq, "its link to the previous record does not match "
                                     "(the previous record was changed or removed)")
        actual = record_hash(entry.seq, entry.time, entry.user, entry.action, entry.entity, entry.old_value,
                             entry.new_value, entry.reason, entry.prev_hash)
        if actual != entry.hash:
            return count, AuditBreak(entry.seq, "its content was changed after it was written "
                                     f"(stored hash {entry.hash[:12]}..., content hashes to {actual[:12]}...)")
        prev = entry.hash
        expected_seq += 1
    return count, None
