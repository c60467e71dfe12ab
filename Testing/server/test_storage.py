"""Content-addressed storage under concurrent writers of the same bytes."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from medannot.server.storage import ObjectStore


def test_many_threads_storing_the_same_bytes_all_succeed_and_leave_one_object(tmp_path):
    store = ObjectStore(tmp_path)
    data = b"DICM" * 200_000
    with ThreadPoolExecutor(max_workers=16) as pool:
        digests = list(pool.map(lambda _: store.put(data), range(64)))
    expected = hashlib.sha256(data).hexdigest()
    assert set(digests) == {expected}
    assert store.get(expected) == data
    assert [p.name for p in store.path_of(expected).parent.iterdir()] == [expected]  # no temporary files left
