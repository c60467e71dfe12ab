"""The dashboard's routes: sign-in and sign-out, the projects page, a project's cases, a case, and the users page.

Every page is rendered on the server; the only asset is a local stylesheet. A page needs a signed-in session
(else it sends the browser to the sign-in page with the page kept in ``?next=``); every POST form needs the
session's CSRF token; the role decides which pages open (a refused one is a 403 page).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Annotated
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session, sessionmaker

import medannot
from medannot.errors import MedAnnotError
from medannot.server import security
from medannot.server import projects as project_service
from medannot.server.config import ServerSettings
from medannot.server.db import transaction
from medannot.server.models import Case, Project, User
from medannot.server.web import activity, packages, progress
from medannot.server.web.case_record import audit_values, case_record
from medannot.server.web.sessions import (
    SESSION_COOKIE, SIGNIN_COOKIE, csrf_token, local_path, new_signin_nonce, same_token,
)

logger = logging.getLogger(__name__)

WEB_DIR = resources.files("medannot.server.web")
# Nothing but this server's own stylesheet may load; no script at all; no framing (clickjacking); forms post here.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
CASES_PER_PAGE = 100
STALE_FORM = ("This form has expired or was not sent from this site, so nothing was done. Open the page again "
              "and resend it.")


class PageError(MedAnnotError):
    """A page cannot be shown to this visitor: shown as an error page with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SignInRequired(Exception):
    """No valid session (none, expired, revoked): the browser goes to the sign-in page, keeping ``next``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class Visitor:
    """The signed-in user of a request (plain values: the error page renders after the transaction has ended) and
    the CSRF token of their session's forms."""

    user_id: int
    username: str
    role: str
    csrf: str

    @property
    def is_staff(self) -> bool:  # reviewers and admins see cases, reads and agreement (blinding: not annotators)
        return self.role in ("reviewer", "admin")


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _number(value: float | None, digits: int = 3) -> str:
    return "\u2013" if value is None else f"{value:.{digits}f}"


_templates = Environment(loader=FileSystemLoader(str(WEB_DIR / "templates")), autoescape=True,
                         undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_templates.filters.update(when=_when, number=_number, audit_values=audit_values)
_templates.globals.update(version=medannot.__version__, status_labels=progress.STATUS_LABELS)


def render(name: str, http_status: int = 200, visitor: Visitor | None = None, **context: object) -> HTMLResponse:
    html = _templates.get_template(name).render(visitor=visitor, **context)
    return HTMLResponse(html, status_code=http_status, headers=PAGE_HEADERS)


def _here(request: Request) -> str:
    """The page to come back to after signing in: this page for a GET, the page the form was on for a POST."""
    if request.method == "GET":
        query = request.url.query
        return request.url.path + (f"?{query}" if query else "")
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc == request.url.netloc and referer.path:
        return local_path(referer.path + (f"?{referer.query}" if referer.query else ""))
    return "/"


def signed_in(session: Session, request: Request) -> Visitor:
    """The visitor of a request with a valid session cookie (touching its idle clock), else SignInRequired."""
    token = request.cookies.get(SESSION_COOKIE)
    user = security.resolve_token(session, token) if token else None
    if user is None or token is None:
        raise SignInRequired(_here(request))
    visitor = Visitor(user.id, user.username, user.role, csrf_token(token))
    request.state.visitor = visitor  # for the error page's header
    return visitor


def require_role(visitor: Visitor, *roles: str) -> None:
    if visitor.role not in roles:
        raise PageError(403, f"This page is for the role {' or '.join(roles)}; you are signed in as "
                             f"{visitor.username} ({visitor.role}).")


def check_form(visitor: Visitor, token: str) -> None:
    if not same_token(visitor.csrf, token):
        logger.warning("dashboard: refused a form post of %s without a valid CSRF token", visitor.username)
        raise PageError(403, STALE_FORM)


def _cookie_secure(settings: ServerSettings, request: Request) -> bool:
    return settings.behind_tls or request.url.scheme == "https"


def install_dashboard(app: FastAPI, settings: ServerSettings, factory: sessionmaker[Session]) -> None:
    """Add the dashboard's pages at ``/`` and its stylesheet at ``/static`` to the server's app."""
    router = APIRouter(include_in_schema=False)
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="dashboard-static")

    @app.exception_handler(SignInRequired)
    async def sign_in_first(_request: Request, exc: SignInRequired) -> Response:
        # the stale cookie is left alone: deleting it here would let another site sign a visitor out
        return RedirectResponse(f"/signin?next={quote(exc.next_path, safe='/')}", status_code=303)

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> HTMLResponse:
        return render("error.html", exc.status, getattr(request.state, "visitor", None), message=str(exc),
                      status=exc.status)

    def visitor_or_none(request: Request) -> Visitor | None:
        with transaction(factory) as session:
            try:
                return signed_in(session, request)
            except SignInRequired:
                return None

    def dashboard_path(request: Request) -> bool:
        return not request.url.path.startswith(("/api/", "/static/", "/docs", "/openapi"))

    @app.exception_handler(StarletteHTTPException)
    async def not_found_page(request: Request, exc: StarletteHTTPException) -> Response:
        # an unknown address is a page for a signed-in visitor; the API (and anyone else) keeps its JSON answer
        if exc.status_code == 404 and dashboard_path(request):
            visitor = await run_in_threadpool(visitor_or_none, request)
            if visitor is not None:
                return render("error.html", 404, visitor, status=404,
                              message=f"There is no page {request.url.path}.")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def bad_address_page(request: Request, exc: RequestValidationError) -> Response:
        # /projects/abc or ?page=x on a page: a 404 (a path) or 400 (a query) page, not the API's JSON
        if dashboard_path(request) and request.method == "GET":
            visitor = await run_in_threadpool(visitor_or_none, request)
            if visitor is not None:
                in_path = any(error.get("loc", ("",))[0] == "path" for error in exc.errors())
                return render("error.html", 404 if in_path else 400, visitor, status=404 if in_path else 400,
                              message=f"There is no page {request.url.path}." if in_path else
                              f"The address {request.url.path}?{request.url.query} has a value this page cannot use.")
        return await request_validation_exception_handler(request, exc)

    def signin_page(request: Request, next_path: str, status: int = 200, error: str | None = None,
                    username: str = "") -> HTMLResponse:
        nonce = request.cookies.get(SIGNIN_COOKIE) if status == 200 else None
        nonce = nonce or new_signin_nonce()
        response = render("signin.html", status, None, csrf=nonce, next_path=local_path(next_path), error=error,
                          username=username)
        response.set_cookie(SIGNIN_COOKIE, nonce, httponly=True, samesite="strict", path="/signin",
                            secure=_cookie_secure(settings, request))
        return response

    @router.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
        with transaction(factory) as session:
            token = request.cookies.get(SESSION_COOKIE)
            if token and security.resolve_token(session, token) is not None:
                return RedirectResponse(local_path(next), status_code=303)
        return signin_page(request, next)

    @router.post("/signin", response_class=HTMLResponse)
    def signin(request: Request, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
               csrf: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:  # noqa: A002
        if not same_token(request.cookies.get(SIGNIN_COOKIE), csrf):
            logger.warning("dashboard: refused a sign-in post without a valid CSRF token")
            return signin_page(request, next, 403, STALE_FORM, username)
        # the API's own login: the same throttling (per client, then per account), the same audit records
        client = request.client.host if request.client else "unknown"
        throttle = request.app.state.login_throttle
        wait = throttle.retry_after(client)
        if wait:
            return signin_page(request, next, 429, f"Too many failed sign-ins from this computer: try again in "
                                                   f"{wait} s.", username)
        issued = security.login(factory, username.strip(), password, client, throttle)
        if issued is None:
            return signin_page(request, next, 401, "Invalid user name or password.", username)
        response = RedirectResponse(local_path(next), status_code=303)
        response.set_cookie(SESSION_COOKIE, issued.token, httponly=True, samesite="strict", path="/",
                            secure=_cookie_secure(settings, request))
        response.delete_cookie(SIGNIN_COOKIE, path="/signin")
        return response

    @router.post("/signout")
    def signout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            check_form(visitor, csrf)
            security.logout(session, request.cookies[SESSION_COOKIE])
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @router.get("/", response_class=HTMLResponse)
    def projects_page(request: Request) -> HTMLResponse:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            # an annotator sees the counts and their own leases; who else holds what is for reviewers and admins
            reader_id = None if visitor.is_staff else visitor.user_id
            viewer = session.get(User, visitor.user_id)
            assert viewer is not None
            rows = [progress.project_progress(session, p, reader_id)
                    for p in project_service.member_projects(session, viewer)]
            return render("projects.html", visitor=visitor, projects=rows, statuses=progress.CASE_STATUSES,
                          activity={p.project.id: activity.project_activity(session, p.project) for p in rows})

    def _project(session: Session, project_id: int, visitor: Visitor) -> Project:
        """The project, when the visitor is a member of it (admins are members of every project)."""
        project = session.get(Project, project_id)
        if project is None:
            raise PageError(404, f"There is no project {project_id}.")
        viewer = session.get(User, visitor.user_id)
        if viewer is None or not project_service.is_member(session, viewer, project_id):
            raise PageError(403, f"You are not a member of project {project_id}; ask an admin to add you "
                                 f"('medannot admin project members {project_id} --add {visitor.username}').")
        return project

    @router.get("/projects/{project_id}", response_class=HTMLResponse)
    def cases_page(request: Request, project_id: int, status: str = "", reader: str = "", sort: str = "case",
                   order: str = "asc", page: int = 1) -> HTMLResponse:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "reviewer", "admin")
            project = _project(session, project_id, visitor)
            if status and status not in progress.CASE_STATUSES:
                raise PageError(400, f"Unknown case status {status!r}: use one of "
                                     f"{', '.join(progress.CASE_STATUSES)}.")
            if sort not in progress.SORTS:
                raise PageError(400, f"Cases cannot be sorted by {sort!r}: use one of {', '.join(progress.SORTS)}.")
            first = (max(page, 1) - 1) * CASES_PER_PAGE
            view = progress.cases_page(session, project, status or None, reader or None, sort, order == "desc",
                                       first, CASES_PER_PAGE)
            pages = max(1, -(-view.matching // CASES_PER_PAGE))
            if not 1 <= page <= pages:
                raise PageError(404, f"There is no page {page} of these cases: they fill {pages} page(s).")
            chosen = {"status": status, "reader": reader, "sort": sort, "order": order}
            # the page links keep the filter and sort (only what differs from the default, for short addresses)
            query = {key: value for key, value in chosen.items() if value and value != {"sort": "case",
                                                                                          "order": "asc"}.get(key)}
            return render("cases.html", visitor=visitor, project=project, rows=view.rows, matching=view.matching,
                          first=first, total=view.total, readers=view.readers,
                          statuses=progress.CASE_STATUSES, sorts=progress.SORTS, chosen=chosen, page=page,
                          pages=pages, page_link=lambda n: f"/projects/{project.id}?" + urlencode({**query, "page": n}))

    @router.get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: int) -> HTMLResponse:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "reviewer", "admin")
            case = session.get(Case, case_id)
            if case is None:
                raise PageError(404, f"There is no case {case_id}.")
            project = _project(session, case.project_id, visitor)
            status = progress.case_status(session, project, case.id)
            viewer = session.get(User, visitor.user_id)
            assert viewer is not None
            return render("case.html", visitor=visitor, project=project, record=case_record(session, case, viewer),
                          status=status)

    @router.get("/projects/{project_id}/package", response_class=HTMLResponse)
    def package_page(request: Request, project_id: int, retried: int | None = None) -> HTMLResponse:
        from medannot.server.archive import outbox_rows

        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "admin")
            project = _project(session, project_id, visitor)
            counts = progress.status_counts(session, project)
            outbox = outbox_rows(session, project.id)
            return render("package.html", visitor=visitor, project=project, counts=counts,
                          packages=packages.built_packages(settings.data_dir, project.id), outbox=outbox,
                          retried=next((r for r in outbox if r["id"] == retried), None))

    def admin_form_on(session: Session, request: Request, project_id: int, csrf: str) -> Visitor:
        """The checks of an admin's form post on a project: signed in, admin, a valid CSRF token, the project."""
        visitor = signed_in(session, request)
        require_role(visitor, "admin")
        check_form(visitor, csrf)
        _project(session, project_id, visitor)
        return visitor

    @router.post("/projects/{project_id}/package/outbox/{outbox_id}/retry")
    def retry_send(request: Request, project_id: int, outbox_id: int, csrf: Annotated[str, Form()] = "") -> Response:
        """Send one waiting file of the outbox now (the sender's next try may be minutes away after failures); the
        package page then shows whether the archive took it."""
        from medannot.server.archive import retry_now, send_due

        with transaction(factory) as session:
            visitor = admin_form_on(session, request, project_id, csrf)
            try:
                retry_now(session, project_id, outbox_id, visitor.username)
            except MedAnnotError as exc:
                raise PageError(409, f"Not retried: {exc}.") from exc
        send_due(factory, request.app.state.store, only=[outbox_id])  # the outcome is stored on the row
        return RedirectResponse(f"/projects/{project_id}/package?retried={outbox_id}#outbox", status_code=303)

    @router.post("/projects/{project_id}/package")
    def build_package(request: Request, project_id: int, csrf: Annotated[str, Form()] = "",
                      require_final: Annotated[str, Form()] = "") -> Response:
        with transaction(factory) as session:
            visitor = admin_form_on(session, request, project_id, csrf)
        from medannot.package import PackageBuildError

        try:
            packages.build_and_verify(factory, settings.data_dir, project_id, visitor.username, bool(require_final))
        except PackageBuildError as exc:
            raise PageError(409, f"The package was not built: {exc}") from exc
        return RedirectResponse(f"/projects/{project_id}/package", status_code=303)

    @router.get("/projects/{project_id}/package/{name}.zip")
    def download_package(request: Request, project_id: int, name: str) -> Response:
        from medannot.package.zipped import folder_zip

        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "admin")
            _project(session, project_id, visitor)
        built = packages.built_package(settings.data_dir, project_id, name)
        if built is None:
            raise PageError(404, f"Project {project_id} has no package {name!r}; build one on the package page.")
        return folder_zip(built.folder, f"project-{project_id}-package-{name}.zip")

    from medannot.server.web.users_pages import install_users_pages  # it builds on this module's helpers

    install_users_pages(router, factory)

    from medannot.server.web.insights import install_insights  # the chart, agreement and audit pages

    install_insights(router, settings, factory, _project)
    app.include_router(router)
