"""Audit anchors: reading an anchor file and checking a trail against it (the chain itself is tested with the
server in Testing/server)."""

from __future__ import annotations

import pytest

from medannot.audit import GENESIS_HASH, AuditEntry, check_anchors, read_anchors, record_hash
from medannot.errors import MedAnnotError


def trail(n: int) -> list[AuditEntry]:
    entries, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        digest = record_hash(seq, "2026-11-26T00:00:00Z", "admin", "user.create", f"user:{seq}", None, None, None,
                             prev)
        entries.append(AuditEntry(seq, "2026-11-26T00:00:00Z", "admin", "user.create", f"user:{seq}", None, None,
                                  None, prev, digest))
        prev = digest
    return entries


def test_anchors_hold_on_the_trail_and_catch_a_cut_end_or_a_rewrite(tmp_path):
    entries = trail(5)
    path = tmp_path / "anchors.jsonl"
    path.write_text(f'{{"seq": 3, "hash": "{entries[2].hash.upper()}", "time": "t1"}}\n\n'
                    f'{{"seq": 5, "hash": "{entries[4].hash}", "time": "t2"}}\n')
    anchors = read_anchors(path)  # upper-case hex is the same hash
    assert check_anchors(entries, anchors) is None
    cut = check_anchors(entries[:4], anchors)
    assert cut is not None and cut.seq == 5 and "ends at record 4" in cut.problem and f"{path}:3" in cut.problem
    rewritten = trail(5)[:2] + [AuditEntry(3, "x", None, "a", "e", None, None, None, "p", "f" * 64)]
    changed = check_anchors(rewritten, anchors)
    assert changed is not None and changed.seq == 3 and "hash differs" in changed.problem


@pytest.mark.parametrize(("text", "message"), [
    ("hello\n", ":1: not an audit anchor"),
    ('{"seq": 2, "hash": "' + "z" * 64 + '"}\n', "64 hex digits"),
    ('{"seq": 0, "hash": "' + "a" * 64 + '"}\n', "seq must be >= 1"),
    ("\n", "no audit anchors"),
])
def test_a_file_that_is_not_an_anchor_file_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "anchors.jsonl"
    path.write_text(text)
    with pytest.raises(MedAnnotError, match=message):
        read_anchors(path)
