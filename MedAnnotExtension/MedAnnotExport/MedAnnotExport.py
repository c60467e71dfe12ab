"""MedAnnot Export: write a segmentation as DICOM-SEG + SR with the reader's provenance.

The module's work is done by :class:`MedAnnotExportLib.logic.MedAnnotExportLogic`, which needs no Qt; this file holds
the Slicer module, its parameter node, its GUI and its self-test.
"""

import importlib.resources
import pathlib
import sys
import unittest

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Run from a source checkout (Additional module paths: MedAnnotExtension/<module>/, as the README says), Slicer puts
# only this file's folder on sys.path, but MedAnnotLib, medannot and the other modules' Libs sit one folder up. In a
# build or an installed extension they share qt-scripted-modules/ with this file, and nothing is added.
_moduleFolder = pathlib.Path(__file__).resolve().parent
if not (_moduleFolder / "MedAnnotLib").is_dir() and (_moduleFolder.parent / "MedAnnotLib").is_dir():
    for _folder in (_moduleFolder.parent, *(_moduleFolder.parent / name for name in ("MedAnnotExport", "MedAnnotCine"))):
        if str(_folder) not in sys.path:
            sys.path.append(str(_folder))

import MedAnnotLib
from MedAnnotExportLib import logic as exportLogic
from MedAnnotExportLib.logic import MedAnnotExportLogic, MedAnnotPackageLogic

NOT_RATED = -1  # confidence spin box value meaning "the reader gave no rating"


#
# MedAnnotExport
#


class MedAnnotExport(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAnnot Export")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "DICOM"]
        self.parent.contributors = ["MedAnnot developers (MedAnnot project)"]
        self.parent.helpText = _(
            "Export a segmentation drawn on a DICOM volume as DICOM-SEG with a companion SR that records who drew "
            "each segment, how, how sure they are, and which guideline version they followed."
        )
        self.parent.acknowledgementText = _("Built on highdicom, pydicom and 3D Slicer.")


#
# MedAnnotExportParameterNode
#


@parameterNodeWrapper
class MedAnnotExportParameterNode:
    """What an export needs; bound to the GUI through the widgets' SlicerParameterName.

    segmentationNode - the segmentation to export, segments named after the guideline's.
    referenceVolumeNode - the DICOM volume it was drawn on.
    guidelinePath - the guideline YAML file.
    readerName, readerId, readerRole, institution - who drew it.
    outputDir - where the SEG and SR files go.
    """

    segmentationNode: vtkMRMLSegmentationNode
    referenceVolumeNode: vtkMRMLScalarVolumeNode
    guidelinePath: pathlib.Path
    readerName: str
    readerId: str
    readerRole: str = "Annotator"
    institution: str
    outputDir: pathlib.Path


#
# MedAnnotExportWidget
#


class MedAnnotExportWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: every action calls :class:`MedAnnotExportLogic`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnnotExport.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedAnnotExportLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.guidelinePathLineEdit.connect("currentPathChanged(QString)", self.onGuidelineChanged)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.packageLogic = MedAnnotPackageLogic()
        self.ui.buildPackageButton.connect("clicked(bool)", self.onBuildPackageButton)
        self.ui.verifyPackageButton.connect("clicked(bool)", self.onVerifyPackageButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(MedAnnotExportParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.segmentationNode:
            self._parameterNode.segmentationNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        if not self._parameterNode.referenceVolumeNode:
            self._parameterNode.referenceVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanExport)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanExport)
            self._checkCanExport()

    def _checkCanExport(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.segmentationNode and node.referenceVolumeNode and node.guidelinePath.is_file()
                     and node.readerName and node.readerId and str(node.outputDir) not in ("", "."))
        self.ui.exportButton.enabled = ready
        self.ui.exportButton.toolTip = (
            _("Write the segmentation as DICOM-SEG with a companion SR holding the provenance.") if ready
            else _("Select a segmentation, its DICOM image, a guideline, your name and id, and an output folder."))

    def onGuidelineChanged(self, path) -> None:
        """Show one confidence spin box per guideline segment."""
        table = self.ui.confidenceTableWidget
        table.setRowCount(0)
        if not path or not pathlib.Path(path).is_file():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to read the guideline."), waitCursor=True):
            names = self.logic.segmentNames(path)
            table.setRowCount(len(names))
            for row, name in enumerate(names):
                table.setItem(row, 0, qt.QTableWidgetItem(name))
                spinBox = qt.QSpinBox()
                spinBox.setRange(NOT_RATED, 100)
                spinBox.setSpecialValueText(_("not rated"))
                spinBox.setSuffix(" %")
                spinBox.setValue(NOT_RATED)
                table.setCellWidget(row, 1, spinBox)

    def confidences(self) -> dict:
        """The ratings in the confidence table, by segment name; unrated segments are left out."""
        table = self.ui.confidenceTableWidget
        ratings = {}
        for row in range(table.rowCount):
            value = table.cellWidget(row, 1).value
            if value != NOT_RATED:
                ratings[table.item(row, 0).text()] = int(value)
        return ratings

    def onExportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export the segmentation."), waitCursor=True):
            result = self.logic.exportFromParameterNode(self._parameterNode, self.confidences())
            self.ui.statusLabel.text = _("Written:\n{seg}\n{sr}").format(seg=result.seg_path, sr=result.sr_path)


    def onBuildPackageButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to build the submission package."), waitCursor=True):
            numbers = self.packageLogic.buildPackage(
                self.ui.packageDatabaseLineEdit.text.strip(), self.ui.packageDataDirPathLineEdit.currentPath,
                self.ui.packageProjectSpinBox.value, self.ui.packageOutputPathLineEdit.currentPath,
                self.ui.packageSignKeyPathLineEdit.currentPath or None,
                self.ui.packageCertificatePathLineEdit.currentPath or None,
                includeImages=self.ui.packageIncludeImagesCheckBox.checked)
            opened = ", ".join(numbers["open_cases"]) or _("none")
            self.ui.packageStatusLabel.text = _("Package built: {cases} cases ({final} final; open: {opened}), "
                                                "{reads} reads, {signatures} signatures.").format(
                cases=numbers["cases"], final=numbers["final_cases"], opened=opened, reads=numbers["reads"],
                signatures=numbers["signatures"])
            self.ui.verifyPackagePathLineEdit.currentPath = self.ui.packageOutputPathLineEdit.currentPath

    def onVerifyPackageButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The package does not verify."), waitCursor=True):
            self.ui.packageStatusLabel.text = ""
            self.ui.packageStatusLabel.text = self.packageLogic.verifyPackage(
                self.ui.verifyPackagePathLineEdit.currentPath,
                self.ui.packageCertificatePathLineEdit.currentPath or None)


#
# MedAnnotExportTest
#


class MedAnnotExportTest(ScriptedLoadableModuleTest):
    """Self-test in a running Slicer: a series imported into the DICOM database, exported and read back."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        try:
            self.test_ExportedSegMatchesSegmentationVoxelForVoxel()
        except unittest.SkipTest as skipped:  # runTest (Reload and Test) has no unittest runner to report it
            self.delayDisplay(f"Test skipped: {skipped}")

    def requireDependencies(self, logic):
        """Install what MedAnnot Export needs (it asks first), or skip this test when it is still missing: under
        ``--testing`` (ctest) Slicer's ``pip_ensure`` installs nothing, so that tests never change Slicer's Python."""
        logic.ensureDependencies()
        missing = [str(requirement) for requirement in MedAnnotLib.missingRequirements(exportLogic.REQUIREMENTS_PATH)]
        if missing:
            self.skipTest(
                f"MedAnnot Export's Python packages are not installed in this Slicer ({', '.join(missing)}), and "
                "Slicer installs none while testing. Install them once (use MedAnnot Export in this Slicer, or "
                "slicer.util.pip_install) and run the test again.")

    def test_ExportedSegMatchesSegmentationVoxelForVoxel(self):
        from DICOMLib import DICOMUtils

        self.delayDisplay("Starting the test")
        logic = MedAnnotExportLogic()
        self.requireDependencies(logic)
        from medannot.demo_data import ct_phantom, make_ct_series
        from medannot.dicomseg import read_segmentation

        workDir = pathlib.Path(slicer.util.tempDirectory())
        shape = (8, 32, 32)
        hu, labels = ct_phantom(shape)
        seriesFolder = make_ct_series(workDir / "ct", shape=shape, hu=hu)
        guidelinePath = pathlib.Path(str(importlib.resources.files("medannot").joinpath("data/liver-ct.yaml")))
        guideline = logic.loadGuideline(guidelinePath)

        with DICOMUtils.TemporaryDICOMDatabase() as database:
            DICOMUtils.importDicom(str(seriesFolder), database)
            seriesUid = database.seriesForStudy(database.studiesForPatient(database.patients()[0])[0])[0]
            volumeNode = slicer.mrmlScene.GetNodeByID(DICOMUtils.loadSeriesByUID([seriesUid])[0])
            geometry = MedAnnotLib.geometryFromVolumeNode(volumeNode)
            segmentationNode = MedAnnotLib.addSegmentationNodeFromLabelMap(labels, geometry, guideline, "Drawn")
            result = logic.exportSegmentation(segmentationNode, volumeNode, guidelinePath, readerName="Test^Reader",
                                              readerId="reader1", outputDir=workDir / "out",
                                              confidences={"Liver": 90, "Lesion": 60})

        record = read_segmentation(result.seg_path)
        drawn = MedAnnotLib.labelMapFromSegmentationNode(segmentationNode, volumeNode, guideline)
        self.assertTrue(np.array_equal(record.labels, drawn))
        self.assertEqual(geometry.mismatches(record.geometry), [])
        self.delayDisplay("Test passed")
