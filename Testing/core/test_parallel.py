"""Calls run in a forked helper process (medannot._parallel.InChildProcess), and what seg export hands to it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from medannot._parallel import InChildProcess
from medannot.errors import GuidelineError
from medannot_testing import CLI_ENV

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the helper process needs Linux")


def _labels(shape: tuple[int, int, int]) -> tuple[np.ndarray, str, int]:
    labels = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    return labels, "geometry", os.getpid()


def _refuse(message: str) -> None:
    raise GuidelineError(message)


def _dies_in_the_child(parent: int) -> int:
    if os.getpid() != parent:
        os._exit(3)
    return os.getpid()


def test_results_come_from_the_child_in_order_with_arrays_in_shared_memory():
    helper = InChildProcess({"refused": (_refuse, ("g.yaml: bad",)), "labels": (_labels, ((5, 7, 9),))})
    try:
        assert helper.running
        with pytest.raises(GuidelineError, match="g.yaml: bad"):
            helper.value("refused")
        labels, geometry, pid = helper.value("labels")
    finally:
        helper.close()
    assert pid != os.getpid()  # made in the child
    np.testing.assert_array_equal(labels, _labels((5, 7, 9))[0])
    assert geometry == "geometry" and labels.dtype == np.uint16
    labels[0, 0, 0] = 99  # a private (copy-on-write) mapping: the array can be changed like any other
    assert labels[0, 0, 0] == 99


def test_what_the_child_cannot_do_or_send_is_done_here():
    parent = os.getpid()
    helper = InChildProcess({"unpicklable": (lambda: (lambda: 1), ()), "dies": (_dies_in_the_child, (parent,)),
                             "after": (os.getpid, ())})
    try:
        assert helper.value("unpicklable")() == 1
        assert helper.value("dies") == parent  # the child exited: this and what follows run here
        assert helper.value("after") == parent
        assert not helper.running
    finally:
        helper.close()


_WATCH = """
import atexit, os, sys
parent = os.getpid()
atexit.register(lambda: os.getpid() == parent and print("imported:", sorted(
    name for name in ("SimpleITK", "jsonschema", "yaml") if name in sys.modules), file=sys.stderr))
from medannot.cli import main
sys.argv[0] = "medannot"
main()
"""


def test_seg_export_leaves_the_label_map_reader_and_the_schema_validator_to_its_helper(ct_case, liver_guideline_path,
                                                                                     tmp_path):
    from medannot.imaging import write_label_map

    labels = write_label_map(ct_case["labels"], ct_case["geometry"], tmp_path / "labels.nii.gz")
    proc = subprocess.run(
        [sys.executable, "-c", _WATCH, "seg", "export", "--source", str(ct_case["folder"]), "--labels", str(labels),
         "--guideline", str(liver_guideline_path), "--reader-name", "Doe^Jane", "--reader-id", "jd",
         "--output", str(tmp_path / "out")], env=CLI_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stderr  # SimpleITK, jsonschema and yaml were imported by the helper only
    assert len(proc.stdout.split()) == 2  # the SEG and the SR


def test_with_another_thread_running_nothing_is_forked_and_each_call_runs_when_asked():
    import threading

    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        helper = InChildProcess({"pid": (os.getpid, ()), "refused": (_refuse, ("g.yaml: bad",))})
        try:
            assert not helper.running  # forking a process with threads could copy a held lock: not done
            assert helper.value("pid") == os.getpid()
            with pytest.raises(GuidelineError, match="g.yaml: bad"):
                helper.value("refused")
        finally:
            helper.close()
    finally:
        release.set()
        other.join()
