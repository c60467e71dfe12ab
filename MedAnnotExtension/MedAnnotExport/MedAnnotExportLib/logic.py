"""MedAnnotExport logic: write a segmentation node as DICOM-SEG + SR with provenance, without any GUI.

Kept out of MedAnnotExport.py so that it imports without Qt: scripts, other modules and the tests that run on the
slicer-core wheel (real MRML, no Qt) use this very class, which is also the one the module's widget runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import MedAnnotLib
from medannot.errors import GuidelineError, MedAnnotError, SourceImageError

from MedAnnotLib.scriptedmodule import ScriptedLoadableModuleLogic

if TYPE_CHECKING:
    from medannot.dicomseg import ExportResult
    from medannot.guideline import Guideline

logger = logging.getLogger(__name__)

REQUIREMENTS_PATH = MedAnnotLib.REQUIREMENTS_PATH  # the extension's one list, shared by the three modules


class MedAnnotExportLogic(ScriptedLoadableModuleLogic):
    """Export a segmentation drawn on a DICOM volume as DICOM-SEG + companion SR with the reader's provenance.

    The widget calls :meth:`exportFromParameterNode`; scripts can call :meth:`exportSegmentation` directly.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def ensureDependencies(self) -> None:
        """Install the packages the core needs and Slicer lacks (``MedAnnotLib/requirements.txt``) if missing."""
        MedAnnotLib.ensureRequirements(REQUIREMENTS_PATH, requester="MedAnnot Export")

    def loadGuideline(self, guidelinePath) -> Guideline:
        """Read and validate a guideline YAML file.

        Raises
        ------
        medannot.errors.GuidelineError
            If the file is missing or invalid; the message names the file and the problem.
        """
        self.ensureDependencies()
        from medannot.guideline import load_guideline

        if not guidelinePath or not Path(guidelinePath).is_file():
            raise GuidelineError(f"Choose a guideline file (.yaml); '{guidelinePath or ''}' is not a file.")
        return load_guideline(guidelinePath, require_reference_images=False)  # export needs no images

    def segmentNames(self, guidelinePath) -> list[str]:
        """Names of the guideline's segments, in guideline order (one confidence rating each)."""
        return [spec.name for spec in self.loadGuideline(guidelinePath).segments]

    def exportFromParameterNode(self, parameterNode, confidences: dict[str, int] | None = None) -> ExportResult:
        """Export using the inputs held by a ``MedAnnotExportParameterNode`` (or any object with its fields)."""
        return self.exportSegmentation(
            segmentationNode=parameterNode.segmentationNode,
            referenceVolumeNode=parameterNode.referenceVolumeNode,
            guidelinePath=parameterNode.guidelinePath,
            readerName=parameterNode.readerName,
            readerId=parameterNode.readerId,
            readerRole=parameterNode.readerRole,
            institution=parameterNode.institution,
            outputDir=parameterNode.outputDir,
            confidences=confidences,
        )

    def exportSegmentation(self, segmentationNode, referenceVolumeNode, guidelinePath, readerName: str,
                           readerId: str, outputDir, readerRole: str = "Annotator", institution: str = "",
                           confidences: dict[str, int] | None = None, taskId: str | None = None,
                           dicomDatabase=None, checklist: dict[str, str | bool] | None = None,
                           replaces=None) -> ExportResult:
        """Write the segmentation as DICOM-SEG + SR referencing the DICOM series the reference volume shows.

        Parameters
        ----------
        segmentationNode : vtkMRMLSegmentationNode
            Segments named after the guideline's segments.
        referenceVolumeNode : vtkMRMLScalarVolumeNode
            The volume the segmentation was drawn on, loaded from Slicer's DICOM database.
        guidelinePath : str or pathlib.Path
            The guideline YAML file the reader followed.
        readerName, readerId, readerRole, institution : str
            Who drew it: DICOM person name ``Last^First``, lab id, role, institution (may be empty).
        outputDir : str or pathlib.Path
            Folder for the SEG and SR files; created if needed.
        confidences : dict of str to int, optional
            Reader's confidence (0-100) per segment name.
        taskId : str, optional
            Task-server task the result belongs to.
        dicomDatabase : ctkDICOMDatabase, optional
            Defaults to ``slicer.dicomDatabase``.
        checklist : dict of str to str or bool, optional
            The reader's answers to the guideline's per-case checklist by item id, recorded in the SR.
        replaces : str or pathlib.Path, optional
            The SEG this one corrects or was edited from (a reviewer's edit); the new SEG and its SR reference it.

        Returns
        -------
        medannot.dicomseg.ExportResult
            With ``seg_path`` and ``sr_path``.

        Raises
        ------
        ValueError
            If an input is not selected.
        medannot.errors.MedAnnotError
            For any problem a user can fix: unknown or overlapping segments, a volume not loaded from DICOM,
            a transformed volume, invalid reader details or checklist answers, a segmentation that does not fit its
            source.
        """
        if segmentationNode is None:
            raise ValueError("Select the segmentation to export.")
        if referenceVolumeNode is None:
            raise ValueError("Select the volume the segmentation was drawn on.")
        if not outputDir or str(outputDir) in ("", "."):
            raise ValueError("Choose an output folder for the DICOM-SEG and SR files.")
        guideline = self.loadGuideline(guidelinePath)
        reader = self.readerInfo(readerName, readerId, readerRole, institution)
        if MedAnnotLib.hasParentTransform(referenceVolumeNode):
            raise SourceImageError(
                f"Volume '{referenceVolumeNode.GetName()}' is under a transform, so it no longer lies where its DICOM "
                "images are; remove the transform (or export from the untransformed volume)."
            )
        labels = MedAnnotLib.labelMapFromSegmentationNode(segmentationNode, referenceVolumeNode, guideline)
        geometry = MedAnnotLib.geometryFromVolumeNode(referenceVolumeNode)
        segments = self._segmentProvenance(labels, guideline, confidences or {})
        with MedAnnotLib.sourcePathOfVolume(referenceVolumeNode, dicomDatabase) as sourcePath:
            result = self.exportLabels(labels, geometry, sourcePath, guideline, reader, outputDir, segments,
                                       taskId=taskId, checklist=checklist, replaces=replaces)
        logger.info("Exported '%s' to %s and %s", segmentationNode.GetName(), result.seg_path, result.sr_path)
        return result

    @staticmethod
    def readerInfo(readerName: str, readerId: str, readerRole: str = "Annotator", institution: str = ""):
        """Who drew a segmentation, as the export records it (``medannot.dicomseg.ReaderInfo``).

        Raises
        ------
        medannot.errors.ProvenanceError
            If the name or id is missing or not a valid DICOM person name.
        """
        from medannot.dicomseg import ReaderInfo

        return ReaderInfo(name=readerName, reader_id=readerId, role=readerRole or "Annotator",
                          institution=institution or None)

    def exportLabels(self, labels, labelsGeometry, sourcePath, guideline: Guideline, reader, outputDir,
                     segments: dict, taskId: str | None = None, checklist: dict[str, str | bool] | None = None,
                     labelsName: str | None = None, replaces=None) -> ExportResult:
        """Write a label map on its DICOM source as SEG + SR: the step every MedAnnot export ends in (a volume's
        segmentation here, a cine's segmentation sequence in MedAnnotCine).

        Parameters
        ----------
        labels : numpy.ndarray
            Slices (or frames) x rows x cols with the guideline's label values.
        labelsGeometry : medannot.imaging.Geometry or None
            The label map's grid, checked against the source's; None for a source without a patient coordinate
            system (an ultrasound cine), where only the size is checked.
        sourcePath : str or pathlib.Path
            The DICOM series folder or multi-frame file the labels were drawn on.
        guideline : medannot.guideline.Guideline
            The guideline the reader followed.
        reader : medannot.dicomseg.ReaderInfo
            From :meth:`readerInfo`.
        outputDir : str or pathlib.Path
            Folder for the SEG and SR files; created if needed.
        segments : dict
            ``medannot.dicomseg.SegmentProvenance`` by guideline segment name, for the segments that hold voxels.
        taskId, checklist, labelsName
            Task-server task id, checklist answers by item id, and what to call the labels in error messages.
        replaces : str or pathlib.Path, optional
            The SEG this one corrects or was edited from.
        """
        from medannot.dicomseg import export_segmentation
        from medannot.imaging import load_source

        source = load_source(sourcePath)
        outputDir = Path(outputDir)
        outputDir.mkdir(parents=True, exist_ok=True)
        options: dict = {"labels_name": labelsName} if labelsName else {}
        if replaces is not None:
            options["replaces"] = Path(replaces)
        return export_segmentation(source=source, labels=labels, labels_geometry=labelsGeometry,
                                   guideline=guideline, reader=reader, output_dir=outputDir, segments=segments,
                                   task_id=taskId, checklist=checklist, **options)

    @staticmethod
    def _segmentProvenance(labels, guideline: Guideline, confidences: dict[str, int]) -> dict:
        """Provenance for each guideline segment that holds voxels: drawn by hand, with the given confidence.

        Segments the guideline created but the reader left empty get none (an empty optional segment is not
        exported; an empty required one is refused by the core with its own message).
        """
        import numpy as np

        from medannot.dicomseg import SegmentProvenance

        present = {int(v) for v in np.flatnonzero(np.bincount(labels.ravel().astype(np.int64)))}
        ratings = {name.strip().lower(): value for name, value in confidences.items()}
        return {
            spec.name: SegmentProvenance(algorithm_type="MANUAL", confidence=ratings.get(spec.name.lower()))
            for spec in guideline.segments
            if spec.label in present
        }


# The submission package needs what the lab's server installs (SQLAlchemy for its database; BagIt, cryptography and
# the de-identification table for the package): an admin's Slicer gets them with this one command, never silently.
PACKAGE_REQUIREMENTS = "medannot[server]"


def _packageImports(what: str):
    try:
        import medannot.package as package
    except ImportError as exc:  # pragma: no cover - depends on the Slicer install
        raise MedAnnotError(
            f"{what} needs the package tools ({exc.name} is missing); install them in Slicer's Python console with "
            f"slicer.util.pip_install('{PACKAGE_REQUIREMENTS}')") from exc
    return package


class MedAnnotPackageLogic:
    """'Build package' and 'Verify package' of MedAnnotExport (admins): the core's ``medannot package build|verify``
    with the same checks and messages, called from the module's widget without any GUI in between."""

    def buildPackage(self, databaseUrl: str, dataDir, projectId: int, outputDir, signKey=None, certificate=None,
                     includeImages: bool = False, requireFinal: bool = False) -> dict:
        """Build the BagIt package of ``projectId`` from the lab's database and data folder; returns its numbers."""
        package = _packageImports("Build package")
        from medannot.server.db import make_engine, session_factory, transaction, upgrade_database

        if not databaseUrl:
            raise MedAnnotError("Give the lab server's database URL (as for 'medannot serve --db').")
        if not outputDir or Path(outputDir) in (Path(""), Path(".")):
            raise MedAnnotError("Choose a new folder for the package.")
        engine = make_engine(databaseUrl)
        try:
            upgrade_database(engine)
            with transaction(session_factory(engine)) as session:
                return package.build_package(session, Path(dataDir), int(projectId), Path(outputDir),
                                             include_images=includeImages,
                                             sign_key=Path(signKey) if signKey else None,
                                             certificate=Path(certificate) if certificate else None,
                                             require_final=requireFinal)
        finally:
            engine.dispose()

    def verifyPackage(self, folder, certificate=None) -> str:
        """Check a package offline; returns the one-line verdict, raises ``PackageInvalid`` naming the problem."""
        package = _packageImports("Verify package")
        result = package.verify_package(Path(folder), Path(certificate) if certificate else None)
        signed = f", signed by {result.signed_by}" if result.signed_by else ""
        return (f"package intact: {result.payload_files} files, {result.dicom_files} SEG/SR valid, "
                f"{result.audit_records} audit records chained, {result.signatures} signatures match{signed}")
