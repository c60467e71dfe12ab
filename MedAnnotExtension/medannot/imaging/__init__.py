"""Image loading: DICOM series and multi-frame sources, label maps, and their geometry."""

from medannot.imaging.geometry import Geometry
from medannot.imaging.labelmap import read_label_map, read_probability_map, write_label_map
from medannot.imaging.pixels import grey_frames, modality_volume, rgb_to_grey
from medannot.imaging.source import SourceImage, load_source

__all__ = [
    "Geometry",
    "SourceImage",
    "grey_frames",
    "load_source",
    "modality_volume",
    "read_label_map",
    "read_probability_map",
    "rgb_to_grey",
    "write_label_map",
]
