"""Hash-chained audit records: each record carries the sha256 of the previous one, so an edit or a removal shows.

Anchors (the head's sequence number and hash, kept outside the database) make a trail cut at its end show too.
"""

from medannot.audit.chain import (
    GENESIS_HASH,
    AuditAnchor,
    AuditBreak,
    AuditEntry,
    AuditTrailBroken,
    check_anchors,
    check_trail,
    read_anchors,
    record_hash,
    verify_chain,
)

__all__ = ["GENESIS_HASH", "AuditAnchor", "AuditBreak", "AuditEntry", "AuditTrailBroken", "check_anchors",
           "check_trail", "read_anchors", "record_hash", "verify_chain"]
