"""Hash-chained audit records: each record carries the sha256 of the previous one, so an edit or a removal shows."""

from medannot.audit.chain import GENESIS_HASH, AuditBreak, AuditEntry, AuditTrailBroken, record_hash, verify_chain

__all__ = ["GENESIS_HASH", "AuditBreak", "AuditEntry", "AuditTrailBroken", "record_hash", "verify_chain"]
