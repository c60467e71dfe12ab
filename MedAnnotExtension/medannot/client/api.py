"""The MedAnnot task server's REST API (``/api/v1``) as Python calls, and the local login session file.

Calls that are safe to repeat are retried with backoff on connection failures and 502/503/504; a submit is safe
to repeat because the server stores each Idempotency-Key once. Every failure is a :class:`TaskServerError`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from medannot.paths import medannot_home
from medannot.client.errors import (
    AuthenticationError,
    LeaseLostError,
    ServerAddressError,
    ServerRejectedError,
    ServerResponseError,
    ServerUnreachableError,
    TaskServerError,
    TransferCancelledError,
    UnsafeArchiveError,
)
from medannot.errors import DicomSegError

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
RETRY_STATUSES = (502, 503, 504)
# Answers that mean "try again later", not "your request is wrong": the outbox keeps such submits queued.
TRANSIENT_STATUSES = frozenset({408, 429})
SESSION_FILE = "session.json"
# A heartbeat is sent every few minutes while a reader draws: one short try, no retries. A lost beat is simply sent
# again by the next tick (the lease outlasts several), and a long wait would hold up whoever waits for the answer.
HEARTBEAT_TIMEOUT_SECONDS = 10.0
# Downloads are read in pieces this big: each piece reports progress and checks whether the reader cancelled.
DOWNLOAD_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Session:
    """A login on one task server: the bearer token and when it expires (the password is never kept)."""

    server_url: str
    token: str
    expires_at: str = ""
    username: str = ""

    @property
    def expired(self) -> bool:
        """True when ``expires_at`` is in the past; an unreadable or missing expiry counts as not expired."""
        expiry = _parse_time(self.expires_at)
        return expiry is not None and expiry <= datetime.now(timezone.utc)


@dataclass(frozen=True)
class Task:
    """A claimed task: which case to annotate, under which guideline, and the lease that proves it is ours."""

    task_id: int | str
    case_id: int | str
    lease_token: str
    lease_expires_at: str
    project_id: int | str | None = None
    guideline_id: str | None = None
    guideline_version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(task_id=data["task_id"], case_id=data["case_id"], lease_token=str(data["lease_token"]),
                   lease_expires_at=str(data.get("lease_expires_at") or ""), project_id=data.get("project_id"),
                   guideline_id=data.get("guideline_id"), guideline_version=data.get("guideline_version"),
                   raw=dict(data))


@dataclass(frozen=True)
class Submission:
    """The server's receipt for a stored SEG + SR; ``replayed`` when it answered an Idempotency-Key seen before."""

    submission_id: int | str
    replayed: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class TaskServerClient:
    """Client of one MedAnnot task server.

    Parameters
    ----------
    base_url
        The server's address, ``http(s)://host[:port]`` (a trailing ``/api/v1`` is accepted).
    token
        Bearer token from an earlier :meth:`login`; ``None`` until logged in.
    timeout
        Seconds to wait for an answer (connecting waits at most 10 s of it).
    retries
        How often a failed connection or a 502/503/504 is retried, with exponential backoff.
    backoff_factor
        Base of the backoff: waits 0, 2x, 4x, ... this many seconds between retries.

    Examples
    --------
    >>> client = TaskServerClient("https://annot.lab.example")  # doctest: +SKIP
    >>> client.login("rroe", getpass.getpass())                   # doctest: +SKIP
    >>> task = client.claim(3)                                    # doctest: +SKIP
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30, retries: int = 3,
                 backoff_factor: float = 0.5) -> None:
        self.base_url = normalize_server_url(base_url)
        self.token = token
        self.username: str | None = None  # who logged in (set by login); the outbox sends a reader's own items only
        self.timeout = (min(float(timeout), 10.0), float(timeout))
        self._http = _http_session(_retry(retries, backoff_factor, repeat_safe=True))
        # A claim is not safe to repeat once the server may have seen it: retry only failed connects.
        self._http_once = _http_session(_retry(retries, backoff_factor, repeat_safe=False))
        # Heartbeats: one try, see HEARTBEAT_TIMEOUT_SECONDS. Their own connection pool, so that a beat sent from a
        # worker thread never shares a connection with a request of the reader's.
        self._http_beat = _http_session(Retry(total=0, connect=0, read=False, status=0, other=0,
                                              raise_on_status=False))
        host = urlsplit(self.base_url).hostname or ""
        if self.base_url.startswith("http://") and not _is_loopback(host):
            logger.warning("%s is plain http: your password and token cross the network unencrypted; "
                           "ask your lab for the https address", self.base_url)

    @classmethod
    def from_session(cls, session: Session, **kwargs: Any) -> TaskServerClient:
        client = cls(session.server_url, token=session.token, **kwargs)
        client.username = session.username or None
        return client

    def close(self) -> None:
        self._http.close()
        self._http_once.close()
        self._http_beat.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ auth
    def login(self, username: str, password: str) -> Session:
        """Log in; keeps the token on this client and returns it with its expiry. The password is not kept."""
        response = self._call("POST", "/auth/login", f"log in as {username!r}", authenticated=False,
                              json={"username": username, "password": password})
        data = self._json(response, "the login")
        if not isinstance(data, dict) or not data.get("access_token"):
            raise self._unexpected("the login", "no access_token")
        self.token = str(data["access_token"])
        self.username = username
        return Session(server_url=self.base_url, token=self.token, expires_at=str(data.get("expires_at") or ""),
                       username=username)

    def logout(self) -> None:
        """Revoke the token on the server; a token the server no longer knows counts as logged out."""
        if self.token is None:
            return
        try:
            self._call("POST", "/auth/logout", "log out")
        except AuthenticationError:
            pass
        self.token = None

    # ------------------------------------------------------------ projects and tasks
    def projects(self) -> list[dict[str, Any]]:
        """The projects this user works on, with their progress, as the server describes them."""
        data = self._json(self._call("GET", "/projects", "list projects"), "the project list")
        if not isinstance(data, list) or not all(isinstance(p, dict) and "id" in p for p in data):
            raise self._unexpected("the project list", "not a list of projects")
        return data

    def claim(self, project_id: int | str) -> Task | None:
        """Claim the next task of a project for this reader; ``None`` when nothing is left for them."""
        response = self._call("POST", f"/projects/{project_id}/claim", f"claim a task in project {project_id}",
                              repeat_safe=False)
        if response.status_code == 204:
            return None
        data = self._json(response, "the claim")
        try:
            return Task.from_json(data)
        except (KeyError, TypeError):
            raise self._unexpected("the claim", "no task_id, case_id or lease_token") from None

    def heartbeat(self, task_id: int | str, lease_token: str,
                  timeout: float = HEARTBEAT_TIMEOUT_SECONDS) -> str:
        """Extend the lease on a task; returns the new expiry. Raises :class:`LeaseLostError` if it is gone.

        One try of at most ``timeout`` seconds, without retries: the caller beats again at its next tick.
        """
        return self._beat(f"/tasks/{task_id}/heartbeat", f"extend the lease on task {task_id}", lease_token, timeout)

    def _beat(self, path: str, what: str, lease_token: str, timeout: float) -> str:
        response = self._call("POST", path, what, lease_token=lease_token, http=self._http_beat,
                              timeout=(min(float(timeout), 5.0), float(timeout)))
        data = self._json(response, "the heartbeat")
        if not isinstance(data, dict) or "lease_expires_at" not in data:
            raise self._unexpected("the heartbeat", "no lease_expires_at")
        return str(data["lease_expires_at"])

    def release(self, task_id: int | str, lease_token: str) -> None:
        """Give a claimed task back so another reader can take it."""
        self._call("POST", f"/tasks/{task_id}/release", f"release task {task_id}", lease_token=lease_token)

    def submit(self, task_id: int | str, lease_token: str, seg_path: str | os.PathLike[str],
               sr_path: str | os.PathLike[str], idempotency_key: str) -> Submission:
        """Send the SEG and SR answering a task. Repeating it with the same ``idempotency_key`` stores it once."""
        seg, sr = Path(seg_path), Path(sr_path)
        for path in (seg, sr):
            if not path.is_file():
                raise DicomSegError(f"{path}: no such file to submit for task {task_id}")
        with seg.open("rb") as seg_file, sr.open("rb") as sr_file:
            response = self._call(
                "POST", f"/tasks/{task_id}/submit", f"submit task {task_id}", lease_token=lease_token,
                headers={"Idempotency-Key": idempotency_key},
                files={"seg": (seg.name, seg_file, "application/dicom"),
                       "sr": (sr.name, sr_file, "application/dicom")})
        data = self._json(response, "the submit")
        if not isinstance(data, dict) or data.get("submission_id") is None:
            raise self._unexpected("the submit", "no submission_id")
        replayed = bool(data.get("replayed")) or response.headers.get("Idempotent-Replayed") == "true"
        return Submission(submission_id=data["submission_id"], replayed=replayed, raw=data)

    def download_instances(self, task_id: int | str, lease_token: str, dest_dir: str | os.PathLike[str],
                           progress: Callable[[int, int | None], None] | None = None,
                           cancelled: Callable[[], bool] | None = None) -> Path:
        """Download the task's source DICOM files and unpack them into ``dest_dir``; returns ``dest_dir``.

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(bytes_received, bytes_total)`` after each piece (``bytes_total`` is None when the
            server does not say), from the thread that downloads.
        cancelled : callable, optional
            Asked after each piece; when it returns True the download stops, nothing is unpacked and
            :class:`TransferCancelledError` is raised.
        """
        dest = Path(dest_dir)
        what = f"download the images of task {task_id}"
        with tempfile.TemporaryFile() as archive:
            if cancelled is not None and cancelled():
                raise TransferCancelledError(f"The download of task {task_id}'s images was cancelled.",
                                             server_url=self.base_url)
            response = self._call("GET", f"/tasks/{task_id}/instances", what, lease_token=lease_token, stream=True)
            try:
                total = _content_length(response)
                received = 0
                if progress is not None:
                    progress(received, total)
                for chunk in response.iter_content(chunk_size=DOWNLOAD_CHUNK_BYTES):
                    archive.write(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
                    if cancelled is not None and cancelled():
                        raise TransferCancelledError(
                            f"The download of task {task_id}'s images was cancelled after {received} bytes.",
                            server_url=self.base_url)
            except requests.RequestException as exc:
                raise ServerUnreachableError(
                    f"the download of task {task_id}'s images from {self.base_url} broke off "
                    f"({_connection_reason(exc)}); try again", server_url=self.base_url) from None
            finally:
                response.close()
            archive.seek(0)
            try:
                with zipfile.ZipFile(archive) as zf:
                    extract_zip(zf, dest, origin=f"{self.base_url} (task {task_id})")
            except zipfile.BadZipFile:
                raise self._unexpected(f"the images of task {task_id}", "not a zip archive") from None
        return dest

    def guideline(self, project_id: int | str) -> str:
        """The YAML text of the project's current guideline version."""
        response = self._call("GET", f"/projects/{project_id}/guideline", f"fetch the guideline of project "
                              f"{project_id}")
        try:
            return response.content.decode("utf-8")
        except UnicodeDecodeError:
            raise self._unexpected(f"the guideline of project {project_id}", "not UTF-8 text") from None

    def download_guideline(self, project_id: int | str, dest_dir: str | os.PathLike[str],
                           name: str = "guideline.yaml") -> Path:
        """Save the project's current guideline as ``dest_dir/name`` with its reference images beside it, where
        the YAML says they are; every image is checked against the sha256 the server lists. Returns the YAML's
        path (``load_guideline`` then finds the images).

        Everything is fetched and checked before anything is written, and the YAML is written last: a failed
        download leaves no new YAML behind.
        """
        dest = Path(dest_dir)
        root = dest.resolve()
        text = self.guideline(project_id).encode("utf-8")
        what = f"list the files of the guideline of project {project_id}"
        listing = self._json(self._call("GET", f"/projects/{project_id}/guideline/files", what), what)
        files: list[tuple[Path, bytes]] = []
        for entry in listing:
            file_name, digest = str(entry.get("name", "")), str(entry.get("sha256", ""))
            path = _target_inside(root, file_name)
            if path is None or path == root / name:
                raise UnsafeArchiveError(f"guideline file {file_name!r} from {self.base_url} would be written "
                                         f"outside {dest} or over the guideline itself; nothing was saved")
            response = self._call("GET", f"/projects/{project_id}/guideline/files/{quote(file_name, safe='/')}",
                                  f"fetch {file_name} of the guideline of project {project_id}")
            if hashlib.sha256(response.content).hexdigest() != digest:
                raise self._unexpected(f"guideline file {file_name}", "its content does not match its sha256")
            files.append((path, response.content))
        dest.mkdir(parents=True, exist_ok=True)
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
        _write_atomically(dest / name, text)
        return dest / name

    # ------------------------------------------------------------ review and signatures
    def reviews(self, project_id: int | str) -> list[dict[str, Any]]:
        """The project's review rounds (a case is listed once all its reads are in); reviewers and admins."""
        data = self._json(self._call("GET", f"/projects/{project_id}/reviews",
                                     f"list the reviews of project {project_id}"), "the review list")
        if not isinstance(data, list):
            raise self._unexpected("the review list", "not a list")
        return data

    def claim_review(self, project_id: int | str) -> dict[str, Any] | None:
        """Claim the next review of a project: reads, agreement metrics, consensus and the lease token; ``None``
        when nothing is left for this reviewer."""
        response = self._call("POST", f"/projects/{project_id}/reviews/claim",
                              f"claim a review in project {project_id}", repeat_safe=False)
        if response.status_code == 204:
            return None
        data = self._json(response, "the review claim")
        if not isinstance(data, dict) or "review_id" not in data or "lease_token" not in data:
            raise self._unexpected("the review claim", "no review_id or lease_token")
        return data

    def heartbeat_review(self, review_id: int | str, lease_token: str,
                         timeout: float = HEARTBEAT_TIMEOUT_SECONDS) -> str:
        """Extend the lease on a claimed review; returns the new expiry. Raises :class:`LeaseLostError` if it is
        gone. One try, as :meth:`heartbeat`."""
        return self._beat(f"/reviews/{review_id}/heartbeat", f"extend the lease on review {review_id}", lease_token,
                          timeout)

    def download_review(self, review: dict[str, Any], dest_dir: str | os.PathLike[str]) -> dict[str, str]:
        """Save a claimed review's reader SEG + SR and the consensus into ``dest_dir``; returns name -> path."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        wanted = [(f"/submissions/{r['submission_id']}/{kind}", f"submission-{r['submission_id']}-{kind}.dcm")
                  for r in review.get("reads", []) for kind in ("seg", "sr")]
        if review.get("consensus"):
            wanted += [(f"/reviews/{review['review_id']}/consensus/{kind}", f"consensus-{kind}.dcm")
                       for kind in ("seg", "sr")]
        saved = {}
        for path, name in wanted:
            response = self._call("GET", path, f"download {name}", headers={"Accept": "application/dicom"})
            _write_atomically(dest / name, response.content)
            saved[name] = str(dest / name)
        return saved

    def decide(self, review_id: int | str, lease_token: str, idempotency_key: str, action: str,
               submission_id: int | None = None, reason: str | None = None) -> dict[str, Any]:
        """Decide a held review: ``accept`` a submission, ``consensus``, or ``return`` a submission with a reason.
        Repeating it with the same ``idempotency_key`` records it once."""
        body: dict[str, Any] = {"action": action, "submission_id": submission_id, "reason": reason}
        # the lease token as a plain header: a 409 here is often "not in review" (decided, returned), which the
        # server's detail says; it is not necessarily a lost lease
        response = self._call("POST", f"/reviews/{review_id}/decide", f"decide review {review_id}",
                              headers={"Idempotency-Key": idempotency_key, "X-Lease-Token": lease_token}, json=body)
        data = self._json(response, "the decision")
        if not isinstance(data, dict) or "decision_id" not in data:
            raise self._unexpected("the decision", "no decision_id")
        return data

    def decide_edited(self, review_id: int | str, lease_token: str, idempotency_key: str,
                      seg_path: str | os.PathLike[str], sr_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Decide a held review with an edited SEG + SR (exported with ``replaces=`` the SEG it was edited from)."""
        seg, sr = Path(seg_path), Path(sr_path)
        for path in (seg, sr):
            if not path.is_file():
                raise DicomSegError(f"{path}: no such file to send as review {review_id}'s edited result")
        with seg.open("rb") as seg_file, sr.open("rb") as sr_file:
            response = self._call("POST", f"/reviews/{review_id}/decide/edited", f"decide review {review_id}",
                                  headers={"Idempotency-Key": idempotency_key, "X-Lease-Token": lease_token},
                                  files={"seg": (seg.name, seg_file, "application/dicom"),
                                         "sr": (sr.name, sr_file, "application/dicom")})
        data = self._json(response, "the decision")
        if not isinstance(data, dict) or "decision_id" not in data:
            raise self._unexpected("the decision", "no decision_id")
        return data

    def retry_review(self, review_id: int | str) -> dict[str, Any]:
        """Measure a failed review round again (admins); returns the round as listed."""
        data = self._json(self._call("POST", f"/reviews/{review_id}/retry", f"retry review {review_id}",
                                     repeat_safe=False), "the retried review")
        if not isinstance(data, dict) or "status" not in data:
            raise self._unexpected("the retried review", "no status")
        return data

    def sign(self, submission_id: int | str, password: str, meaning: str,
             printed_name: str | None = None) -> dict[str, Any]:
        """Sign a submission's SEG with ``meaning``; the password is sent again (not the session token)."""
        return self._signature(f"/submissions/{submission_id}/sign", f"sign submission {submission_id}",
                               password, meaning, printed_name)

    def sign_review(self, review_id: int | str, which: str, password: str, meaning: str,
                    printed_name: str | None = None) -> dict[str, Any]:
        """Sign a review's ``consensus`` or ``edited`` SEG with ``meaning``; the password is sent again."""
        return self._signature(f"/reviews/{review_id}/{which}/sign", f"sign review {review_id}'s {which}",
                               password, meaning, printed_name)

    def _signature(self, path: str, what: str, password: str, meaning: str,
                   printed_name: str | None) -> dict[str, Any]:
        response = self._call("POST", path, what, repeat_safe=False,
                              json={"password": password, "meaning": meaning, "printed_name": printed_name})
        data = self._json(response, "the signature")
        if not isinstance(data, dict) or "signature_id" not in data:
            raise self._unexpected("the signature", "no signature_id")
        return data

    def verify_signature(self, signature_id: int | str) -> dict[str, Any]:
        """The server's check that the signed file still has the signed bytes."""
        data = self._json(self._call("GET", f"/signatures/{signature_id}/verify",
                                     f"verify signature {signature_id}"), "the verification")
        if not isinstance(data, dict) or "valid" not in data:
            raise self._unexpected("the verification", "no valid")
        return data

    # ------------------------------------------------------------ plumbing
    def _call(self, method: str, path: str, what: str, *, authenticated: bool = True, repeat_safe: bool = True,
              lease_token: str | None = None, headers: dict[str, str] | None = None,
              http: requests.Session | None = None, timeout: tuple[float, float] | None = None,
              **kwargs: Any) -> requests.Response:
        url = self.base_url + API_PREFIX + path
        all_headers = {"Accept": "application/json", **(headers or {})}
        if authenticated:
            if not self.token:
                raise AuthenticationError(f"not logged in to {self.base_url}: run `medannot client login "
                                          f"--server {self.base_url}` first", server_url=self.base_url)
            all_headers["Authorization"] = f"Bearer {self.token}"
        if lease_token is not None:
            all_headers["X-Lease-Token"] = lease_token
        if http is None:
            http = self._http if repeat_safe else self._http_once
        try:
            response = http.request(method, url, headers=all_headers, timeout=timeout or self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ServerUnreachableError(
                f"cannot reach the task server at {self.base_url} to {what} ({_connection_reason(exc)}); "
                "check the address and your network, or ask your lab whether the server is running",
                server_url=self.base_url) from None
        if 200 <= response.status_code < 300:
            return response
        self._raise_for(response, what, login=not authenticated, leased=lease_token is not None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, response: requests.Response, what: str, login: bool, leased: bool) -> None:
        code = response.status_code
        detail = _detail(response)
        said = f": {detail}" if detail else ""

        def failure(kind: type[TaskServerError], message: str) -> TaskServerError:
            return kind(message, server_url=self.base_url, status_code=code, detail=detail)

        if code == 401 and login:
            raise failure(AuthenticationError, f"the task server at {self.base_url} refused to {what}{said}; check "
                          "the username and password")
        if code == 401:
            raise failure(AuthenticationError, f"the task server at {self.base_url} no longer accepts your login"
                          f"{said}; run `medannot client login --server {self.base_url}` again")
        if code == 409 and leased:
            raise failure(LeaseLostError, f"could not {what}: the lease is no longer yours ("
                          f"{detail or 'it expired or the task went to someone else'}); claim a task again")
        if code >= 500 or code in TRANSIENT_STATUSES:
            raise failure(ServerUnreachableError, f"the task server at {self.base_url} could not {what} just now "
                          f"({code} {response.reason}{said}); try again later, or ask your lab whether the server "
                          "is running")
        raise failure(ServerRejectedError, f"the task server at {self.base_url} refused to {what} ({code} "
                      f"{response.reason}){said}")

    def _json(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._unexpected(what, f"not JSON but {response.headers.get('Content-Type', 'no content type')}"
                                   ) from None

    def _unexpected(self, what: str, problem: str) -> ServerResponseError:
        return ServerResponseError(f"{what} from {self.base_url} is not what a MedAnnot task server sends "
                                   f"({problem}); check that the address points at the lab's MedAnnot server",
                                   server_url=self.base_url)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- zip archives
#: The most a case's images may unpack to (``MEDANNOT_MAX_CASE_BYTES``, default 8 GiB: a 4,000-slice CT), and the
#: ratio of unpacked to packed size above which a large archive is a zip bomb, not DICOM (#14 I4).
MAX_CASE_BYTES = int(os.environ.get("MEDANNOT_MAX_CASE_BYTES", str(8 << 30)))
BOMB_RATIO, BOMB_MIN_BYTES = 200, 256 << 20


def extract_zip(zf: zipfile.ZipFile, dest: Path, origin: str = "the archive") -> list[Path]:
    """Unpack ``zf`` into ``dest`` after checking every entry stays inside it and the whole fits (size cap, free
    disk, no zip bomb); nothing is written otherwise.

    Raises
    ------
    UnsafeArchiveError
        An entry is absolute, climbs out with ``..``, names a drive, or is a symbolic link; or the archive unpacks
        to more than ``MAX_CASE_BYTES``, to more than the free disk, or suspiciously far beyond its packed size.
    """
    root = dest.resolve()
    plan: list[tuple[zipfile.ZipInfo, Path]] = []
    for info in zf.infolist():
        target = _target_inside(root, info.filename)
        if target is None or stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{origin}: refused to unpack zip entry {info.filename!r}: it would land "
                                     f"outside {dest}; nothing was unpacked, tell the server's administrator")
        plan.append((info, target))
    unpacked = sum(info.file_size for info, _ in plan)
    packed = sum(info.compress_size for info, _ in plan)
    if unpacked > MAX_CASE_BYTES:
        raise UnsafeArchiveError(f"{origin}: the images would unpack to {unpacked / 2**30:.1f} GiB, more than the "
                                 f"{MAX_CASE_BYTES / 2**30:.1f} GiB allowed (MEDANNOT_MAX_CASE_BYTES); nothing was "
                                 "unpacked")
    if unpacked > BOMB_MIN_BYTES and unpacked > BOMB_RATIO * max(packed, 1):
        raise UnsafeArchiveError(f"{origin}: {packed} bytes would unpack to {unpacked} ({unpacked // max(packed, 1)}"
                                 "x): not a case's images but a zip bomb; nothing was unpacked, tell the server's "
                                 "administrator")
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if unpacked > free:
        raise UnsafeArchiveError(f"{origin}: the images need {unpacked / 2**20:.0f} MiB but {root} has "
                                 f"{free / 2**20:.0f} MiB free; free disk space and download again")
    written = []
    for info, target in plan:
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
        written.append(target)
    return written


def _target_inside(root: Path, name: str) -> Path | None:
    """Where a relative ``name`` sent by the server lands below the resolved folder ``root``; ``None`` when it is
    empty, absolute, climbs out with ``..``, names a drive, or resolves outside ``root``."""
    name = name.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        return None
    target = root.joinpath(*parts)
    if target != root and root not in target.resolve().parents:
        return None
    return target


# ---------------------------------------------------------------- session file
def save_session(session: Session, home: Path | None = None) -> Path:
    """Write the token, server, expiry and username (never the password) to ``session.json``, readable by this user
    only."""
    folder = home or medannot_home()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SESSION_FILE
    partial = folder / (SESSION_FILE + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.chmod(partial, 0o600)  # a file left by an older version may have wider permissions
        json.dump({"server_url": session.server_url, "token": session.token, "expires_at": session.expires_at,
                   "username": session.username}, out)
    os.replace(partial, path)
    return path


def load_session(home: Path | None = None) -> Session | None:
    """The saved login, or ``None`` when there is none (or it is unreadable)."""
    path = (home or medannot_home()) / SESSION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Session(server_url=str(data["server_url"]), token=str(data["token"]),
                       expires_at=str(data.get("expires_at") or ""), username=str(data.get("username") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s is unreadable; log in again", path)
        return None


def clear_session(home: Path | None = None) -> bool:
    """Forget the saved login; True if there was one."""
    path = (home or medannot_home()) / SESSION_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# ---------------------------------------------------------------- helpers
def normalize_server_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash or ``/api/v1``."""
    text = url.strip().rstrip("/").removesuffix(API_PREFIX)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerAddressError(f"{url!r} is not a task server address: give it as https://host[:port]",
                                 server_url=url)
    return text


def _retry(retries: int, backoff_factor: float, repeat_safe: bool) -> Retry:
    if repeat_safe:
        return Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                     backoff_factor=backoff_factor, status_forcelist=RETRY_STATUSES, allowed_methods=None,
                     raise_on_status=False, respect_retry_after_header=True)
    return Retry(total=retries, connect=retries, read=False, status=0, other=0, backoff_factor=backoff_factor,
                 allowed_methods=None, raise_on_status=False)


def _http_session(retry: Retry) -> requests.Session:
    http = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def _detail(response: requests.Response) -> str:
    """The server's reason: FastAPI's ``detail`` (a string or a list of validation errors) or a short body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
            for d in detail)
    return "" if detail is None else str(detail)


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS certificate problem"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer in time"
    for needle, reason in (("Connection refused", "connection refused: nothing listens there"),
                           ("Name or service not known", "unknown host name"),
                           ("nodename nor servname", "unknown host name"),
                           ("getaddrinfo failed", "unknown host name"),
                           ("Temporary failure in name resolution", "host name lookup failed"),
                           ("Network is unreachable", "network unreachable"),
                           ("RemoteDisconnected", "the connection was cut before the answer came"),
                           ("Connection aborted", "the connection was cut before the answer came"),
                           ("Connection reset", "the connection was reset"),
                           ("IncompleteRead", "the answer was cut off")):
        if needle in text:
            return reason
    return type(exc).__name__


def _content_length(response: requests.Response) -> int | None:
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    # The server writes naive UTC times.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
