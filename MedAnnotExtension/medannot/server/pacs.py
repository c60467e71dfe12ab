"""Fetch a case's source DICOM series from a local path or a DICOMweb (WADO-RS) server for the task server.

Only the server process holds PACS credentials (environment variables); readers get the files as a zip from it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from pydicom import Dataset

from medannot.errors import SourceImageError
from medannot.imaging.source import load_source

logger = logging.getLogger(__name__)

ACCEPTED_FORMS = (
    "a local folder holding one DICOM series, a local multi-frame DICOM file, or a DICOMweb series URL "
    "http(s)://host[:port][/prefix]/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>"
)
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SERIES_PATH = re.compile(r"^(?P<prefix>.*?)/studies/(?P<study>[^/]+)/series/(?P<series>[^/]+)/?$")
# A DICOM UID (PS3.5 9.1); also what makes a SOP Instance UID safe to use as a file name.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_SOP_INSTANCE_UID = "00080018"
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
# Keep the stored transfer syntax: no transcoding on the server, byte-identical pixel data.
_ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
DEFAULT_TIMEOUT_S = 30.0
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CaseSource:
    """Where a case's source images come from.

    ``kind`` is ``"local"`` (then ``path`` is set) or ``"dicomweb"`` (then ``base_url``, ``study_uid`` and
    ``series_uid`` are set; ``base_url`` is the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``).
    """

    kind: Literal["local", "dicomweb"]
    text: str
    path: Path | None = None
    base_url: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    @property
    def url(self) -> str:
        """The series URL (DICOMweb) or the path, as shown to people."""
        if self.kind == "local":
            return str(self.path)
        return f"{self.base_url}/studies/{self.study_uid}/series/{self.series_uid}"


@dataclass(frozen=True)
class DicomWebSettings:
    """Credentials and timeout for DICOMweb requests, read by the server process from its environment."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DicomWebSettings:
        """Read ``MEDANNOT_DICOMWEB_USER``, ``MEDANNOT_DICOMWEB_PASSWORD`` and ``MEDANNOT_DICOMWEB_TIMEOUT`` (s).

        Raises
        ------
        SourceImageError
            If only one of user and password is set, or the timeout is not a positive number of seconds.
        """
        env = os.environ if environ is None else environ
        user = env.get("MEDANNOT_DICOMWEB_USER") or None
        password = env.get("MEDANNOT_DICOMWEB_PASSWORD") or None
        if (user is None) != (password is None):
            missing = "MEDANNOT_DICOMWEB_PASSWORD" if password is None else "MEDANNOT_DICOMWEB_USER"
            raise SourceImageError(f"DICOMweb basic authentication needs both user and password; set {missing} too")
        raw_timeout = env.get("MEDANNOT_DICOMWEB_TIMEOUT", "").strip()
        timeout = DEFAULT_TIMEOUT_S
        if raw_timeout:
            try:
                timeout = float(raw_timeout)
            except ValueError:
                timeout = -1.0
            if not timeout > 0:
                raise SourceImageError(
                    f"MEDANNOT_DICOMWEB_TIMEOUT={raw_timeout!r} is not a positive number of seconds; "
                    f"set it to e.g. {DEFAULT_TIMEOUT_S:g}"
                )
        return cls(user=user, password=password, timeout_s=timeout)


def parse_source(text: str) -> CaseSource:
    """Parse a case source: a local series folder or multi-frame file, or a DICOMweb series URL.

    Raises
    ------
    SourceImageError
        If the text is none of the accepted forms; the message names the text and lists the accepted forms.
    """
    stripped = (text or "").strip()
    if not stripped:
        raise SourceImageError(f"empty case source; give {ACCEPTED_FORMS}")
    if _URL_SCHEME.match(stripped):
        return _parse_url(stripped)
    path = Path(stripped).expanduser()
    if not path.exists():
        raise SourceImageError(f"case source {stripped!r}: no such file or folder; give {ACCEPTED_FORMS}")
    if not (path.is_dir() or path.is_file()):
        raise SourceImageError(f"case source {stripped!r}: neither a folder nor a file; give {ACCEPTED_FORMS}")
    return CaseSource(kind="local", text=stripped, path=path.resolve())


def _parse_url(text: str) -> CaseSource:
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise SourceImageError(f"case source {text!r}: malformed URL ({exc}); give {ACCEPTED_FORMS}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise SourceImageError(f"case source {text!r}: scheme {parts.scheme!r} is not supported; give {ACCEPTED_FORMS}")
    if parts.username is not None or parts.password is not None:
        # Never echo the URL: it holds a secret.
        raise SourceImageError(
            f"case source {parts.scheme}://{parts.hostname}...: credentials in the URL are not accepted (they would "
            "be stored with the task and shown to readers); set MEDANNOT_DICOMWEB_USER and "
            "MEDANNOT_DICOMWEB_PASSWORD for the server process instead"
        )
    if not parts.hostname:
        raise SourceImageError(f"case source {text!r}: the URL has no host; give {ACCEPTED_FORMS}")
    if parts.query or parts.fragment:
        raise SourceImageError(f"case source {text!r}: a series URL takes no query or fragment; give {ACCEPTED_FORMS}")
    match = _SERIES_PATH.match(parts.path)
    if match is None:
        raise SourceImageError(
            f"case source {text!r}: not a DICOMweb series URL (the path must end in "
            f"/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>); give {ACCEPTED_FORMS}"
        )
    for name, uid in (("StudyInstanceUID", match["study"]), ("SeriesInstanceUID", match["series"])):
        if not _UID.match(uid) or len(uid) > 64:
            raise SourceImageError(
                f"case source {text!r}: {name} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)"
            )
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" + ("" if port is None else f":{port}")
    base_url = f"{parts.scheme.lower()}://{netloc}{match['prefix'].rstrip('/')}"
    return CaseSource(kind="dicomweb", text=text, base_url=base_url, study_uid=match["study"],
                      series_uid=match["series"])


def series_uid_of(source: CaseSource) -> tuple[str, str]:
    """Return ``(StudyInstanceUID, SeriesInstanceUID)`` of a source, from the URL or the local files' headers.

    A local source's UIDs are checked as a DICOMweb server's are: each must be a DICOM UID (a SOP Instance UID names
    a file on the server, so ``../`` in one must never reach a path)."""
    if source.kind == "dicomweb":
        return str(source.study_uid), str(source.series_uid)
    image = load_source(_local_path(source))  # reads headers only for series; checks there is exactly one series
    _check_local_uids(source, image.datasets, image.paths)
    return image.study_uid, image.series_uid


def instance_uids(source: CaseSource, settings: DicomWebSettings | None = None) -> list[str]:
    """The SOP Instance UIDs of the source series: the local files' headers, or the DICOMweb series metadata.

    Raises
    ------
    SourceImageError
        If the source cannot be read or a UID is not a DICOM UID.
    """
    if source.kind == "local":
        image = load_source(_local_path(source))
        _check_local_uids(source, image.datasets, image.paths)
        return [str(ds.SOPInstanceUID) for ds in image.datasets]
    settings = settings or DicomWebSettings.from_env()
    client = _client(source, settings)
    with _dicomweb_errors(source, settings, "reading the series metadata"):
        metadata = client.retrieve_series_metadata(str(source.study_uid), str(source.series_uid))
    listed = _listed_instances(source, metadata)
    for uid in listed:
        if not _is_uid(uid):
            raise SourceImageError(f"{source.url}: the series metadata lists an instance whose SOP Instance UID "
                                   f"{uid!r} is invalid")
    return sorted(listed)


def _is_uid(text: str) -> bool:
    return bool(_UID.match(text)) and len(text) <= 64


def _check_local_uids(source: CaseSource, datasets: Iterable[Dataset], paths: Iterable[Path]) -> None:
    for ds, path in zip(datasets, paths):
        for name in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            uid = str(ds.get(name, ""))
            if not _is_uid(uid):
                raise SourceImageError(f"{path}: {name} {uid!r} is not a DICOM UID (digits and dots, at most 64 "
                                       f"characters); fix the file in case source {source.path} or leave it out")


def fetch_series(source: CaseSource, dest_dir: Path, settings: DicomWebSettings | None = None) -> list[Path]:
    """Put the source series' DICOM files into ``dest_dir`` and return their paths.

    A local source is copied (never linked, so nothing done to the copies can alter the originals); a DICOMweb source
    is retrieved with WADO-RS in its stored transfer syntax and written as ``<SOPInstanceUID>.dcm``. What came back is
    checked: at least one instance, all of the requested study and series, and exactly the instances the series
    metadata lists.

    Raises
    ------
    SourceImageError
        If the source is unreadable, unreachable, refuses our credentials, lacks the series, or sends something else.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if source.kind == "local":
        return _copy_local(source, dest_dir)
    return _fetch_dicomweb(source, dest_dir, settings or DicomWebSettings.from_env())


def zip_series(paths: Iterable[Path], zip_path: Path) -> Path:
    """Write the files flat into one zip (for handing a case to a reader); returns ``zip_path``.

    Raises
    ------
    SourceImageError
        If there are no files or two files share a name.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SourceImageError(f"{zip_path}: no DICOM files to put in the case archive")
    names = [p.name for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceImageError(f"{zip_path}: several files are named {', '.join(duplicates[:3])}; names must differ")
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in paths:
            archive.write(path, arcname=path.name)
    os.replace(partial, zip_path)
    return zip_path


# ------------------------------------------------------------------------------------------------ local


def _local_path(source: CaseSource) -> Path:
    if source.kind != "local" or source.path is None:
        raise SourceImageError(f"case source {source.text!r} is not a local path")
    return source.path


def _copy_local(source: CaseSource, dest_dir: Path) -> list[Path]:
    image = load_source(_local_path(source))
    _check_local_uids(source, image.datasets, image.paths)  # a UID names a file here: "../" must never reach a path
    copied = []
    for ds, path in zip(image.datasets, image.paths):
        target = dest_dir / f"{ds.SOPInstanceUID}.dcm"
        if target.exists():
            raise SourceImageError(
                f"{path}: SOP Instance UID {ds.SOPInstanceUID} occurs twice in {source.path}; remove the duplicate"
            )
        shutil.copyfile(path, target)
        copied.append(target)
    logger.info("copied %d files of series %s from %s", len(copied), image.series_uid, source.path)
    return copied


# ------------------------------------------------------------------------------------------------ DICOMweb


def _client(source: CaseSource, settings: DicomWebSettings) -> Any:
    from dicomweb_client.api import DICOMwebClient  # the server extra; the core does not need it

    session = requests.Session()
    if settings.user is not None:
        session.auth = (settings.user, settings.password or "")
        if urlsplit(source.base_url).scheme == "http" and urlsplit(source.base_url).hostname not in _LOOPBACK:
            logger.warning("sending DICOMweb credentials to %s over plain http; use https", source.base_url)
    client = DICOMwebClient(url=str(source.base_url), session=session, timeout=settings.timeout_s)
    client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=500)  # one retry after 1 s
    return client


def _fetch_dicomweb(source: CaseSource, dest_dir: Path, settings: DicomWebSettings) -> list[Path]:
    study, series = str(source.study_uid), str(source.series_uid)
    client = _client(source, settings)
    with _dicomweb_errors(source, settings, "reading the series metadata"):
        metadata = client.retrieve_series_metadata(study, series)
    expected = _listed_instances(source, metadata)

    written: list[Path] = []
    received: set[str] = set()
    with _dicomweb_errors(source, settings, "retrieving the series"):
        for ds in client.iter_series(study, series, media_types=_ANY_TRANSFER_SYNTAX):
            uid = _check_instance(source, ds, received)
            received.add(uid)
            written.append(_write_instance(ds, dest_dir / f"{uid}.dcm"))
    if not received:
        raise SourceImageError(f"{source.url}: the DICOMweb server sent no instances; check that the series has images")
    if expected and received != expected:
        missing, extra = sorted(expected - received), sorted(received - expected)
        raise SourceImageError(
            f"{source.url}: the series metadata lists {len(expected)} instances but {len(received)} came "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); the series may be changing on the server; retry later"
        )
    logger.info("retrieved %d instances of series %s from %s", len(written), series, source.base_url)
    return written


def _listed_instances(source: CaseSource, metadata: Any) -> set[str]:
    if not isinstance(metadata, list):
        raise SourceImageError(f"{source.url}: the series metadata is not a DICOM JSON list; is this a DICOMweb URL?")
    listed: set[str] = set()
    for item in metadata:
        for tag, want in ((_STUDY_UID, source.study_uid), (_SERIES_UID, source.series_uid)):
            got = _json_value(item, tag)
            if got is not None and got != want:
                raise SourceImageError(
                    f"{source.url}: the server's metadata describes an instance of {got}, not of {want}; "
                    "the DICOMweb server answered for the wrong study or series"
                )
        uid = _json_value(item, _SOP_INSTANCE_UID)
        if uid is not None:
            listed.add(uid)
    return listed


def _json_value(item: Any, tag: str) -> str | None:
    try:
        values = item[tag]["Value"]
        return str(values[0])
    except (KeyError, IndexError, TypeError):
        return None


def _check_instance(source: CaseSource, ds: Dataset, seen: set[str]) -> str:
    uid = str(ds.get("SOPInstanceUID", ""))
    if not _is_uid(uid):
        raise SourceImageError(f"{source.url}: the server sent an instance whose SOP Instance UID {uid!r} is invalid")
    if uid in seen:
        raise SourceImageError(f"{source.url}: the server sent instance {uid} twice")
    for name, want in (("StudyInstanceUID", source.study_uid), ("SeriesInstanceUID", source.series_uid)):
        got = str(ds.get(name, ""))
        if got != want:
            raise SourceImageError(
                f"{source.url}: instance {uid} belongs to {name} {got or '(none)'}, not {want}; "
                "the DICOMweb server answered for the wrong study or series"
            )
    return uid


def _write_instance(ds: Dataset, target: Path) -> Path:
    partial = target.with_name(target.name + ".partial")
    ds.save_as(partial, enforce_file_format=True)
    os.replace(partial, target)  # a file with the final name is always complete
    return target


@contextmanager
def _dicomweb_errors(source: CaseSource, settings: DicomWebSettings, doing: str) -> Iterator[None]:
    """Turn requests / dicomweb-client failures into a SourceImageError that says what to do, without secrets."""
    try:
        yield
    except SourceImageError:
        raise
    except requests.HTTPError as exc:
        # from None: the chained exception holds the request, whose Authorization header carries the password.
        raise SourceImageError(f"{source.url}: {doing} failed: {_http_advice(exc, source, settings)}") from None
    except requests.Timeout:
        raise SourceImageError(
            f"{source.url}: {doing} failed: no answer from {source.base_url} within {settings.timeout_s:g} s; "
            "check the server or raise MEDANNOT_DICOMWEB_TIMEOUT"
        ) from None
    except requests.ConnectionError:
        raise SourceImageError(
            f"{source.url}: {doing} failed: cannot connect to {source.base_url}; check the host and port in the case "
            "source and that the DICOMweb server is running"
        ) from None
    except requests.RequestException as exc:
        raise SourceImageError(
            f"{source.url}: {doing} failed ({type(exc).__name__}); check the case source URL"
        ) from None
    except (ValueError, KeyError, TypeError, EOFError) as exc:
        raise SourceImageError(
            f"{source.url}: {doing} failed: the answer is not DICOM ({type(exc).__name__}: {exc}); "
            "is the URL's prefix the server's DICOMweb root?"
        ) from exc


def _http_advice(exc: requests.HTTPError, source: CaseSource, settings: DicomWebSettings) -> str:
    status = exc.response.status_code if exc.response is not None else 0
    if status in (401, 403):
        who = f"user {settings.user!r}" if settings.user else "no credentials were set"
        return (
            f"authentication failed (HTTP {status}, {who}); set MEDANNOT_DICOMWEB_USER and MEDANNOT_DICOMWEB_PASSWORD "
            f"for the server process to an account of {source.base_url}"
        )
    if status == 404:
        return (
            f"series {source.series_uid} of study {source.study_uid} was not found (HTTP 404) at {source.base_url}; "
            "check the UIDs and the DICOMweb root in the case source, or send the series to the PACS"
        )
    reason = exc.response.reason if exc.response is not None else str(exc)
    return f"the DICOMweb server answered HTTP {status} {reason}; check its log"
