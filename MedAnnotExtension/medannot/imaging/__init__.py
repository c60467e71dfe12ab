"""Image loading: DICOM series and multi-frame sources, label maps, and their geometry."""

from medannot.imaging.geometry import Geometry
from medannot.imaging.labelmap import read_label_map, read_probability_map, write_label_map
from medannot.imaging.source import SourceImage, load_source

__all__ = [
    "Geometry",
    "SourceImage",
    "load_source",
    "read_label_map",
    "read_probability_map",
    "write_label_map",
]
