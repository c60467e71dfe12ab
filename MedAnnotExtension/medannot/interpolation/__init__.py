"""Keyframe interpolation along time (cine) or slices (volume): label maps, polygons, polylines and points.

Label maps: motion-guided (the keyframes' signed distance maps carried along the cine's optical flow),
shape-based (signed distance blend, no image needed) or morphological contour interpolation (ITK, for
comparison). :class:`Interpolator` keeps results span by span so a keyframe edit recomputes only its neighbours.
"""

from medannot.interpolation.cine import Cine, load_cine
from medannot.interpolation.contours import interpolate_track, match_outlines, resample_by_arc_length
from medannot.interpolation.errors import InterpolationError
from medannot.interpolation.masks import METHODS, Interpolator, interpolate_labels, resolve_method
from medannot.interpolation.motion import FlowField, FlowSettings
from medannot.interpolation.result import InterpolationResult, SegmentFrames

__all__ = [
    "METHODS",
    "Cine",
    "FlowField",
    "FlowSettings",
    "InterpolationError",
    "InterpolationResult",
    "Interpolator",
    "SegmentFrames",
    "interpolate_labels",
    "interpolate_track",
    "load_cine",
    "match_outlines",
    "resample_by_arc_length",
    "resolve_method",
]
