"""The gate over files and folders: check many, apply to a tree, the lab's key."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from medannot.deid.engine import DeidOptions, Finding, deidentify, find_phi
from medannot.deid.profile import DeidError

logger = logging.getLogger(__name__)

KEY_ENV = "MEDANNOT_DEID_KEY"


def default_key_path() -> Path:
    """The lab's key when none is given: ``$MEDANNOT_HOME/deid.key`` (``~/.medannot/deid.key``)."""
    from medannot.paths import medannot_home

    return medannot_home() / "deid.key"


def load_key(path: Path | None) -> bytes:
    """The lab's de-identification key: the file ``path`` (hex, as ``deid keygen`` writes), else
    $MEDANNOT_DEID_KEY (hex), else :func:`default_key_path`, made on first use (and said so on the log), so that
    every run on this machine maps the same UIDs and patients the same way."""
    if path is None:
        text = os.environ.get(KEY_ENV, "").strip()
        if text:
            return _parse_key(text, f"${KEY_ENV}")
        path = default_key_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_new_key(path)
            logger.warning("made a new de-identification key in %s: keep it secret and keep it (it links the "
                           "pseudonyms and UIDs to the patients; a new key gives every patient new ones)", path)
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeidError(f"{path}: cannot read the de-identification key ({exc}); make one with "
                        "'medannot deid keygen --output lab.key'") from exc
    return _parse_key(text, str(path))


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise DeidError(f"{where}: the key is not hexadecimal; make one with 'medannot deid keygen'") from None
    if len(key) < 16:
        raise DeidError(f"{where}: the key has {len(key)} bytes, fewer than 16; make one with 'medannot deid keygen'")
    return key


def write_new_key(path: Path) -> None:
    """A new random 256-bit key in ``path`` (readable by its owner only); refuses to overwrite one."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DeidError(f"{path}: exists; a key is never overwritten (every pseudonym made with it would change)") \
            from None
    except OSError as exc:
        raise DeidError(f"{path}: cannot write the key ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            yield path
        else:
            raise DeidError(f"{path}: no such file or folder")


def _read(path: Path, defer: bool = False):  # type: ignore[no-untyped-def]
    try:
        # the check never needs the pixels' bytes, only that they are there (defer_size keeps them on disk)
        return dcmread(path, force=False, defer_size="64 KB" if defer else None)
    except InvalidDicomError:
        return None
    except (OSError, ValueError, AttributeError, EOFError) as exc:
        raise DeidError(f"{path}: cannot read it as DICOM ({exc})") from exc


def check_file(path: Path) -> list[Finding]:
    """PHI candidates left in the DICOM file ``path`` (empty when it passes); a file that is not DICOM passes
    only when it is one of the package's own text records, so an image in another format is never waved through."""
    ds = _read(Path(path), defer=True)
    if ds is None:
        return [Finding(str(path), "not a DICOM file: the gate cannot check it for PHI")]
    return find_phi(ds)


@dataclass
class FileCheck:
    """The gate's verdict on one file."""

    path: Path
    findings: list[Finding]


def check_paths(paths: Iterable[Path]) -> list[FileCheck]:
    """``check_file`` over every file under ``paths`` (folders are walked)."""
    return [FileCheck(path, check_file(path)) for path in _files(paths)]


@dataclass
class Applied:
    """What ``apply_tree`` wrote for one source file."""

    source: Path
    output: Path | None
    changes: dict[str, int]
    remaining: list[Finding]
    skipped: str | None = None


def apply_tree(source: Path, output: Path, options: DeidOptions) -> list[Applied]:
    """De-identify every DICOM file under ``source`` into ``output`` (same relative layout; a file is named by its
    new SOP Instance UID when its name held the old one). Files that are not DICOM are not copied."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise DeidError(f"{source}: no such file or folder")
    if source.is_dir() and (output.resolve() == source.resolve() or source.resolve() in output.resolve().parents):
        raise DeidError(f"{output}: is inside the source folder {source}; de-identified copies go to another folder")
    results: list[Applied] = []
    files = [source] if source.is_file() else list(_files([source]))
    for path in files:
        ds = _read(path)
        if ds is None:
            results.append(Applied(path, None, {}, [], "not DICOM: not copied"))
            continue
        old_uid = str(ds.get("SOPInstanceUID", ""))
        clean, changes = deidentify(ds, options, where=str(path), in_place=True)
        relative = Path(path.name) if source.is_file() else path.relative_to(source)
        name = relative.name
        if old_uid and old_uid in name:
            name = name.replace(old_uid, str(clean.SOPInstanceUID))
        target = output / relative.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            clean.save_as(target, enforce_file_format=True)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise DeidError(f"{path}: cannot write its de-identified copy {target} ({exc})") from exc
        results.append(Applied(path, target, changes, find_phi(clean)))
    return results
