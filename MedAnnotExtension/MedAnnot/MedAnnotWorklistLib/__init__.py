"""Parts of the MedAnnot module that need no Qt: the worklist and review logic, case loading and the guideline's guidance,
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
from MedAnnotWorklistLib.review import AgreementRow, MedAnnotReviewLogic, ReviewSession

__all__ = [
    "HEARTBEAT_INTERVAL_SECONDS",
    "AgreementRow",
    "CachedInstances",
    "CaseCheck",
    "CaseNotReadyError",
    "CaseSession",
    "CaseSubmitResult",
    "LoadedCase",
    "LocatedFinding",
    "MedAnnotLogic",
    "MedAnnotReviewLogic",
    "OutboxStatus",
    "ProjectProgress",
    "ReviewSession",
    "allowedEffectNames",
    "caseWithoutServer",
    "isCineSource",
    "loadCase",
    "loadCaseVolume",
    "voxelsOfSource",
]
