"""Write the consensus of reader SEGs as one SEG + SR (shared by ``medannot review consensus`` and the server)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medannot.guideline import Guideline
from medannot.imaging.source import SourceImage
from medannot.review.agreement import PreparedMask
from medannot.review.consensus import SegmentConsensus, consensus_label_map, segment_consensus
from medannot.review.reads import Read, segment_names


@dataclass(frozen=True)
class ConsensusExport:
    """The written files (``result`` is the export's result: ``seg_path``, ``sr_path``) and each segment's
    consensus, with STAPLE's sensitivities and specificities by read name."""

    result: Any
    segments: list[SegmentConsensus]


def export_consensus(reads: Sequence[Read], source: SourceImage | None, guideline: Guideline, method: str,
                     output: str | Path, names: Sequence[str] | None = None) -> ConsensusExport:
    """Consensus of ``reads`` (one SEG each, on one grid) per segment, written into ``output`` as SEG + SR:
    SegmentAlgorithmType AUTOMATIC, algorithm STAPLE or majority vote with MedAnnot's version; the SR lists every
    reader SEG with, for STAPLE, each reader's sensitivity and specificity. ``names`` name the reads (default:
    their paths); every segment the reads have must be in ``guideline``."""
    import medannot
    from medannot.dicomseg import ConsensusInput, ReaderInfo, SegmentProvenance, export_segmentation

    names = list(names) if names is not None else [str(r.path) for r in reads]
    results = []
    for segment in segment_names(reads):
        masks = {name: r.masks.get(segment) for name, r in zip(names, reads)}
        template = next(m for m in masks.values() if m is not None)
        filled = {k: (m if m is not None else PreparedMask.empty_like(template)) for k, m in masks.items()}
        results.append(segment_consensus(segment, filled, method))
    label_of = {r.segment: guideline.segment(r.segment).label for r in results}
    labels, _ = consensus_label_map(results, label_of, reads[0].shape)
    algorithm = "STAPLE" if method == "staple" else "majority vote"
    provenance = {r.segment: SegmentProvenance(algorithm_type="AUTOMATIC", algorithm_name=algorithm,
                                               algorithm_version=medannot.__version__)
                  for r in results if not r.mask.is_empty and (labels == label_of[r.segment]).any()}
    inputs = [ConsensusInput(seg_uid=read.seg_uid,
                             sensitivity={r.segment: r.sensitivity[name] for r in results if name in r.sensitivity},
                             specificity={r.segment: r.specificity[name] for r in results if name in r.specificity})
              for read, name in zip(reads, names)]
    reader = ReaderInfo(name="MedAnnot^Consensus", reader_id="consensus", role="Consensus")
    result = export_segmentation(source, labels, reads[0].geometry, guideline, reader, output, segments=provenance,
                                 labels_name=f"{algorithm} consensus of {len(reads)} SEGs", derived_from=inputs)
    return ConsensusExport(result, results)
