"""A real Orthanc with its DICOMweb plugin, started for a test on free ports with a random password.

Debian packages ``orthanc`` and ``orthanc-dicomweb``. Orthanc 1.10 listens on all interfaces whatever
RemoteAccessAllowed says, so the instance always requires authentication, and its DICOM port is disabled.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_BINARY = "Orthanc"
# Debian installs it in /usr/sbin, which is not on a normal user's PATH
ORTHANC_BINARY_CANDIDATES = (Path("/usr/sbin/Orthanc"), Path("/usr/local/sbin/Orthanc"))
ORTHANC_ENV = "MEDANNOT_TEST_ORTHANC"  # path of the Orthanc executable, to use another build or none at all
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"
DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),  # Debian / Ubuntu packages
    Path("/usr/lib/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so"),
)
USER = "medannot"
START_TIMEOUT_S = 20.0


class OrthancStartError(RuntimeError):
    """Orthanc did not come up; the message carries its log."""


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed: $MEDANNOT_TEST_ORTHANC when set, else
    Orthanc on PATH, else Debian's /usr/sbin/Orthanc."""
    if os.environ.get(ORTHANC_ENV):
        given = Path(os.environ[ORTHANC_ENV])
        return str(given) if given.is_file() and os.access(given, os.X_OK) else None
    found = shutil.which(ORTHANC_BINARY)
    if found:
        return found
    return next((str(p) for p in ORTHANC_BINARY_CANDIDATES if p.is_file() and os.access(p, os.X_OK)), None)


def dicomweb_plugin() -> Path | None:
    return next((p for p in DICOMWEB_PLUGIN_CANDIDATES if p.is_file()), None)


def orthanc_problem() -> str | None:
    """Why the Orthanc tests cannot run here, in one line that says what to install; None when they can."""
    if orthanc_binary() is None:
        if os.environ.get(ORTHANC_ENV):
            return f"no Orthanc executable at {ORTHANC_ENV}={os.environ[ORTHANC_ENV]}: {INSTALL_HINT} or fix the path"
        return f"Orthanc is not installed (not on PATH, not in /usr/sbin): {INSTALL_HINT}"
    if dicomweb_plugin() is None:
        return f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN_CANDIDATES[0]}): {INSTALL_HINT}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrthancServer:
    """A running Orthanc: its REST root, its DICOMweb root and the credentials of its one user."""

    process: subprocess.Popen
    port: int
    password: str = field(repr=False)
    log_path: Path
    user: str = USER

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def series_url(self, study_uid: str, series_uid: str) -> str:
        return f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log written)"

    def upload(self, paths: list[Path]) -> list[str]:
        """Store DICOM files through ``POST /instances``; returns their Orthanc instance ids.

        A file counts as stored only when Orthanc's copy reads back byte-identical: Orthanc answers
        "AlreadyStored" and keeps the old instance when the SOP Instance UID is already present.
        """
        ids = []
        for path in paths:
            body = Path(path).read_bytes()
            answer = requests.post(f"{self.url}/instances", data=body, auth=self.auth, timeout=30)
            if answer.status_code != 200:
                raise AssertionError(f"Orthanc refused {path}: HTTP {answer.status_code} {answer.text[:300]}")
            instance = answer.json()
            stored = requests.get(f"{self.url}/instances/{instance['ID']}/file", auth=self.auth, timeout=30)
            stored.raise_for_status()
            if hashlib.sha256(stored.content).digest() != hashlib.sha256(body).digest():
                raise AssertionError(
                    f"Orthanc's copy of {path} differs from the file sent (status {instance.get('Status')!r}); "
                    "an instance with the same SOP Instance UID was probably stored before"
                )
            ids.append(str(instance["ID"]))
        return ids

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _config(tmp_path: Path, port: int, password: str, plugin: Path) -> dict:
    return {
        "Name": "medannot-test",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": _free_port(),  # unused while disabled; a free one in case a version ignores the switch
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "index"),
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpDescribeErrors": True,
    }


def start_orthanc(tmp_path: Path, attempts: int = 3) -> OrthancServer:
    """Start Orthanc with its own config, storage and log under ``tmp_path``; wait until ``/system`` answers.

    Retries on another port if the chosen one was taken in between (the free-port probe is not a reservation).

    Raises
    ------
    OrthancStartError
        If the binary or the DICOMweb plugin is missing, or Orthanc does not answer within ``START_TIMEOUT_S``;
        the message includes Orthanc's log.
    """
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None:
        raise OrthancStartError(f"the Orthanc binary is not installed; {INSTALL_HINT}")
    if plugin is None:
        raise OrthancStartError(f"the DICOMweb plugin is missing (looked at {[str(p) for p in DICOMWEB_PLUGIN_CANDIDATES]}); "
                                "apt-get install orthanc-dicomweb")
    tmp_path = Path(tmp_path)
    failure = ""
    for attempt in range(attempts):
        workdir = tmp_path / f"orthanc-{attempt}"
        workdir.mkdir(parents=True, exist_ok=True)
        port, password = _free_port(), secrets.token_urlsafe(16)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(_config(workdir, port, password, plugin), indent=2))
        log_path = workdir / "orthanc.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([binary, str(config_path)], cwd=workdir, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = OrthancServer(process=process, port=port, password=password, log_path=log_path)
        if _wait_until_up(server):
            plugins = requests.get(f"{server.url}/plugins", auth=server.auth, timeout=5).json()
            if "dicom-web" in plugins:
                return server
            server.stop()
            raise OrthancStartError(f"Orthanc started without its DICOMweb plugin ({plugin}). Its log:\n{server.log()}")
        server.stop()
        failure = f"Orthanc ({binary}, port {port}) did not answer /system within {START_TIMEOUT_S:g} s " \
                  f"(exit code {process.returncode}). Its log:\n{server.log()[-4000:]}"
    raise OrthancStartError(failure)


def _wait_until_up(server: OrthancServer) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            answer = requests.get(f"{server.url}/system", auth=server.auth, timeout=2)
            if answer.status_code == 200 and "Version" in answer.json():
                return True
        except (requests.ConnectionError, requests.Timeout, ValueError):
            pass
        time.sleep(0.1)
    return False
