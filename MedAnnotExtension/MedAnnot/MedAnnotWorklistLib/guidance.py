"""The guideline's part in a case: allowed Segment Editor effects, instructions, QA findings placed in the slice
views, and what still keeps a case from being submitted (QA errors, checklist, confidence ratings).

Needs no Qt: the module's widget shows what these functions return; scripts and tests call them directly.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import numpy as np
import slicer

import MedAnnotLib
from medannot.errors import MedAnnotError, ProvenanceError

if TYPE_CHECKING:
    from medannot.guideline import Guideline
    from medannot.guideline.qa import Finding

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class LocatedFinding:
    """A QA finding with the place to show it: the slice (or frame), the voxel and the point in Slicer's RAS.

    ``voxel`` is the numpy index (k, j, i) of the reference volume, that is IJK (i, j, k) in Slicer; ``pointLps``
    is the core's point in DICOM patient coordinates and ``pointRas`` the same point where the slice views jump.
    All location fields are ``None`` for a finding without a place (an empty required segment).
    """

    rule: str
    severity: str
    segment: str
    message: str
    detail: str = ""
    axis: str | None = None
    index: int | None = None
    voxel: tuple[int, int, int] | None = None
    pointLps: tuple[float, float, float] | None = None
    pointRas: tuple[float, float, float] | None = None

    @classmethod
    def fromCoreFinding(cls, finding: Finding) -> LocatedFinding:
        location = finding.location
        pointLps = pointRas = None
        if location is not None and location.point_mm is not None:
            pointLps = tuple(float(v) for v in location.point_mm)
            pointRas = tuple(float(v) for v in np.asarray(pointLps) * _LPS_TO_RAS)
        return cls(rule=finding.rule, severity=finding.severity, segment=finding.segment, message=finding.message,
                   detail=finding.detail, axis=location.axis if location else None,
                   index=location.index if location else None, voxel=location.voxel if location else None,
                   pointLps=pointLps, pointRas=pointRas)

    @property
    def isError(self) -> bool:
        """An error blocks the submit; a warning only informs."""
        return self.severity == "error"

    @property
    def where(self) -> str:
        """``slice 3`` or ``frame 12``; empty when the finding has no place."""
        return f"{self.axis} {self.index}" if self.axis is not None else ""

    def __str__(self) -> str:
        return f"{self.segment}: {self.message}" + (f" ({self.where})" if self.where else "")


@dataclass(frozen=True)
class CaseCheck:
    """The outcome of checking a segmentation against its guideline.

    ``drawnSegments`` are the guideline segments holding voxels (the ones that get exported and rated);
    ``notes`` say what the QA could not check.
    """

    guideline: str
    findings: tuple[LocatedFinding, ...]
    drawnSegments: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def errors(self) -> list[LocatedFinding]:
        return [finding for finding in self.findings if finding.isError]

    @property
    def warnings(self) -> list[LocatedFinding]:
        return [finding for finding in self.findings if not finding.isError]

    @property
    def passed(self) -> bool:
        return not self.errors


class CaseNotReadyError(MedAnnotError):
    """A submit was refused: ``problems`` lists each thing to fix; ``check`` is the QA run it was based on."""

    def __init__(self, message: str, problems: list[str], check: CaseCheck | None = None) -> None:
        super().__init__(message)
        self.problems = problems
        self.check = check


def allowedEffectNames(guideline: Guideline) -> list[str]:
    """The Segment Editor effects the reader may use, in the guideline's order (all of them when it names none).

    The names are Slicer's effect names, ready for ``qMRMLSegmentEditorWidget.setEffectNameOrder``.
    """
    return list(guideline.tools)


def instructionsMarkdown(guideline: Guideline) -> str:
    """The guideline's instructions as Markdown for the reader, with its reference images as links to their files."""
    lines = [f"**{guideline.title}** ({guideline.id} {guideline.version})", ""]
    lines.append(guideline.instructions.strip() or "_This guideline has no written instructions._")
    if guideline.reference_images:
        lines += ["", "#### Reference images", ""]
        lines += [f"- [{path.name}]({path.resolve().as_uri()})" for path in guideline.reference_images]
    return "\n".join(lines) + "\n"


def instructionLinkToOpen(link: str, guideline: Guideline) -> str | None:
    """What a click on a link of the instructions opens with the desktop (``qt.QDesktopServices.openUrl``).

    A ``file:`` link opens only when it is one of the guideline's reference images (answered as that file's
    ``file:`` URI); a web link (http, https, mailto) opens as it is; anything else (another local file, a
    script, a relative link) returns None and opens nothing. The instructions browser must not follow links
    itself: QTextBrowser would replace the instructions by the image, or by nothing.
    """
    parts = urlsplit(link.strip())
    scheme = parts.scheme.lower()
    if scheme in ("http", "https", "mailto"):
        return link.strip()
    if scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    clicked = Path(url2pathname(unquote(parts.path))).resolve()
    for image in guideline.reference_images:
        if Path(image).resolve() == clicked:
            return clicked.as_uri()
    return None


def checkSegmentation(segmentationNode, referenceVolumeNode, guideline: Guideline,
                      isCine: bool = False) -> CaseCheck:
    """Run the guideline's QA rules on a segmentation, on the reference volume's grid.

    Parameters
    ----------
    segmentationNode : vtkMRMLSegmentationNode
        Segments named after the guideline's segments.
    referenceVolumeNode : vtkMRMLScalarVolumeNode
        The volume drawn on; its grid and LPS geometry are the QA's.
    guideline : Guideline
        The rules to check.
    isCine : bool
        Axis 0 of the volume is time: components, areas and containment are checked frame by frame.

    Segments that overlap are ``overlap`` error findings located on the shared voxels (the result is exported
    as one label per voxel), so Check can jump there.

    Raises
    ------
    medannot.errors.SegmentContentError
        If a segment is not in the guideline (the message says how to fix it).
    """
    from medannot.guideline.qa import check_masks

    masks = MedAnnotLib.segmentMasksFromSegmentationNode(segmentationNode, referenceVolumeNode, guideline)
    geometry = MedAnnotLib.geometryFromVolumeNode(referenceVolumeNode)
    if not masks:
        shape = tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions()))
        masks = {guideline.segments[0].name: np.zeros(shape, dtype=bool)}
    report = check_masks(masks, geometry, guideline, is_cine=isCine, one_label_per_voxel=True)
    drawn = tuple(spec.name for spec in guideline.segments if spec.name in masks and masks[spec.name].any())
    return _caseCheck(report, drawn, segmentationNode.GetName())


def checkLabelMap(labels: np.ndarray, geometry, guideline: Guideline, isCine: bool = False,
                  name: str = "label map") -> CaseCheck:
    """Run the guideline's QA rules on a label map with the guideline's label values (see
    :func:`checkSegmentation`); ``geometry`` may be None (then areas and volumes are in voxels)."""
    from medannot.guideline.qa import check_labels

    report = check_labels(labels, geometry, guideline, is_cine=isCine)
    present = set(np.unique(labels).tolist())
    drawn = tuple(spec.name for spec in guideline.segments if spec.label in present)
    return _caseCheck(report, drawn, name)


def _caseCheck(report, drawn: tuple[str, ...], name: str) -> CaseCheck:
    findings = tuple(LocatedFinding.fromCoreFinding(finding) for finding in report.findings)
    logger.info("Checked '%s': %d error(s), %d warning(s)", name, sum(f.isError for f in findings),
                sum(not f.isError for f in findings))
    return CaseCheck(guideline=report.guideline, findings=findings, drawnSegments=drawn, notes=report.notes)


def jumpSlicesToFinding(finding: LocatedFinding, scene=None) -> bool:
    """Centre every slice view on the finding's point (as Markups' "jump to" does); False when it has no point."""
    if finding.pointRas is None:
        return False
    scene = scene if scene is not None else slicer.mrmlScene
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *finding.pointRas, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return True


def checklistProblems(guideline: Guideline, answers: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Check the reader's checklist answers: every required question answered, every answer one the item takes.

    Parameters
    ----------
    answers
        By checklist item id: ``yes``/``no`` (or a bool) for a yes/no question, one of the choices otherwise.
        An empty answer counts as unanswered.

    Returns
    -------
    tuple
        ``(problems, normalised)``: one sentence per problem, and the answers as the SR records them.
    """
    from medannot.dicomseg.export import checklist_answers

    problems: list[str] = []
    normalised: dict[str, str] = {}
    given = {key: value for key, value in answers.items() if value is not None and str(value).strip() != ""}
    for item in guideline.checklist:
        if item.id not in given:
            if item.required:
                problems.append(f"Checklist: answer \"{item.question}\" ({item.id}).")
            continue
        try:
            normalised.update(checklist_answers(guideline, {item.id: given[item.id]}))
        except ProvenanceError as error:
            problems.append(_sentence(str(error)))
    known = {item.id for item in guideline.checklist}
    for key in sorted(set(given) - known):
        problems.append(f"Checklist item {key!r} is not in guideline {guideline.id} {guideline.version}.")
    return problems, normalised


def confidenceProblems(guideline: Guideline, confidences: Mapping[str, Any], drawnSegments) -> list[str]:
    """Check the per-segment confidence ratings: each 0-100, and one for every drawn segment when the guideline
    requires them (segments left empty are not exported, so they are not rated)."""
    problems = []
    ratings = {str(name).strip().lower(): value for name, value in confidences.items()}
    for name, value in confidences.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 100:
            problems.append(f"Confidence: the rating of {name} must be a number from 0 to 100, not {value!r}.")
    if guideline.confidence == "required":
        for name in drawnSegments:
            if name.lower() not in ratings:
                problems.append(f"Confidence: rate {name} (0-100 %); guideline {guideline.id} requires a rating "
                                "for every segment drawn.")
    return problems


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
