"""Guideline files: schema validation with errors that name the file and key path; sha256 over the bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medannot.errors import GuidelineError
from medannot.guideline import load_guideline

VALID = """\
id: liver-ct
version: "1.0.0"
title: Liver
segments:
  - label: 1
    name: Liver
    category: {scheme: SCT, code: "91723000", meaning: Anatomical Structure}
    type: {scheme: SCT, code: "10200004", meaning: Liver}
    rules: {components: {max: 1}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_valid_guideline_loads_with_defaults_and_sha256_of_its_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    g = load_guideline(path)
    assert (g.id, g.version, g.readers_per_case) == ("liver-ct", "1.0.0", 1)
    assert g.segments[0].required is True and g.segments[0].rules == {"components": {"max": 1}}
    assert g.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert g.segment("liver").label == 1 and g.segment("1").name == "Liver"


def test_changing_one_byte_changes_the_sha256(tmp_path: Path) -> None:
    first = load_guideline(write(tmp_path, VALID)).sha256
    second = load_guideline(write(tmp_path, VALID.replace("title: Liver", "title: Liver "))).sha256
    assert first != second


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("id: liver-ct", "id: Liver CT"), "id"),
        (('code: "10200004"', "code: 10200004"), "segments[0].type.code"),
        (("    name: Liver\n", ""), "segments[0]"),
        (("label: 1", "label: 0"), "segments[0].label"),
    ],
)
def test_schema_errors_name_the_file_and_key_path(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(GuidelineError) as info:
        load_guideline(path)
    message = str(info.value)
    assert str(path) in message and f": {expected}" in message


def test_duplicate_labels_are_rejected(tmp_path: Path) -> None:
    twice = VALID + VALID.split("segments:\n")[1].replace("name: Liver", "name: Other")
    with pytest.raises(GuidelineError, match=r"segments\[1\]\.label: 1 is already used by segments\[0\]"):
        load_guideline(write(tmp_path, twice))


def test_unreadable_or_non_yaml_guideline_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GuidelineError, match="cannot read guideline file"):
        load_guideline(tmp_path / "missing.yaml")
    with pytest.raises(GuidelineError, match="not valid YAML"):
        load_guideline(write(tmp_path, "id: [unclosed"))


def test_unknown_segment_lookup_lists_what_exists(tmp_path: Path) -> None:
    g = load_guideline(write(tmp_path, VALID))
    with pytest.raises(GuidelineError, match=r"has no segment 'Spleen'.*Liver \(1\)"):
        g.segment("Spleen")
