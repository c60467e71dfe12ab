"""Guideline model: load a guideline YAML file, validate it against the shipped JSON Schema, expose its segments."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medannot.errors import GuidelineError
from medannot.guideline.rules import RULE_KINDS, Rule, parse_rules

if TYPE_CHECKING:
    import jsonschema

logger = logging.getLogger(__name__)

DEFAULT_COLOR = "#808080"
SEGMENT_EDITOR_TOOLS = (
    "Paint", "Draw", "Erase", "Scissors", "Threshold", "Islands", "Smoothing", "Fill between slices",
    "Grow from seeds", "Level tracing", "Margin", "Hollow", "Logical operators",
)


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
    qa_rules: tuple[Rule, ...] = field(default=(), compare=False)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The display colour as 0-255 RGB."""
        return (int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16))


@dataclass(frozen=True)
class ChecklistItem:
    """One question the reader answers per case: ``yes_no`` or ``choice`` among ``choices``."""

    id: str
    question: str
    type: str
    choices: tuple[str, ...] = ()
    required: bool = True


DEFAULT_NSD_TOLERANCE_MM = 2.0
CONSENSUS_METHODS = ("staple", "majority", "none")
ADJUDICATION_MODES = ("always", "on_disagreement")
SIGNATURE_MEANINGS = ("authored", "reviewed", "approved")


@dataclass(frozen=True)
class AgreementThreshold:
    """Per-segment agreement a case must reach between every pair of reads; below any of them it is a
    disagreement (``None``: that measure is not checked). NSD is measured at ``nsd_tolerance_mm``."""

    dice_min: float | None = None
    hd95_max_mm: float | None = None
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    nsd_min: float | None = None

    def failures(self, dice: float, hd95_mm: float | None, nsd: float) -> list[str]:
        """One short phrase per threshold the measured values miss (HD95 ``None``: one read empty, a miss)."""
        out = []
        if self.dice_min is not None and dice < self.dice_min:
            out.append(f"Dice {dice:.3f} < {self.dice_min:g}")
        if self.hd95_max_mm is not None and (hd95_mm is None or hd95_mm > self.hd95_max_mm):
            out.append(f"HD95 {'undefined' if hd95_mm is None else f'{hd95_mm:.2f} mm'} > {self.hd95_max_mm:g} mm")
        if self.nsd_min is not None and nsd < self.nsd_min:
            out.append(f"NSD {nsd:.3f} < {self.nsd_min:g}")
        return out


@dataclass(frozen=True)
class ReviewPolicy:
    """How a case with all its reads in is reviewed.

    ``consensus`` is the method the server builds a consensus with (``none``: no consensus); ``agreement`` the
    thresholds per segment name; ``adjudication`` ``always`` (every case waits for a reviewer's decision) or
    ``on_disagreement`` (only cases below a threshold do); ``signatures`` the meanings a case needs before it counts
    as final. ``senior_share`` and ``gold_standard_cases`` are the older keys: which share of cases a senior reviews,
    and which cases have a known answer.
    """

    senior_share: float = 0.0
    gold_standard_cases: tuple[str, ...] = ()
    consensus: str = "staple"
    agreement: dict[str, AgreementThreshold] = field(default_factory=dict)
    adjudication: str = "always"
    signatures: tuple[str, ...] = ()

    def threshold(self, segment: str) -> AgreementThreshold:
        """The thresholds of a segment (none checked, NSD at the default tolerance, when the guideline sets none)."""
        return self.agreement.get(segment, AgreementThreshold())


@dataclass(frozen=True)
class Guideline:
    """A validated guideline; ``sha256`` is taken over the file's bytes so results pin the exact text followed.

    ``instructions`` is Markdown; ``reference_images`` are resolved next to the guideline file when it was loaded
    from one. ``tools`` are the Segment Editor effects the reader may use (all when the file names none);
    ``confidence`` is ``required`` or ``optional``. Each segment's ``qa_rules`` are what :mod:`medannot.guideline.qa`
    checks.
    """

    id: str
    version: str
    title: str
    segments: tuple[SegmentSpec, ...]
    sha256: str
    modality: str | None = None
    readers_per_case: int = 1
    instructions: str = ""
    reference_images: tuple[Path, ...] = ()
    tools: tuple[str, ...] = SEGMENT_EDITOR_TOOLS
    checklist: tuple[ChecklistItem, ...] = ()
    confidence: str = "optional"
    review: ReviewPolicy = ReviewPolicy()
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


def _schema_message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, reworded where it would leave a guideline author guessing."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and path and path[-1] == "rules":
        unknown = sorted(set(error.instance) - set(RULE_KINDS))
        return f"unknown rule kind {', '.join(map(repr, unknown))}; rule kinds are: {', '.join(RULE_KINDS)}"
    if error.validator == "enum" and len(path) >= 2 and path[0] == "tools":
        return (f"{error.instance!r} is not a Segment Editor effect MedAnnot knows; "
                f"use one of: {', '.join(SEGMENT_EDITOR_TOOLS)}")
    return error.message


def _validate_schema(doc: dict[str, Any], origin: str) -> None:
    import jsonschema  # here, not at the top: a guideline that arrives already loaded (pickled) needs no validator

    validator = jsonschema.Draft202012Validator(guideline_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise GuidelineError(f"{origin}: {_key_path(first)}: {_schema_message(first)}{more}")


def _check_unique(values: list[Any], where: str, what: str, origin: str) -> None:
    seen: dict[object, int] = {}
    for index, value in enumerate(values):
        key = value.lower() if isinstance(value, str) else value
        if key in seen:
            raise GuidelineError(f"{origin}: {where}[{index}].{what}: {value!r} is already used by "
                                 f"{where}[{seen[key]}]; each needs a unique {what}")
        seen[key] = index


def _segments(doc: dict[str, Any], origin: str) -> tuple[SegmentSpec, ...]:
    items = doc["segments"]
    for attr in ("label", "name"):
        _check_unique([item[attr] for item in items], "segments", attr, origin)
    names = {str(item["name"]).lower(): str(item["name"]) for item in items}
    specs = []
    for index, item in enumerate(items):
        where = f"{origin}: segments[{index}].rules"

        def resolve(name: str, key: str, own: str = str(item["name"]), where: str = where) -> str:
            canonical = names.get(name.lower())
            if canonical is None:
                raise GuidelineError(f"{where}.{key}: {name!r} is not a segment of this guideline; "
                                     f"it defines: {', '.join(names.values())}")
            if canonical == own:
                raise GuidelineError(f"{where}.{key}: a rule of segment {own!r} cannot name the segment itself")
            return canonical

        raw_rules = dict(item.get("rules") or {})
        specs.append(SegmentSpec(
            label=int(item["label"]),
            name=str(item["name"]),
            category=CodedConcept.from_dict(item["category"]),
            type=CodedConcept.from_dict(item["type"]),
            color=str(item.get("color", DEFAULT_COLOR)).lower(),
            required=bool(item.get("required", True)),
            rules=raw_rules,
            qa_rules=parse_rules(raw_rules, where, resolve),
        ))
    return tuple(specs)


def _instructions(doc: dict[str, Any], origin: str, path: Path | None,
                  require_images: bool = True) -> tuple[str, tuple[Path, ...]]:
    value = doc.get("instructions", "")
    if isinstance(value, str):
        return value, ()
    images = []
    for index, text in enumerate(value.get("reference_images", [])):
        relative = Path(text)
        where = f"{origin}: instructions.reference_images[{index}]"
        if relative.is_absolute():
            raise GuidelineError(f"{where}: {text!r} must be a path relative to the guideline file")
        if path is None:
            images.append(relative)
            continue
        resolved = path.parent / relative
        if not resolved.is_file() and not require_images:
            logger.warning("%s: %r is not next to this copy of the guideline; it is not shown", where, text)
            images.append(relative)
            continue
        if not resolved.is_file():
            raise GuidelineError(f"{where}: {text!r} does not exist (looked for {resolved}); "
                                 "reference images are found relative to the guideline file")
        images.append(resolved)
    return str(value["text"]), tuple(images)


def _checklist(doc: dict[str, Any], origin: str) -> tuple[ChecklistItem, ...]:
    items = doc.get("checklist") or []
    _check_unique([item["id"] for item in items], "checklist", "id", origin)
    checklist = []
    for index, item in enumerate(items):
        where = f"{origin}: checklist[{index}]"
        choices = tuple(str(c) for c in item.get("choices", ()))
        if item["type"] == "choice" and not choices:
            raise GuidelineError(f"{where}.choices: a 'choice' question needs a list of at least 2 choices")
        if item["type"] == "yes_no" and choices:
            raise GuidelineError(f"{where}.choices: a 'yes_no' question has no choices; use type 'choice'")
        checklist.append(ChecklistItem(id=str(item["id"]), question=str(item["question"]), type=str(item["type"]),
                                       choices=choices, required=bool(item.get("required", True))))
    return tuple(checklist)


def _review(review: dict[str, Any], segments: tuple[SegmentSpec, ...], origin: str) -> ReviewPolicy:
    names = {s.name.lower(): s.name for s in segments}
    agreement = {}
    for key, values in (review.get("agreement") or {}).items():
        canonical = names.get(str(key).lower())
        if canonical is None:
            raise GuidelineError(f"{origin}: review.agreement.{key}: {key!r} is not a segment of this guideline; "
                                 f"it defines: {', '.join(names.values())}")
        if canonical in agreement:
            raise GuidelineError(f"{origin}: review.agreement.{key}: segment {canonical!r} is given twice; "
                                 "give each segment's thresholds once")
        values = values or {}
        agreement[canonical] = AgreementThreshold(
            dice_min=values.get("dice_min"), hd95_max_mm=values.get("hd95_max_mm"),
            nsd_tolerance_mm=float(values.get("nsd_tolerance_mm", DEFAULT_NSD_TOLERANCE_MM)),
            nsd_min=values.get("nsd_min"))
    return ReviewPolicy(senior_share=float(review.get("senior_share", 0.0)),
                        gold_standard_cases=tuple(str(c) for c in review.get("gold_standard_cases", ())),
                        consensus=str(review.get("consensus", "staple")), agreement=agreement,
                        adjudication=str(review.get("adjudication", "always")),
                        signatures=tuple(str(m) for m in review.get("signatures", ())))


def parse_guideline(data: bytes, origin: str = "<guideline>", path: Path | None = None,
                    require_reference_images: bool = True) -> Guideline:
    """Validate guideline YAML bytes and build a :class:`Guideline`.

    Parameters
    ----------
    data
        The file's bytes (the sha256 is taken over exactly these).
    origin
        Name used in error messages, usually the file path.
    path
        The file the bytes came from, if any; reference images are then checked to exist next to it.

    Raises
    ------
    GuidelineError
        Naming the file and key path of the first problem found.
    """
    import yaml

    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise GuidelineError(f"{origin}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise GuidelineError(f"{origin}: a guideline must be a YAML mapping with id, version, title and segments")
    _validate_schema(doc, origin)
    segments = _segments(doc, origin)
    instructions, images = _instructions(doc, origin, path, require_reference_images)
    review = doc.get("review") or {}
    return Guideline(
        id=str(doc["id"]),
        version=str(doc["version"]),
        title=str(doc["title"]),
        segments=segments,
        sha256=hashlib.sha256(data).hexdigest(),
        modality=doc.get("modality"),
        readers_per_case=int(doc.get("readers_per_case", 1)),
        instructions=instructions,
        reference_images=images,
        tools=tuple(doc.get("tools", SEGMENT_EDITOR_TOOLS)),
        checklist=_checklist(doc, origin),
        confidence=str(doc.get("confidence", "optional")),
        review=_review(review, segments, origin),
        source_path=path,
        raw=doc,
    )


def load_guideline(path: str | Path, require_reference_images: bool = True) -> Guideline:
    """Read and validate a guideline YAML file.

    ``require_reference_images=False`` is for copies of a guideline made to be followed, not edited (the worklist's
    download, an export): a missing reference image is then logged, not an error.

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
    return parse_guideline(data, origin=str(path), path=path, require_reference_images=require_reference_images)
