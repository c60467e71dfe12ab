"""The keyed audit chain (issue #14, L5): with MEDANNOT_AUDIT_KEY_FILE set, every record's hash is sealed with an
HMAC under that key, so a record rewritten with every later hash recomputed (which the plain chain accepts) fails
`medannot audit verify`, naming the record."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import db_url, make_lab, medannot  # noqa: F401
from sqlalchemy import select

from medannot.audit import record_hash
from medannot.server.db import make_engine, session_factory, transaction
from medannot.server.models import AuditRecord


def _rewrite_and_rechain(url: str, seq: int) -> None:
    """What an insider with database access but no key can do: change one record, recompute every later hash."""
    engine = make_engine(url)
    with transaction(session_factory(engine)) as session:
        records = list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
        prev = None
        for r in records:
            if r.seq == seq:
                r.new_value = '{"forged": true}'
            if r.seq >= seq:
                r.prev_hash = prev if prev is not None else r.prev_hash
                r.hash = record_hash(r.seq, r.time, r.user, r.action, r.entity, r.old_value, r.new_value, r.reason,
                                     r.prev_hash)
            prev = r.hash
    engine.dispose()


# PostgreSQL refuses any UPDATE of audit records (a trigger; an insider must first be its superuser); SQLite has no
# such guard, which is where the seal matters
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_rewritten_and_rechained_record_fails_verify_only_with_the_key(db_url, tmp_path: Path,  # noqa: F811
                                                                          monkeypatch) -> None:
    key = tmp_path / "audit.key"
    key.write_text("ab" * 32)
    monkeypatch.setenv("MEDANNOT_AUDIT_KEY_FILE", str(key))
    lab = make_lab(db_url, tmp_path / "lab", cases=1)
    env = {"MEDANNOT_AUDIT_KEY_FILE": str(key)}
    proc = medannot("audit", "verify", db=lab.db_url, env=env)
    assert proc.returncode == 0 and "sealed with the audit key" in proc.stdout, proc.stdout + proc.stderr
    _rewrite_and_rechain(lab.db_url, 2)
    unkeyed = medannot("audit", "verify", db=lab.db_url, env={"MEDANNOT_AUDIT_KEY_FILE": ""})
    assert unkeyed.returncode == 0 and "not sealed" in unkeyed.stdout  # the plain chain cannot see it
    keyed = medannot("audit", "verify", db=lab.db_url, env=env)
    assert keyed.returncode == 1 and "record 2: its seal does not match" in keyed.stderr, keyed.stderr
    other = tmp_path / "other.key"
    other.write_text("cd" * 32)
    wrong = medannot("audit", "verify", db=lab.db_url, env={"MEDANNOT_AUDIT_KEY_FILE": str(other)})
    assert wrong.returncode == 1 and "record 1: its seal does not match" in wrong.stderr
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    broken = medannot("audit", "verify", db=lab.db_url, env={"MEDANNOT_AUDIT_KEY_FILE": str(bad)})
    assert broken.returncode == 1 and "bad.key" in broken.stderr and "Traceback" not in broken.stderr
