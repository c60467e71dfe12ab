"""Image loading: DICOM series and multi-frame sources, label maps, and their geometry.

The names below are imported from their modules when first used, so that importing one module (a label map reader
without pydicom, a DICOM loader without SimpleITK) does not import all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medannot._lazy import lazy_names

if TYPE_CHECKING:
    from medannot.imaging.geometry import Geometry
    from medannot.imaging.labelmap import read_label_map, read_probability_map, write_label_map
    from medannot.imaging.pixels import grey_frames, modality_volume, rgb_to_grey
    from medannot.imaging.source import SourceImage, load_source

_MODULE_OF = {
    "Geometry": "geometry",
    "SourceImage": "source",
    "grey_frames": "pixels",
    "load_source": "source",
    "modality_volume": "pixels",
    "read_label_map": "labelmap",
    "read_probability_map": "labelmap",
    "rgb_to_grey": "pixels",
    "write_label_map": "labelmap",
}

__all__ = sorted(_MODULE_OF)


__getattr__, __dir__ = lazy_names(__name__, _MODULE_OF, globals())
