"""Find the DICOM files a volume was loaded from, through Slicer's DICOM database.

Slicer's DICOM plugins store the SOP Instance UIDs of the loaded instances, space-separated, in the volume's
``DICOM.instanceUIDs`` attribute; the DICOM database maps each UID to its file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import slicer

from medannot.errors import SourceImageError

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def dicomInstanceUidsOfVolume(volumeNode) -> list[str]:
    """Return the SOP Instance UIDs a volume was loaded from, in the order Slicer stored them.

    Raises
    ------
    SourceImageError
        If the volume was not loaded from Slicer's DICOM database.
    """
    attribute = volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or ""
    uids = attribute.split()
    if not uids:
        raise SourceImageError(
            f"Volume '{volumeNode.GetName()}' was not loaded from Slicer's DICOM database (it has no "
            f"{INSTANCE_UIDS_ATTRIBUTE} attribute), so the DICOM images it shows are unknown. Import the series in "
            "the DICOM module and load it from there, then segment on that volume."
        )
    return uids


def dicomFilesOfVolume(volumeNode, dicomDatabase=None) -> list[Path]:
    """Return the files of the DICOM instances a volume was loaded from.

    Parameters
    ----------
    volumeNode : vtkMRMLScalarVolumeNode
        A volume loaded by Slicer's DICOM module.
    dicomDatabase : ctkDICOMDatabase, optional
        Defaults to ``slicer.dicomDatabase``.

    Raises
    ------
    SourceImageError
        If the volume was not loaded from the DICOM database, no database is open, or an instance's file is gone.
    """
    uids = dicomInstanceUidsOfVolume(volumeNode)
    database = dicomDatabase if dicomDatabase is not None else getattr(slicer, "dicomDatabase", None)
    if database is None:
        raise SourceImageError(
            f"Volume '{volumeNode.GetName()}' refers to DICOM instances, but no DICOM database is open; open the "
            "DICOM module (it opens the database) and try again."
        )
    files: list[Path] = []
    for uid in uids:
        fileName = database.fileForInstance(uid)
        if not fileName:
            problem = f"DICOM instance {uid} is not in the DICOM database"
        elif not os.path.isfile(fileName):
            problem = f"the file of DICOM instance {uid} is missing: {fileName}"
        else:
            files.append(Path(fileName))
            continue
        raise SourceImageError(
            f"Volume '{volumeNode.GetName()}': {problem}; re-import the series in the DICOM module and reload it."
        )
    return files


@contextlib.contextmanager
def sourcePathOfVolume(volumeNode, dicomDatabase=None) -> Iterator[Path]:
    """Yield a path that ``medannot.imaging.load_source`` reads as exactly the volume's DICOM instances.

    That is the multi-frame file itself, the series' folder when it holds nothing else (as in Slicer's database
    folder), or otherwise a temporary folder linking to the files, removed on exit.

    Raises
    ------
    SourceImageError
        See :func:`dicomFilesOfVolume`.
    """
    files = dicomFilesOfVolume(volumeNode, dicomDatabase)
    if len(files) == 1:
        yield files[0]
        return
    folders = {file.parent for file in files}
    if len(folders) == 1:
        folder = folders.pop()
        if {p.resolve() for p in folder.rglob("*") if p.is_file()} == {file.resolve() for file in files}:
            yield folder
            return
    with tempfile.TemporaryDirectory(prefix="MedAnnotSource-") as temporary:
        for index, file in enumerate(files):
            _linkOrCopy(file, Path(temporary) / f"{index:05d}_{file.name}")
        yield Path(temporary)


def _linkOrCopy(source: Path, target: Path) -> None:
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # Windows without the symlink privilege
        shutil.copy2(source, target)
