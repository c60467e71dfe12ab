"""Multi-reader review, pure core: agreement metrics (Dice, HD95, NSD, volumes) and consensus (STAPLE, majority)
over label arrays and their grid's spacing. Never imports slicer, qt or vtk."""

from medannot.review.agreement import (
    HD95_DEFINITION,
    PairAgreement,
    PreparedMask,
    SegmentAgreement,
    SegmentSurfaces,
    agreement_table,
    compare,
    segment_agreement,
)
from medannot.review.consensus import SegmentConsensus, consensus_label_map, segment_consensus

__all__ = [
    "HD95_DEFINITION",
    "PairAgreement",
    "PreparedMask",
    "SegmentAgreement",
    "SegmentConsensus",
    "SegmentSurfaces",
    "agreement_table",
    "compare",
    "consensus_label_map",
    "segment_agreement",
    "segment_consensus",
]
