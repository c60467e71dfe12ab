"""Parts of the MedAnnot module that need no Qt: the worklist logic, case loading and the guideline's guidance,
importable by scripts, modules and tests."""

from MedAnnotWorklistLib.caseimages import (
    CachedInstances,
    LoadedCase,
    isCineSource,
    loadCase,
    loadCaseVolume,
    voxelsOfSource,
)
from MedAnnotWorklistLib.guidance import CaseCheck, CaseNotReadyError, LocatedFinding, allowedEffectNames
from MedAnnotWorklistLib.logic import (
    HEARTBEAT_INTERVAL_SECONDS,
    CaseSession,
    CaseSubmitResult,
    MedAnnotLogic,
    OutboxStatus,
    ProjectProgress,
    caseWithoutServer,
)

__all__ = [
    "HEARTBEAT_INTERVAL_SECONDS",
    "CachedInstances",
    "CaseCheck",
    "CaseNotReadyError",
    "CaseSession",
    "CaseSubmitResult",
    "LoadedCase",
    "LocatedFinding",
    "MedAnnotLogic",
    "OutboxStatus",
    "ProjectProgress",
    "allowedEffectNames",
    "caseWithoutServer",
    "isCineSource",
    "loadCase",
    "loadCaseVolume",
    "voxelsOfSource",
]
