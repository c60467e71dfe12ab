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


@dataclass(frozen=True)
class AuditAnchor:
    """A record's sequence number and hash, copied out of the database when it was the last one (the head).

    Kept where the database's users cannot change it (write-once storage, a signed ticket, an e-mail), anchors
    make removing the *last* records detectable: the hash chain alone cannot tell a trail cut at its end from
    a shorter one.
    """

    seq: int
    hash: str
    time: str  # when the anchor was taken (ISO 8601 UTC)
    source: str = ""  # where the anchor was read from (file and line), for messages

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "hash": self.hash, "time": self.time}, sort_keys=True)


def read_anchors(path: Any) -> list[AuditAnchor]:
    """Anchors from a file of JSON lines as written by ``medannot audit anchor``."""
    from pathlib import Path

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MedAnnotError(f"{path}: cannot read audit anchors ({exc.strerror or exc})") from exc
    anchors = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            anchor = AuditAnchor(int(data["seq"]), str(data["hash"]), str(data.get("time", "")),
                                 f"{path}:{number}")
        except (ValueError, KeyError, TypeError) as exc:
            raise MedAnnotError(f"{path}:{number}: not an audit anchor (a JSON line with seq and hash, as "
                                f"written by 'medannot audit anchor'): {exc}") from exc
        if anchor.seq < 1 or len(anchor.hash) != 64 or any(c not in "0123456789abcdefABCDEF" for c in anchor.hash):
            raise MedAnnotError(f"{path}:{number}: not an audit anchor: seq must be >= 1 and hash 64 hex digits")
        anchor = AuditAnchor(anchor.seq, anchor.hash.lower(), anchor.time, anchor.source)
        anchors.append(anchor)
    if not anchors:
        raise MedAnnotError(f"{path}: no audit anchors in the file")
    return anchors


def check_anchors(entries: Iterable[AuditEntry], anchors: Iterable[AuditAnchor]) -> AuditBreak | None:
    """The first anchor the trail does not hold: its record is gone (the trail was cut) or has another hash."""
    by_seq = {entry.seq: entry.hash for entry in entries}
    last = max(by_seq, default=0)
    for anchor in sorted(anchors, key=lambda a: a.seq):
        taken = f"anchored {anchor.time or 'earlier'}" + (f" in {anchor.source}" if anchor.source else "")
        if anchor.seq not in by_seq:
            return AuditBreak(anchor.seq, f"missing: the trail now ends at record {last}, but record {anchor.seq} "
                              f"was {taken} (records were removed from the end)")
        if by_seq[anchor.seq] != anchor.hash:
            return AuditBreak(anchor.seq, f"its hash differs from the one {taken} (the trail was rewritten)")
    return None


def check_trail(entries: Iterable[AuditEntry], anchors: Iterable[AuditAnchor] = ()) -> tuple[int, AuditBreak | None]:
    """The record count and the first problem of a trail: a break in its hash chain, else the first anchor it does
    not hold (the one check of ``audit verify`` and of the package builder)."""
    entries = list(entries)
    count, problem = verify_chain(entries)
    anchors = list(anchors)
    if problem is None and anchors:
        problem = check_anchors(entries, anchors)
    return count, problem
