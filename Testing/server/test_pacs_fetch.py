"""Fetching a case's source series from a local path or a real Orthanc over DICOMweb."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medannot.demo_data import make_ct_series, make_us_cine
from medannot.errors import SourceImageError
from medannot.imaging import load_source
from medannot.server import pacs
from medannot.server.pacs import DicomWebSettings, fetch_series, parse_source, series_uid_of, zip_series

SHAPE = (5, 24, 20)
ACCEPTED = "DICOMweb series URL"


def _by_uid(paths: list[Path]) -> dict[str, pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in paths]
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


@pytest.fixture
def ct_folder(tmp_path: Path) -> Path:
    return make_ct_series(tmp_path / "ct", SHAPE)


@pytest.fixture(scope="module")
def stored_series(orthanc, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A CT series uploaded to Orthanc, with its DICOMweb URL and the settings of the server process."""
    files = sorted(make_ct_series(tmp_path_factory.mktemp("stored"), SHAPE).glob("*.dcm"))
    orthanc.upload(files)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    return {
        "files": files, "study": study, "series": series, "url": orthanc.series_url(study, series),
        "settings": DicomWebSettings(user=orthanc.user, password=orthanc.password, timeout_s=10),
    }


# ------------------------------------------------------------------------------------------------ DICOMweb


def test_dicomweb_fetch_returns_the_uploaded_instances_with_identical_pixels(stored_series, tmp_path):
    source = parse_source(stored_series["url"])
    assert source.kind == "dicomweb"
    assert series_uid_of(source) == (stored_series["study"], stored_series["series"])

    fetched = fetch_series(source, tmp_path / "fetched", stored_series["settings"])

    originals, copies = _by_uid(stored_series["files"]), _by_uid(fetched)
    assert sorted(copies) == sorted(originals)
    assert sorted(p.name for p in fetched) == sorted(f"{uid}.dcm" for uid in originals)
    for uid, original in originals.items():
        assert copies[uid].SeriesInstanceUID == original.SeriesInstanceUID
        np.testing.assert_array_equal(copies[uid].pixel_array, original.pixel_array)
    assert load_source(tmp_path / "fetched").shape == SHAPE  # what the reader will load


def test_wrong_password_is_an_authentication_error_that_does_not_show_the_password(stored_series, orthanc, tmp_path):
    wrong = "not-the-password-" + orthanc.password[:4]
    settings = DicomWebSettings(user=orthanc.user, password=wrong, timeout_s=10)
    with pytest.raises(SourceImageError, match="authentication failed") as error:
        fetch_series(parse_source(stored_series["url"]), tmp_path / "fetched", settings)
    message = str(error.value)
    assert stored_series["url"] in message and "MEDANNOT_DICOMWEB_PASSWORD" in message
    assert wrong not in message and orthanc.password not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no request (with its header) attached


def test_missing_credentials_are_an_authentication_error(stored_series, tmp_path):
    with pytest.raises(SourceImageError, match="authentication failed.*no credentials"):
        fetch_series(parse_source(stored_series["url"]), tmp_path / "fetched", DicomWebSettings())


def test_unknown_series_is_reported_as_not_found_with_its_uid(stored_series, orthanc, tmp_path):
    unknown = generate_uid()
    source = parse_source(orthanc.series_url(stored_series["study"], unknown))
    with pytest.raises(SourceImageError, match="not found") as error:
        fetch_series(source, tmp_path / "fetched", stored_series["settings"])
    assert unknown in str(error.value)
    assert not list((tmp_path / "fetched").glob("*.dcm"))


def test_unreachable_server_says_it_cannot_connect(tmp_path):
    source = parse_source(f"http://127.0.0.1:{_closed_port()}/dicom-web/studies/1.2.3/series/1.2.4")
    with pytest.raises(SourceImageError, match="cannot connect to http://127.0.0.1"):
        fetch_series(source, tmp_path / "fetched", DicomWebSettings(user="u", password="secret-pw", timeout_s=5))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _StubClient:
    """Answers like a DICOMweb server that returns the given metadata and instances (for the checks on the answer)."""

    def __init__(self, metadata: list, instances: list) -> None:
        self.metadata, self.instances = metadata, instances

    def retrieve_series_metadata(self, study: str, series: str) -> list:
        return self.metadata

    def iter_series(self, study: str, series: str, media_types=None):
        return iter(self.instances)


def _metadata(ds: pydicom.Dataset) -> dict:
    return ds.to_json_dict()


def test_instances_of_another_series_are_rejected(ct_folder, tmp_path, monkeypatch):
    datasets = [pydicom.dcmread(p) for p in sorted(ct_folder.glob("*.dcm"))]
    source = parse_source(f"http://pacs.example/dicom-web/studies/{datasets[0].StudyInstanceUID}/series/1.2.3")
    monkeypatch.setattr(pacs, "_client", lambda *_: _StubClient([], datasets))
    with pytest.raises(SourceImageError, match="belongs to SeriesInstanceUID .*, not 1.2.3"):
        fetch_series(source, tmp_path / "fetched", DicomWebSettings())


def test_fewer_instances_than_the_metadata_lists_is_an_error(ct_folder, tmp_path, monkeypatch):
    datasets = [pydicom.dcmread(p) for p in sorted(ct_folder.glob("*.dcm"))]
    first = datasets[0]
    source = parse_source(f"http://pacs.example/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}")
    monkeypatch.setattr(pacs, "_client", lambda *_: _StubClient([_metadata(d) for d in datasets], datasets[:-1]))
    with pytest.raises(SourceImageError, match=f"lists {SHAPE[0]} instances but {SHAPE[0] - 1} came"):
        fetch_series(source, tmp_path / "fetched", DicomWebSettings())


def test_an_empty_answer_is_an_error(tmp_path, monkeypatch):
    source = parse_source("http://pacs.example/dicom-web/studies/1.2.3/series/1.2.4")
    monkeypatch.setattr(pacs, "_client", lambda *_: _StubClient([], []))
    with pytest.raises(SourceImageError, match="sent no instances"):
        fetch_series(source, tmp_path / "fetched", DicomWebSettings())


# ------------------------------------------------------------------------------------------------ local


def test_local_series_folder_is_copied_unchanged(ct_folder, tmp_path):
    source = parse_source(str(ct_folder))
    assert source.kind == "local" and source.path == ct_folder.resolve()
    fetched = fetch_series(source, tmp_path / "fetched")
    originals = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in ct_folder.glob("*.dcm")}
    assert {p.stem: p.read_bytes() for p in fetched} == originals
    first = pydicom.dcmread(next(ct_folder.glob("*.dcm")), stop_before_pixels=True)
    assert series_uid_of(source) == (first.StudyInstanceUID, first.SeriesInstanceUID)


def test_local_multiframe_file_is_fetched(tmp_path):
    cine = make_us_cine(tmp_path / "cine.dcm", frames=4, rows=16, cols=16)
    fetched = fetch_series(parse_source(str(cine)), tmp_path / "fetched")
    assert len(fetched) == 1 and fetched[0].read_bytes() == cine.read_bytes()


def test_local_folder_with_two_series_is_rejected(tmp_path):
    make_ct_series(tmp_path / "mixed", (2, 8, 8))
    other = make_ct_series(tmp_path / "other", (2, 8, 8))
    for path in other.glob("*.dcm"):
        path.rename(tmp_path / "mixed" / f"other_{path.name}")
    with pytest.raises(SourceImageError, match="holds 2 series"):
        series_uid_of(parse_source(str(tmp_path / "mixed")))


def test_zip_series_holds_every_file_flat(ct_folder, tmp_path):
    files = fetch_series(parse_source(str(ct_folder)), tmp_path / "fetched")
    archive = zip_series(files, tmp_path / "out" / "case.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted(p.name for p in files)
        assert zf.read(files[0].name) == files[0].read_bytes()


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, reason", [
    ("", "empty case source"),
    ("/no/such/folder", "no such file or folder"),
    ("ftp://pacs/dicom-web/studies/1.2/series/1.3", "scheme 'ftp' is not supported"),
    ("http://pacs:8042/dicom-web/studies/1.2", "not a DICOMweb series URL"),
    ("http://pacs:8042/dicom-web/studies/1.2/series/1.3/instances/1.4", "not a DICOMweb series URL"),
    ("http:///studies/1.2/series/1.3", "has no host"),
    ("http://pacs/studies/1.2/series/1.3?includefield=all", "no query or fragment"),
    ("http://pacs/studies/abc/series/1.3", "StudyInstanceUID 'abc' is not a DICOM UID"),
    ("http://pacs/studies/1.2/series/1.03", "SeriesInstanceUID '1.03' is not a DICOM UID"),
    ("http://pacs:port/studies/1.2/series/1.3", "malformed URL"),
])
def test_malformed_sources_are_rejected_naming_the_text_and_the_accepted_forms(text, reason):
    with pytest.raises(SourceImageError, match=reason) as error:
        parse_source(text)
    message = str(error.value)
    if text:
        assert repr(text) in message
    if "UID" not in reason:
        assert ACCEPTED in message


def test_credentials_in_the_url_are_rejected_without_echoing_them():
    with pytest.raises(SourceImageError, match="credentials in the URL are not accepted") as error:
        parse_source("https://admin:s3cret@pacs/dicom-web/studies/1.2/series/1.3")
    assert "s3cret" not in str(error.value) and "MEDANNOT_DICOMWEB_USER" in str(error.value)


def test_dicomweb_url_is_split_into_root_and_uids():
    source = parse_source(" HTTPS://pacs.example:8443/orthanc/dicom-web/studies/1.2.840.1/series/1.2.840.2/ ")
    assert (source.kind, source.base_url, source.study_uid, source.series_uid) == (
        "dicomweb", "https://pacs.example:8443/orthanc/dicom-web", "1.2.840.1", "1.2.840.2")
    assert source.url == "https://pacs.example:8443/orthanc/dicom-web/studies/1.2.840.1/series/1.2.840.2"


# ------------------------------------------------------------------------------------------------ settings


def test_settings_come_from_the_environment_and_hide_the_password():
    settings = DicomWebSettings.from_env({"MEDANNOT_DICOMWEB_USER": "svc", "MEDANNOT_DICOMWEB_PASSWORD": "pw-123",
                                          "MEDANNOT_DICOMWEB_TIMEOUT": "7.5"})
    assert (settings.user, settings.password, settings.timeout_s) == ("svc", "pw-123", 7.5)
    assert "pw-123" not in repr(settings)
    assert DicomWebSettings.from_env({}) == DicomWebSettings()


@pytest.mark.parametrize("env, reason", [
    ({"MEDANNOT_DICOMWEB_USER": "svc"}, "set MEDANNOT_DICOMWEB_PASSWORD too"),
    ({"MEDANNOT_DICOMWEB_PASSWORD": "pw"}, "set MEDANNOT_DICOMWEB_USER too"),
    ({"MEDANNOT_DICOMWEB_TIMEOUT": "soon"}, "MEDANNOT_DICOMWEB_TIMEOUT='soon' is not a positive number"),
    ({"MEDANNOT_DICOMWEB_TIMEOUT": "0"}, "MEDANNOT_DICOMWEB_TIMEOUT='0' is not a positive number"),
])
def test_bad_settings_are_explained(env, reason):
    with pytest.raises(SourceImageError, match=reason):
        DicomWebSettings.from_env(env)
