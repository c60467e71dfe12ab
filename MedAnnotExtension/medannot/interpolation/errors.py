"""The one kind of user-facing failure the interpolation package adds to :mod:`medannot.errors`."""

from __future__ import annotations

from medannot.errors import MedAnnotError


class InterpolationError(MedAnnotError):
    """Keyframes, frame times, method or annotations do not allow the requested interpolation."""
