"""The de-identification gate: DICOM PS3.15 Annex E Basic Profile with a keyed UID map, and the check in front of
every file that leaves the lab (``medannot deid check|apply``, the submission package)."""

from medannot.deid.engine import DeidOptions, Finding, deidentify, find_phi, remap_uid
from medannot.deid.files import apply_tree, check_file, check_paths, load_key
from medannot.deid.profile import DeidError

__all__ = ["DeidError", "DeidOptions", "Finding", "apply_tree", "check_file", "check_paths", "deidentify",
           "find_phi", "load_key", "remap_uid"]
