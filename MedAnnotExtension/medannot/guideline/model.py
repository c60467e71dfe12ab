"""Guideline model: load a guideline YAML file, validate it against the shipped JSON Schema, expose its segments."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medannot.errors import GuidelineError

logger = logging.getLogger(__name__)

DEFAULT_COLOR = "#808080"


@dataclass(frozen=True)
class CodedConcept:
    """A coded concept such as (SCT, 10200004, Liver)."""

    scheme: str
    code: str
    meaning: str

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> CodedConcept:
        return cls(scheme=str(value["scheme"]), code=str(value["code"]), meaning=str(value["meaning"]))


@dataclass(frozen=True)
class SegmentSpec:
    """One segment a guideline asks the reader to draw."""

    label: int
    name: str
    category: CodedConcept
    type: CodedConcept
    color: str = DEFAULT_COLOR
    required: bool = True
    rules: dict[str, Any] = field(default_factory=dict)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The display colour as 0-255 RGB."""
        return (int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16))


@dataclass(frozen=True)
class Guideline:
    """A validated guideline; ``sha256`` is taken over the file's bytes so results pin the exact text followed."""

    id: str
    version: str
    title: str
    segments: tuple[SegmentSpec, ...]
    sha256: str
    modality: str | None = None
    readers_per_case: int = 1
    source_path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def segment(self, key: str | int) -> SegmentSpec:
        """Find a segment by name (case-insensitive) or label value.

        Raises
        ------
        GuidelineError
            If no segment has that name or label.
        """
        for spec in self.segments:
            if str(key).isdigit() and spec.label == int(key):
                return spec
            if spec.name.lower() == str(key).lower():
                return spec
        names = ", ".join(f"{s.name} ({s.label})" for s in self.segments)
        raise GuidelineError(f"guideline {self.id} {self.version} has no segment '{key}'; it defines: {names}")

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.segments]

    @property
    def reference(self) -> str:
        """Short text naming the exact guideline: id, version and sha256 prefix."""
        return f"{self.id} {self.version} sha256:{self.sha256[:12]}"


@lru_cache(maxsize=1)
def guideline_schema() -> dict[str, Any]:
    """The JSON Schema guideline files are validated against."""
    text = resources.files("medannot.guideline").joinpath("schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) if isinstance(p, str) else f"[{p}]" for p in error.absolute_path]
    text = ".".join(parts).replace(".[", "[")
    return text or "(top level)"


def parse_guideline(data: bytes, origin: str = "<guideline>", path: Path | None = None) -> Guideline:
    """Validate guideline YAML bytes and build a :class:`Guideline`.

    Parameters
    ----------
    data
        The file's bytes (the sha256 is taken over exactly these).
    origin
        Name used in error messages, usually the file path.
    path
        The file the bytes came from, if any.

    Raises
    ------
    GuidelineError
        Naming the file and key path of the first problem found.
    """
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise GuidelineError(f"{origin}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise GuidelineError(f"{origin}: a guideline must be a YAML mapping with id, version, title and segments")
    validator = jsonschema.Draft202012Validator(guideline_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise GuidelineError(f"{origin}: {_key_path(first)}: {first.message}{more}")
    segments = tuple(
        SegmentSpec(
            label=int(item["label"]),
            name=str(item["name"]),
            category=CodedConcept.from_dict(item["category"]),
            type=CodedConcept.from_dict(item["type"]),
            color=str(item.get("color", DEFAULT_COLOR)).lower(),
            required=bool(item.get("required", True)),
            rules=dict(item.get("rules") or {}),
        )
        for item in doc["segments"]
    )
    for attr in ("label", "name"):
        seen: dict[object, int] = {}
        for index, spec in enumerate(segments):
            value = getattr(spec, attr)
            key = value.lower() if isinstance(value, str) else value
            if key in seen:
                raise GuidelineError(
                    f"{origin}: segments[{index}].{attr}: {value!r} is already used by segments[{seen[key]}]; "
                    f"each segment needs a unique {attr}"
                )
            seen[key] = index
    return Guideline(
        id=str(doc["id"]),
        version=str(doc["version"]),
        title=str(doc["title"]),
        segments=segments,
        sha256=hashlib.sha256(data).hexdigest(),
        modality=doc.get("modality"),
        readers_per_case=int(doc.get("readers_per_case", 1)),
        source_path=path,
        raw=doc,
    )


def load_guideline(path: str | Path) -> Guideline:
    """Read and validate a guideline YAML file.

    Raises
    ------
    GuidelineError
        If the file cannot be read or does not validate; the message names the file and the key path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GuidelineError(f"{path}: cannot read guideline file ({exc.strerror or exc})") from exc
    return parse_guideline(data, origin=str(path), path=path)
