"""Parts of the MedAnnot module that need no Qt: the worklist logic and case loading, importable by scripts,
modules and tests."""

from MedAnnotWorklistLib.caseimages import CachedInstances, loadCaseVolume, voxelsOfSource
from MedAnnotWorklistLib.logic import (
    HEARTBEAT_INTERVAL_SECONDS,
    CaseSession,
    CaseSubmitResult,
    MedAnnotLogic,
    OutboxStatus,
    ProjectProgress,
)

__all__ = [
    "HEARTBEAT_INTERVAL_SECONDS",
    "CachedInstances",
    "CaseSession",
    "CaseSubmitResult",
    "MedAnnotLogic",
    "OutboxStatus",
    "ProjectProgress",
    "loadCaseVolume",
    "voxelsOfSource",
]
