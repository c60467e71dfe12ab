"""Parts of the MedAnnotCine module that need no Qt: the keyframe logic and the sequence glue, importable by scripts,
modules and tests."""

from MedAnnotCineLib.logic import (
    FRAME_EMPTY,
    FRAME_INTERPOLATED,
    FRAME_KEY,
    CineFrames,
    CineSession,
    MedAnnotCineLogic,
    MedAnnotCinePanelLogic,
    UnmarkedEditsError,
)

__all__ = [
    "FRAME_EMPTY",
    "FRAME_INTERPOLATED",
    "FRAME_KEY",
    "CineFrames",
    "CineSession",
    "MedAnnotCineLogic",
    "MedAnnotCinePanelLogic",
    "UnmarkedEditsError",
]
