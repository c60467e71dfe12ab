"""The REST API (FastAPI) under ``/api/v1``; OpenAPI at ``/docs``; the lab dashboard at ``/``. Routes stay thin: the
work is in the modules."""


import asyncio
import logging
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

import medannot
from medannot.errors import MedAnnotError
from medannot.server import projects as project_service
from medannot.server import queue, review, security, signatures, submissions, uploads
from medannot.server.audit import append_audit, audit_entries
from medannot.server.config import ServerSettings
from medannot.server.headers import SecurityHeaders
from medannot.server.db import make_engine, session_factory, transaction, upgrade_database
from medannot.server.models import Case, Project, Submission, Task, User
from medannot.server.storage import ObjectStore

logger = logging.getLogger(__name__)

MAX_ROW_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL; a larger one is refused (422), never sent to SQL
RowId = Annotated[int, PathParam(ge=1, le=MAX_ROW_ID)]
LOGIN_WAIT_SECONDS = 2.0  # how long a login waits for a free password check before 503
# a refused login (429, 503) is answered after this pause: an idle coroutine costs the server nothing, and a
# client hammering the login on N connections is slowed to N requests per second
REFUSAL_PAUSE_SECONDS = 1.0


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")


class LoginRequest(BaseModel):
    username: str
    password: str


class DecisionRequest(BaseModel):
    action: str  # accept | consensus | return
    submission_id: Annotated[int, Field(ge=1, le=MAX_ROW_ID)] | None = None
    # a reason may span lines, but carries no other control character (a NUL would be stored by SQLite and end
    # up in the reader's worklist and the audit trail; PostgreSQL cannot store it at all)
    reason: Annotated[str, Field(max_length=4000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")] | None = None


class SignRequest(BaseModel):
    password: str
    meaning: str  # authored | reviewed | approved
    # the signer's name as the signature shows it (and an approval's SR as VerifyingObserverName): one line of text
    printed_name: Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]*$",
                                       description="one line, no control characters")] | None = None


class LoginResponse(BaseModel):
    access_token: str
    expires_at: str
    token_type: str = "bearer"


def _files_body(*names: str) -> dict[str, object]:
    """The OpenAPI request body of an upload read by the route itself (after its checks, not before them)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": list(names),
        "properties": {name: {"type": "string", "format": "binary"} for name in names}}}}}}


def document_refusal_details(app: FastAPI) -> None:
    """Make the schema's 422 say what the server sends. FastAPI documents every 422 as its own validation error
    (``detail``: a list of field errors), but the server also answers 422 with a one-line ``detail`` string: an
    upload that is not the files asked for, a result or decision it refuses, a value the database cannot take. A
    client generated from the schema must be able to read both."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI builds it once and keeps it
        error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if error is not None and "anyOf" not in error["properties"]["detail"]:
            fields = error["properties"]["detail"]
            error["properties"]["detail"] = {
                "title": "Detail", "description": "what is wrong with the request: the invalid fields, or one line "
                                                  "saying why the server refuses it and what to do",
                "anyOf": [{"type": "string"}, {key: value for key, value in fields.items() if key != "title"}]}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class BodyLimit:
    """Refuse any request whose declared body is larger than the limit before it is read (HTTP 413), and stop one
    that grows past it while streaming in (routes reading uploads apply their own limit after their checks)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": f"the request body is {int(length) / 1048576:g} MiB, more than this "
                                               f"server accepts ({self.limit / 1048576:g} MiB)"}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise uploads.UploadTooLarge(f"the request body grew past {self.limit / 1048576:g} MiB, more "
                                                 "than this server accepts")
            return message

        await self.app(scope, limited_receive, send)


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the application for a database and data folder (migrating the schema first)."""
    engine = make_engine(settings.db_url)
    upgrade_database(engine)
    factory = session_factory(engine)
    store = ObjectStore(settings.data_dir)
    bearer = HTTPBearer(auto_error=False)
    # FastAPIOffline serves Swagger UI and ReDoc from the installed package: hospital networks often have no
    # internet, and FastAPI's default docs page loads its scripts from a CDN.
    app = FastAPIOffline(title="MedAnnot task server", version=medannot.__version__,
                         description="Claim leased annotation tasks, submit DICOM-SEG + SR results, keep an audit trail.")
    app.state.settings, app.state.engine, app.state.factory = settings, engine, factory
    document_refusal_details(app)
    app.state.store = store

    def db() -> Iterator[Session]:
        # the transaction (BEGIN IMMEDIATE on SQLite) starts at the first query, after authentication
        with transaction(factory) as session:
            yield session

    def current_user(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
        # its own short transaction: on SQLite a request must never wait for its own second connection
        user = None
        if credentials:
            with transaction(factory) as session:
                user = security.resolve_token(session, credentials.credentials)
        if user is None:
            raise HTTPException(401, "not logged in, or the session expired: log in again",
                                headers={"WWW-Authenticate": "Bearer"})
        return user

    def role(*allowed: str):  # type: ignore[no-untyped-def]
        def check(user: Annotated[User, Depends(current_user)]) -> User:  # noqa: B008
            if user.role not in allowed:
                raise HTTPException(403, f"role {user.role} may not do this (needs {' or '.join(allowed)})")
            return user
        return check

    Annotator = Annotated[User, Depends(role("annotator"))]
    AnyUser = Annotated[User, Depends(current_user)]
    Admin = Annotated[User, Depends(role("admin"))]
    Reviewer = Annotated[User, Depends(role("reviewer"))]
    ReviewerOrAdmin = Annotated[User, Depends(role("reviewer", "admin"))]
    # scope="function": commit before the response is sent, so a client never sees a success that was not stored
    DB = Annotated[Session, Depends(db, scope="function")]
    api = APIRouter(prefix="/api/v1")

    @app.exception_handler(MedAnnotError)
    async def medannot_error(_request: Request, exc: MedAnnotError) -> JSONResponse:
        from medannot.errors import SourceImageError

        if isinstance(exc, SourceImageError):
            # the detail names server paths, the PACS URL and its service account: for the server log only
            reference = uuid.uuid4().hex[:12]
            logger.error("image source failure (reference %s): %s", reference, exc)
            return JSONResponse({"detail": "the case's images could not be fetched from the lab's image source; "
                                           f"tell the lab's administrator the reference {reference} (the server log "
                                           "has the details)", "reference": reference}, status_code=502)
        if isinstance(exc, security.PasswordChecksBusy):
            return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        status = {queue.LeaseError: 409, queue.TaskNotFound: 404, submissions.SubmissionRejected: 422,
                  submissions.SubmissionConflict: 409, review.ReviewNotFound: 404, review.NotInReview: 409,
                  review.ReviewRefused: 403, review.DecisionRejected: 422, signatures.WrongPassword: 403,
                  signatures.SignatureRefused: 403, signatures.SignatureNotFound: 404,
                  project_service.ProjectError: 404, project_service.NotAMember: 403,
                  uploads.UploadTooLarge: 413,
                  uploads.UploadMalformed: 422}.get(type(exc), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(DataError)
    async def database_data_error(_request: Request, exc: DataError) -> JSONResponse:
        # what the database refuses as a value (PostgreSQL: a NUL character in text) is the request's fault, not a 500
        logger.warning("request refused by the database as data: %s", str(exc.orig).splitlines()[0])
        return JSONResponse({"detail": "a value in the request cannot be stored or looked up (text with a NUL "
                                       "character, or a number out of range); nothing was changed"}, status_code=422)

    security.set_password_check_limit(settings.password_checks or security.default_password_checks())
    throttle = security.ClientThrottle(free_failures=settings.login_client_failures,
                                       first_block_seconds=settings.login_client_block_seconds)
    app.state.login_throttle = throttle  # the dashboard's sign-in counts against the same per-client brake
    # logins wait for a password check here, in the event loop: a waiting login holds no thread and no database
    # connection, and at most a few wait; the rest are told to come back (503) instead of queueing without limit
    login_slots = anyio.CapacityLimiter(security.password_checks.permits)
    # logins run in their own few threads, below the priority of everything else (see lower_thread_priority)
    login_threads = ThreadPoolExecutor(max_workers=security.password_checks.permits, thread_name_prefix="login",
                                       initializer=security.lower_thread_priority)
    max_waiting_logins = 2 * security.password_checks.permits

    @api.post("/auth/login", response_model=LoginResponse, tags=["auth"],
              responses={401: {"description": "invalid user name or password"},
                         429: {"description": "too many failed logins from this client; see Retry-After"},
                         503: {"description": "too many logins at once; see Retry-After"}})
    async def login(body: LoginRequest, request: Request) -> LoginResponse:
        client = request.client.host if request.client else "unknown"
        wait = throttle.retry_after(client)
        if wait:
            await anyio.sleep(min(wait, REFUSAL_PAUSE_SECONDS))
            raise HTTPException(429, f"too many failed logins from this computer ({client}): try again in {wait} s",
                                headers={"Retry-After": str(wait)})
        acquired = False
        if login_slots.statistics().tasks_waiting < max_waiting_logins:
            with anyio.move_on_after(LOGIN_WAIT_SECONDS):
                await login_slots.acquire()
                acquired = True
        else:
            await anyio.sleep(REFUSAL_PAUSE_SECONDS)
        if not acquired:
            raise HTTPException(503, "the server is busy with other logins: try again in a moment",
                                headers={"Retry-After": "1"})
        try:
            issued = await asyncio.wrap_future(login_threads.submit(
                security.login, factory, body.username, body.password, client, throttle))
        finally:
            login_slots.release()
        if issued is None:  # failures are audited and committed
            raise HTTPException(401, "invalid user name or password")
        return LoginResponse(access_token=issued.token, expires_at=iso(issued.expires_at) or "")

    @api.post("/auth/logout", status_code=204, tags=["auth"])
    def logout(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], session: DB,
               _user: AnyUser) -> Response:
        assert credentials is not None
        security.logout(session, credentials.credentials)
        return Response(status_code=204)

    @api.get("/projects", tags=["projects"])
    def list_projects(session: DB, user: AnyUser) -> list[dict[str, object]]:
        """The projects you are a member of (an admin: all)."""
        return [project_service.project_summary(session, p) for p in project_service.member_projects(session, user)]

    @api.get("/projects/{project_id}/guideline", response_class=PlainTextResponse, tags=["projects"])
    def project_guideline(project_id: RowId, session: DB, user: AnyUser) -> PlainTextResponse:
        project = project_service.project_for(session, user, project_id)
        version = project_service.current_version(session, project)
        assert version is not None
        return PlainTextResponse(version.yaml_text, media_type="text/yaml",
                                 headers={"X-Guideline-Version": version.version, "X-Guideline-Sha256": version.sha256})

    @api.get("/projects/{project_id}/guideline/files", tags=["projects"])
    def project_guideline_files(project_id: RowId, session: DB, user: AnyUser) -> list[dict[str, object]]:
        """The files of the current guideline version (reference images), to put next to its YAML."""
        project = project_service.project_for(session, user, project_id)
        version = project_service.current_version(session, project)
        assert version is not None
        return [{"name": name, "sha256": digest, "size": size}
                for name, digest, size in project_service.guideline_files(session, version)]

    @api.get("/projects/{project_id}/guideline/files/{name:path}", tags=["projects"],
             response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
    def project_guideline_file(project_id: RowId, name: str, session: DB, user: AnyUser) -> Response:
        project = project_service.project_for(session, user, project_id)
        version = project_service.current_version(session, project)
        assert version is not None
        stored = project_service.guideline_file(session, version, name)
        if stored is not None:
            return Response(stored.content, media_type="application/octet-stream",
                            headers={"X-Sha256": stored.sha256})
        raise HTTPException(status_code=404, detail=f"guideline {version.guideline_id} {version.version} of "
                                                    f"project {project_id} has no file {name!r}")

    def task_body(task: Task, case: Case, project: Project, session: Session, lease_token: str) -> dict[str, object]:
        version = project_service.current_version(session, project)
        return {"task_id": task.id, "case_id": case.case_key, "project_id": project.id, "slot": task.slot,
                "lease_token": lease_token, "lease_expires_at": iso(task.lease_expires_at),
                "study_uid": case.study_uid, "series_uid": case.series_uid,
                "guideline_id": project.guideline_id, "guideline_version": version.version if version else None,
                "guideline_sha256": version.sha256 if version else None,
                "returned_reason": review.return_reason(session, task.id)}

    @api.post("/projects/{project_id}/claim", tags=["tasks"], responses={204: {"description": "nothing left"}})
    def claim(project_id: RowId, session: DB, user: Annotator) -> Response:
        project = project_service.project_for(session, user, project_id)
        claimed = queue.claim_next_task(session, user, project.id, settings.lease_seconds)
        if claimed is None:
            return Response(status_code=204)
        return JSONResponse(task_body(claimed.task, claimed.case, project, session, claimed.lease_token))

    LeaseToken = Annotated[str | None, Header(alias="X-Lease-Token")]

    @api.post("/tasks/{task_id}/heartbeat", tags=["tasks"])
    def heartbeat(task_id: RowId, session: DB, user: Annotator, lease: LeaseToken = None) -> dict[str, object]:
        task = queue.heartbeat(session, user, task_id, lease, settings.lease_seconds)
        session.flush()
        return {"task_id": task.id, "lease_expires_at": iso(task.lease_expires_at)}

    @api.post("/tasks/{task_id}/release", status_code=204, tags=["tasks"])
    def release(task_id: RowId, session: DB, user: Annotator, lease: LeaseToken = None) -> Response:
        queue.release(session, user, task_id, lease)
        return Response(status_code=204)

    limit = settings.max_upload_bytes

    @api.post("/tasks/{task_id}/submit", status_code=201, tags=["tasks"], openapi_extra=_files_body("seg", "sr"))
    async def submit(task_id: RowId, request: Request, user: Annotator, lease: LeaseToken = None,
                     idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JSONResponse:
        """Send the SEG and SR (multipart files ``seg`` and ``sr``). Login, the task, the lease and the size are
        checked before the body is read; nothing is stored unless every check passes."""
        key = idempotency_key or ""
        # a replay too: its files are read (bounded) only to be compared with what the key stored
        await run_in_threadpool(submissions.begin_submit, factory, user.id, task_id, lease, key)
        files = await uploads.receive_files(request, ("seg", "sr"), limit)
        try:
            result = await run_in_threadpool(submissions.submit, factory, store, user.id, task_id, lease, key,
                                             files["seg"].file, files["sr"].file, limit,
                                             settings.correction_seconds)
        finally:
            for upload in files.values():
                await upload.close()
        if result.review_id is not None:  # the case's last read: measure it for review (failures are stored)
            await run_in_threadpool(review.prepare_review, factory, store, result.review_id)
        body = {"submission_id": result.submission.id, "task_id": result.submission.task_id,
                "seg_sha256": result.submission.seg_sha256, "sr_sha256": result.submission.sr_sha256,
                "replaces": result.submission.replaces_id, "replayed": result.replayed}
        return JSONResponse(body, status_code=201, headers={"Idempotent-Replayed": str(result.replayed).lower()})

    @api.get("/tasks/{task_id}/instances", tags=["tasks"], response_class=FileResponse)
    def instances(task_id: RowId, user: Annotator, lease: LeaseToken = None) -> FileResponse:
        from medannot.server import pacs

        with transaction(factory) as session:
            task = queue.held_lease(session, user, task_id, lease)
            case = session.get(Case, task.case_id)
            assert case is not None
            source_text = case.source
            name, case_id = case.case_key, case.id
        import shutil

        workdir = Path(tempfile.mkdtemp(prefix="medannot-instances-"))
        try:
            files = pacs.fetch_series(pacs.parse_source(source_text), workdir / "files",
                                      pacs.DicomWebSettings.from_env())
            archive = pacs.zip_series(files, workdir / "instances.zip")
            # what the reader got is what their SEG may reference (files are named <SOPInstanceUID>.dcm)
            submissions.remember_instances(factory, case_id, [f.name[:-len(".dcm")] for f in files])
        except BaseException:  # a failed fetch leaves no patient images behind in the temporary folder
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        with transaction(factory) as session:  # who took which patient's images out of the server, and when
            append_audit(session, user.username, "case.download", f"task:{task_id}", None,
                         {"case": name, "files": len(files), "bytes": archive.stat().st_size})

        return FileResponse(archive, media_type="application/zip", filename=f"{name}.zip",
                            background=BackgroundTask(shutil.rmtree, workdir, True))

    @api.get("/projects/{project_id}/archive", tags=["projects"])
    def list_archive(project_id: RowId, session: DB, _user: Admin) -> dict[str, object]:
        """The project's results archive and its outbox: each final file, sent or waiting (attempts, last error)."""
        from medannot.server.archive import outbox_rows

        project = project_service.get_project(session, project_id)
        return {"results_dicomweb": project.results_dicomweb, "files": outbox_rows(session, project.id)}

    @api.get("/projects/{project_id}/reviews", tags=["review"])
    def list_reviews(project_id: RowId, session: DB, user: ReviewerOrAdmin) -> list[dict[str, object]]:
        """Review rounds of the project's cases (a case appears only once all its reads are in)."""
        project = project_service.project_for(session, user, project_id)
        rows = session.scalars(select(review.Review).where(review.Review.project_id == project.id)
                               .order_by(review.Review.id))
        return [review.review_summary(session, r) for r in rows]

    def review_task_body(r: "review.Review", session: Session, lease_token: str) -> dict[str, object]:
        return {**review.review_detail(session, r), "lease_token": lease_token,
                "lease_expires_at": iso(r.lease_expires_at)}

    @api.post("/projects/{project_id}/reviews/claim", tags=["review"],
              responses={204: {"description": "nothing left to review"}})
    def claim_review(project_id: RowId, session: DB, user: Reviewer) -> Response:
        project = project_service.project_for(session, user, project_id)
        claimed = review.claim_next_review(session, user, project.id, settings.lease_seconds)
        if claimed is None:
            return Response(status_code=204)
        held, token = claimed
        return JSONResponse(review_task_body(held, session, token))

    @api.get("/reviews/{review_id}", tags=["review"])
    def get_review(review_id: RowId, session: DB, user: ReviewerOrAdmin) -> dict[str, object]:
        found = review.get_review(session, review_id)
        project_service.project_for(session, user, found.project_id)
        return review.review_detail(session, found)

    @api.post("/reviews/{review_id}/heartbeat", tags=["review"])
    def review_heartbeat(review_id: RowId, session: DB, user: Reviewer, lease: LeaseToken = None) -> dict[str, object]:
        from datetime import timedelta

        held = review.held_review(session, user, review_id, lease)
        held.lease_expires_at = review.utcnow() + timedelta(seconds=settings.lease_seconds)
        session.flush()
        return {"review_id": held.id, "lease_expires_at": iso(held.lease_expires_at)}

    @api.post("/reviews/{review_id}/decide", status_code=201, tags=["review"])
    def decide(review_id: RowId, body: DecisionRequest, user: Reviewer, lease: LeaseToken = None,
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JSONResponse:
        result = review.decide(factory, user.id, review_id, lease, idempotency_key or "", body.action,
                               body.submission_id, body.reason)
        d = result.decision
        return JSONResponse({"decision_id": d.id, "review_id": d.review_id, "action": d.action,
                             "submission_id": d.submission_id, "reason": d.reason, "replayed": result.replayed},
                            status_code=201, headers={"Idempotent-Replayed": str(result.replayed).lower()})

    @api.post("/reviews/{review_id}/decide/edited", status_code=201, tags=["review"],
              openapi_extra=_files_body("seg", "sr"))
    async def decide_edited(review_id: RowId, request: Request, user: Reviewer, lease: LeaseToken = None,
                            idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
                            ) -> JSONResponse:
        """Decide with an edited segmentation (multipart files ``seg`` and ``sr``): a new SEG + SR that references
        the read or consensus SEG it was edited from (``export_segmentation(replaces=...)``). The review lease and
        the size are checked before the body is read."""
        await run_in_threadpool(review.begin_decision, factory, user.id, review_id, lease, idempotency_key or "")
        files = await uploads.receive_files(request, ("seg", "sr"), limit)
        try:
            edited = await run_in_threadpool(review.parse_edited, store, files["seg"].file, files["sr"].file, limit)
        finally:
            for upload in files.values():
                await upload.close()
        result = await run_in_threadpool(review.decide, factory, user.id, review_id, lease, idempotency_key or "",
                                         "edited", edited=edited)
        d = result.decision
        return JSONResponse({"decision_id": d.id, "review_id": d.review_id, "action": d.action,
                             "seg_sha256": edited.seg_sha256, "edited_from_uid": edited.edited_from_uid,
                             "replayed": result.replayed},
                            status_code=201, headers={"Idempotent-Replayed": str(result.replayed).lower()})

    @api.post("/reviews/{review_id}/retry", tags=["review"])
    def retry_review(review_id: RowId, user: Admin) -> dict[str, object]:
        """Measure a failed review round again (its error is kept in the audit trail)."""
        review.retry_review(factory, store, review_id, user.username)
        with transaction(factory) as session:
            return review.review_summary(session, review.get_review(session, review_id))

    def _file(sha: str | None, kind: str) -> Response:
        if sha is None:
            raise HTTPException(404, "no such file")
        return Response(store.get(sha), media_type="application/dicom", headers={"X-Sha256": sha})

    @api.get("/submissions/{submission_id}/{kind}", tags=["review"], response_class=Response,
             responses={200: {"content": {"application/dicom": {}}}})
    def submission_file(submission_id: RowId, kind: str, session: DB, user: AnyUser) -> Response:
        """A read's SEG or SR: its own reader, or reviewers and admins once all reads of the case are in."""
        if kind not in ("seg", "sr"):
            raise HTTPException(404, f"no file {kind!r}: use seg or sr")
        submission = session.get(Submission, submission_id)
        if submission is None:
            raise HTTPException(404, f"no submission {submission_id}")
        if not review.visible_submission(session, user, submission):
            raise HTTPException(403, f"submission {submission_id} is not visible to you: readers see only their "
                                     "own reads, reviewers a read once all reads of its case are in")
        return _file(submission.seg_sha256 if kind == "seg" else submission.sr_sha256, kind)

    @api.get("/reviews/{review_id}/{which}/{kind}", tags=["review"], response_class=Response,
             responses={200: {"content": {"application/dicom": {}}}})
    def review_file(review_id: RowId, which: str, kind: str, session: DB, _user: ReviewerOrAdmin) -> Response:
        """The consensus or the edited SEG / SR of a review."""
        r = review.get_review(session, review_id)
        if which not in ("consensus", "edited") or kind not in ("seg", "sr"):
            raise HTTPException(404, f"no file {which}/{kind}: use consensus or edited, then seg or sr")
        shas = {("consensus", "seg"): r.consensus_seg_sha256, ("consensus", "sr"): r.consensus_sr_sha256,
                ("edited", "seg"): r.edited_seg_sha256, ("edited", "sr"): r.edited_sr_sha256}
        return _file(shas[(which, kind)], kind)

    @api.post("/submissions/{submission_id}/sign", status_code=201, tags=["signatures"])
    def sign_submission(submission_id: RowId, body: SignRequest, user: AnyUser) -> dict[str, object]:
        """Sign a read's SEG; the password is asked again (a wrong one counts like a failed login)."""
        made = signatures.sign(factory, store, user.id, body.password, body.meaning, body.printed_name,
                               submission_id=submission_id)
        return signatures.signature_body(made)

    @api.post("/reviews/{review_id}/{which}/sign", status_code=201, tags=["signatures"])
    def sign_review_file(review_id: RowId, which: str, body: SignRequest, user: ReviewerOrAdmin) -> dict[str, object]:
        """Sign a review's consensus or edited SEG (``which``)."""
        made = signatures.sign(factory, store, user.id, body.password, body.meaning, body.printed_name,
                               review_id=review_id, which=which)
        return signatures.signature_body(made)

    @api.get("/signatures/{signature_id}/verify", tags=["signatures"])
    def verify_signature(signature_id: RowId, session: DB, _user: AnyUser) -> dict[str, object]:
        """Whether the stored signed file still has exactly the signed bytes."""
        sig = signatures.get_signature(session, signature_id)
        result = signatures.verify(session, store, sig)
        return {**signatures.signature_body(sig), "valid": result.valid, "detail": result.detail}

    @api.get("/signatures/{signature_id}/sr", tags=["signatures"], response_class=Response,
             responses={200: {"content": {"application/dicom": {}}}})
    def verified_sr(signature_id: RowId, session: DB, _user: AnyUser) -> Response:
        """The SR an "approved" signature reissued with VerificationFlag VERIFIED (its signer and time)."""
        sig = signatures.get_signature(session, signature_id)
        if sig.verified_sr_sha256 is None:
            raise HTTPException(404, f"signature {signature_id} ({sig.meaning}) has no verified SR; only an "
                                     "'approved' signature reissues the SR as VERIFIED")
        return _file(sig.verified_sr_sha256, "sr")

    def signature_of(signature_id: int) -> "signatures.Signature":
        with transaction(factory) as session:
            return signatures.get_signature(session, signature_id)

    @api.post("/signatures/{signature_id}/verify", tags=["signatures"], openapi_extra=_files_body("file"))
    async def verify_signature_file(signature_id: RowId, request: Request, _user: AnyUser) -> dict[str, object]:
        """Whether an uploaded file (multipart file ``file``) is exactly the bytes the signature was made over."""
        sig = await run_in_threadpool(signature_of, signature_id)
        files = await uploads.receive_files(request, ("file",), limit)
        try:
            result = await run_in_threadpool(signatures.verify_file, sig, files["file"].file)
        finally:
            await files["file"].close()
        return {**signatures.signature_body(sig), "valid": result.valid, "detail": result.detail}

    @api.get("/audit", tags=["admin"])
    def audit(session: DB, _user: Admin, after: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
              limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[dict[str, object]]:
        """A page of the audit trail: at most ``limit`` records after sequence number ``after`` (page on with the
        last one's ``seq``)."""
        return [e.__dict__ for e in audit_entries(session, after, limit)]

    @api.post("/projects/{project_id}/package", tags=["admin"], response_class=Response,
              responses={200: {"content": {"application/zip": {}}}})
    def build_package(project_id: RowId, session: DB, _user: Admin, require_final: bool = False) -> Response:
        """The project's submission package (BagIt bag, unsigned) as a zip; sign it offline with
        'medannot package build --sign-key' where the key lives."""
        from medannot.package.zipped import package_zip

        return package_zip(session, settings.data_dir, project_id, require_final)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": medannot.__version__}

    app.include_router(api)
    from medannot.server.web import install_dashboard

    install_dashboard(app, settings, factory)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: a refused upload (413) gets the headers too
    return app
