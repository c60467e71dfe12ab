"""Consensus of several readers' masks: STAPLE or majority vote (SimpleITK), per segment.

Both run inside the bounding box of the union of the readers' masks of a segment, grown by
``STAPLE_MARGIN_VOXELS`` on each side (clamped to the grid); outside it every reader says background, and so does
the consensus. The box matters for STAPLE: its specificities count the background voxels inside the box only (on a
whole CT every reader's specificity would read 0.9999), and its prior is the foreground share of the box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from medannot.review.agreement import PreparedMask

STAPLE_MARGIN_VOXELS = 5
METHODS = ("staple", "majority")


@dataclass
class SegmentConsensus:
    """The consensus of one segment: a mask on the readers' grid and, for STAPLE, each reader's estimated
    sensitivity and specificity (by reader name, within the box described in the module docstring)."""

    segment: str
    mask: PreparedMask
    box: tuple[slice, ...] | None
    sensitivity: dict[str, float] = field(default_factory=dict)
    specificity: dict[str, float] = field(default_factory=dict)


def _region(masks: Sequence[PreparedMask]) -> tuple[slice, ...] | None:
    boxes = [m.box for m in masks if m.box is not None]
    if not boxes:
        return None
    shape = masks[0].shape
    return tuple(slice(max(0, min(b[axis].start for b in boxes) - STAPLE_MARGIN_VOXELS),
                       min(shape[axis], max(b[axis].stop for b in boxes) + STAPLE_MARGIN_VOXELS))
                 for axis in range(len(shape)))


def _in_region(mask: PreparedMask, region: tuple[slice, ...]) -> np.ndarray:
    out = np.zeros(tuple(s.stop - s.start for s in region), dtype=np.uint8)
    if mask.box is not None:
        out[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(mask.box, region))] = mask.crop
    return out


def _full(crop: np.ndarray, region: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    full[region] = crop
    return full


def segment_consensus(segment: str, masks: Mapping[str, PreparedMask], method: str = "staple") -> SegmentConsensus:
    """Consensus of the readers' ``masks`` (by reader name) of one segment, all on one grid.

    ``staple``: SimpleITK's STAPLEImageFilter; a voxel is in the consensus when its posterior probability is at
    least 0.5. ``majority``: SimpleITK's LabelVotingImageFilter; a voxel is in when more than half of the readers
    have it (a tie, possible with an even number of readers, is background).
    """
    if method not in METHODS:
        raise ValueError(f"consensus method {method!r} is not one of {', '.join(METHODS)}")
    names = list(masks)
    if not names:
        raise ValueError(f"no reader masks for segment {segment!r}")
    reads = [masks[n] for n in names]
    first = reads[0]
    region = _region(reads)
    if region is None:  # nobody drew it: empty, and STAPLE has nothing to estimate
        return SegmentConsensus(segment, PreparedMask.empty_like(first), None)
    images = [sitk.GetImageFromArray(_in_region(m, region)) for m in reads]
    spacing = first.spacing_zyx[::-1]
    for image in images:
        image.SetSpacing(spacing)
    sensitivity: dict[str, float] = {}
    specificity: dict[str, float] = {}
    if method == "staple":
        staple = sitk.STAPLEImageFilter()
        staple.SetForegroundValue(1.0)
        probability = staple.Execute(images)
        crop = sitk.GetArrayFromImage(probability) >= 0.5
        sensitivity = {n: float(v) for n, v in zip(names, staple.GetSensitivity())}
        specificity = {n: float(v) for n, v in zip(names, staple.GetSpecificity())}
    else:
        voting = sitk.LabelVotingImageFilter()
        voting.SetLabelForUndecidedPixels(0)
        crop = sitk.GetArrayFromImage(voting.Execute(images)) == 1
    mask = PreparedMask(_full(crop, region, first.shape), first.spacing_zyx, first.frames)
    return SegmentConsensus(segment, mask, region, sensitivity, specificity)


def consensus_label_map(consensus: Sequence[SegmentConsensus], label_of: Mapping[str, int],
                        shape: tuple[int, ...]) -> tuple[np.ndarray, dict[tuple[str, str], int]]:
    """One label map of the segments' consensus masks (``label_of`` gives each segment's label value).

    A voxel in the consensus of two segments keeps the later segment's label, as a SEG read back does; the
    second value counts those voxels per (earlier, later) segment pair.
    """
    dtype = np.uint8 if max(label_of.values(), default=0) < 256 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    overlaps: dict[tuple[str, str], int] = {}
    for index, item in enumerate(consensus):
        if item.mask.box is None:
            continue
        view = labels[item.mask.box]
        for earlier in consensus[:index]:
            clash = int(np.count_nonzero((view == label_of[earlier.segment]) & item.mask.crop))
            if clash:
                overlaps[(earlier.segment, item.segment)] = clash
        view[item.mask.crop] = label_of[item.segment]
    return labels, overlaps
