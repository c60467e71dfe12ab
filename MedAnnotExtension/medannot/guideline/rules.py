"""The QA rule kinds a guideline can put on a segment, built from the schema-validated ``rules`` mapping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from medannot.errors import GuidelineError

RULE_KINDS = ("components", "volume_ml", "area_mm2", "inside", "no_overlap", "min_slices")
SEVERITIES = ("error", "warning")


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A check on one segment; a failed ``error`` rule blocks a submission, a ``warning`` only informs."""

    kind: ClassVar[str] = ""
    severity: str = "error"
    message: str | None = None

    @property
    def rule_id(self) -> str:
        """How findings name the rule, e.g. ``components`` or ``inside:Liver``."""
        return self.kind

    def describe(self) -> str:
        """The rule in a few words, e.g. ``components at most 1`` or ``inside Liver (2 mm tolerance), warning``."""
        text = self._what()
        return text if self.severity == "error" else f"{text}, {self.severity}"

    def _what(self) -> str:
        return self.kind


@dataclass(frozen=True, kw_only=True)
class RangeRule(Rule):
    """A rule with an inclusive ``min`` and/or ``max``."""

    min: float | None = None
    max: float | None = None

    def accepts(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe_limits(self, unit: str = "") -> str:
        """The allowed range in words, e.g. ``at most 1`` or ``between 5 and 4000 ml``."""
        suffix = f" {unit}" if unit else ""
        if self.min is not None and self.max is not None:
            return f"between {_num(self.min)} and {_num(self.max)}{suffix}"
        if self.max is not None:
            return f"at most {_num(self.max)}{suffix}"
        return f"at least {_num(self.min or 0)}{suffix}"


@dataclass(frozen=True, kw_only=True)
class ComponentsRule(RangeRule):
    """Number of connected components (3D face connectivity; per frame in 2D for a cine)."""

    kind: ClassVar[str] = "components"

    def _what(self) -> str:
        return f"components {self.describe_limits()}"


@dataclass(frozen=True, kw_only=True)
class VolumeRule(RangeRule):
    """Segment volume in millilitres (3D volumes only)."""

    kind: ClassVar[str] = "volume_ml"

    def _what(self) -> str:
        return f"volume {self.describe_limits('ml')}"


@dataclass(frozen=True, kw_only=True)
class AreaRule(RangeRule):
    """Segment area in square millimetres on each frame (or slice) where it is present."""

    kind: ClassVar[str] = "area_mm2"

    def _what(self) -> str:
        return f"area per frame {self.describe_limits('mm²')}"


@dataclass(frozen=True, kw_only=True)
class InsideRule(Rule):
    """Every voxel of the segment lies in ``segment`` (its outline, holes filled), or within ``tolerance_mm`` of it."""

    kind: ClassVar[str] = "inside"
    segment: str
    tolerance_mm: float = 0.0

    @property
    def rule_id(self) -> str:
        return f"inside:{self.segment}"

    def _what(self) -> str:
        return f"inside {self.segment}" + (f" ({_num(self.tolerance_mm)} mm tolerance)" if self.tolerance_mm else "")


@dataclass(frozen=True, kw_only=True)
class NoOverlapRule(Rule):
    """The segment shares no voxel with any of ``segments`` (always true for a label map)."""

    kind: ClassVar[str] = "no_overlap"
    segments: tuple[str, ...]

    def _what(self) -> str:
        return f"no overlap with {', '.join(self.segments)}"


@dataclass(frozen=True, kw_only=True)
class MinSlicesRule(Rule):
    """The segment is present on at least ``count`` slices (volume) or frames (cine)."""

    kind: ClassVar[str] = "min_slices"
    count: int

    def _what(self) -> str:
        return f"on at least {self.count} slices or frames"


def _num(value: float) -> str:
    return f"{value:g}"


def parse_rules(raw: Mapping[str, Any], where: str, resolve_segment: Callable[[str, str], str]) -> tuple[Rule, ...]:
    """Build the rules of one segment from its schema-validated ``rules`` mapping.

    Parameters
    ----------
    raw
        The segment's ``rules`` mapping, already valid against the JSON Schema.
    where
        The file and key path of that mapping, e.g. ``g.yaml: segments[1].rules``, for error messages.
    resolve_segment
        Maps a segment name written in a rule to the guideline's spelling of it, given the rule's key path;
        raises :class:`GuidelineError` for a name the guideline does not define.

    Raises
    ------
    GuidelineError
        For a range whose minimum exceeds its maximum, a range with neither, or an unknown segment.
    """
    rules: list[Rule] = []
    for kind, value in raw.items():
        options = value if isinstance(value, Mapping) else {}
        message = options.get("message")
        common: dict[str, Any] = {"severity": str(options.get("severity", "error")),
                                  "message": None if message is None else str(message)}
        if kind in ("components", "volume_ml", "area_mm2"):
            low, high = value.get("min"), value.get("max")
            if low is None and high is None:
                raise GuidelineError(f"{where}.{kind}: give min, max or both")
            if low is not None and high is not None and low > high:
                raise GuidelineError(f"{where}.{kind}: min {_num(low)} is greater than max {_num(high)}")
            cls = {"components": ComponentsRule, "volume_ml": VolumeRule, "area_mm2": AreaRule}[kind]
            rules.append(cls(min=low, max=high, **common))
        elif kind == "inside":
            name, key = (value, kind) if isinstance(value, str) else (value["segment"], f"{kind}.segment")
            rules.append(InsideRule(segment=resolve_segment(name, key),
                                    tolerance_mm=float(options.get("tolerance_mm", 0.0)), **common))
        elif kind == "no_overlap":
            names, key = (value, kind) if isinstance(value, list) else (value["segments"], f"{kind}.segments")
            rules.append(NoOverlapRule(
                segments=tuple(resolve_segment(n, f"{key}[{i}]") for i, n in enumerate(names)), **common))
        elif kind == "min_slices":
            count = value["count"] if isinstance(value, Mapping) else value
            rules.append(MinSlicesRule(count=int(count), **common))
        else:  # the schema rejects unknown kinds first; this guards a schema edited out of step with the code
            raise GuidelineError(f"{where}: unknown rule kind {kind!r}; rule kinds are: {', '.join(RULE_KINDS)}")
    return tuple(rules)
