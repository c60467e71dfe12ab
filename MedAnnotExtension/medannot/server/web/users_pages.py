"""The dashboard's users pages (admin only): the list with the form that adds a user, and one user's page to
change their role, disable or enable them, reset their password, lift their throttle and set their roster fields.

Every change goes through :mod:`medannot.server.accounts` (or ``security.create_user``), the functions behind
``medannot admin user ...``: the same password policy, the same refusals (the last admin), the same audit records,
and disabling, a password reset or a role change revoke the user's sessions. Every form carries the session's
CSRF token. A password is typed by the admin and never shown back: no page shows a password, a hash or a token.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from medannot.server import accounts, security
from medannot.server.db import transaction
from medannot.server.models import ROLES
from medannot.server.security import AccountError
from medannot.server.web.pages import PageError, Visitor, check_form, render, require_role, signed_in

# what a redirect after a change says (a fixed sentence per change: nothing from the query string is echoed)
DONE = {
    "added": "added; they can sign in with the password you gave them",
    "role": "role changed; their open sessions were ended",
    "disabled": "disabled; their open sessions were ended",
    "enabled": "enabled; they sign in again",
    "password": "password reset; their open sessions were ended and the throttle lifted",
    "unlocked": "throttle lifted",
    "roster": "roster fields saved",
    "unchanged": "nothing changed",
}


def _user_path(username: str) -> str:
    return f"/users/{quote(username, safe='')}"


def _done(username: str, what: str) -> RedirectResponse:
    return RedirectResponse(f"{_user_path(username)}?done={what}", status_code=303)


def _new_password(password: str, again: str) -> str:
    if password != again:
        raise AccountError("the two passwords differ: type the same new password twice")
    return password


def _roster(printed_name: str, qualification: str, credentials: str, trained_on: str) -> dict[str, str | date | None]:
    try:
        day = date.fromisoformat(trained_on.strip()) if trained_on.strip() else None
    except ValueError:
        raise AccountError(f"training date {trained_on.strip()!r} is not a date: use YYYY-MM-DD") from None
    return {"printed_name": printed_name, "qualification": qualification, "credentials": credentials,
            "trained_on": day}


def install_users_pages(router: APIRouter, factory: sessionmaker[Session]) -> None:
    """Add ``/users`` and ``/users/{username}`` with their forms to the dashboard's router."""

    def admin(session: Session, request: Request, csrf: str | None = None) -> Visitor:
        visitor = signed_in(session, request)
        require_role(visitor, "admin")
        if csrf is not None:
            check_form(visitor, csrf)
        return visitor

    def users_list(session: Session, visitor: Visitor, http_status: int = 200, error: str | None = None,
                   form: dict[str, str] | None = None) -> HTMLResponse:
        return render("users.html", http_status, visitor, users=accounts.list_users(session), roles=ROLES,
                      error=error, form=form or {})

    def user_page(session: Session, visitor: Visitor, username: str, http_status: int = 200,
                  error: str | None = None, done: str = "") -> HTMLResponse:
        try:
            details = accounts.user_details(session, username)
        except AccountError as exc:
            raise PageError(404, f"There is no user {username!r}; the users page lists them.") from exc
        return render("user.html", http_status, visitor, u=details, roles=ROLES, error=error,
                      done=DONE.get(done), myself=username == visitor.username)

    @router.get("/users", response_class=HTMLResponse)
    def users_page(request: Request) -> HTMLResponse:
        with transaction(factory) as session:
            return users_list(session, admin(session, request))

    @router.post("/users", response_class=HTMLResponse)
    def add_user(request: Request, csrf: Annotated[str, Form()] = "", username: Annotated[str, Form()] = "",
                 role: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
                 password_again: Annotated[str, Form()] = "", printed_name: Annotated[str, Form()] = "",
                 qualification: Annotated[str, Form()] = "", credentials: Annotated[str, Form()] = "",
                 trained_on: Annotated[str, Form()] = "") -> Response:
        name = username.strip()
        with transaction(factory) as session:
            visitor = admin(session, request, csrf)
            try:
                roster = _roster(printed_name, qualification, credentials, trained_on)
                security.create_user(session, name, role, _new_password(password, password_again), visitor.username)
                accounts.update_roster(session, name, roster, visitor.username)
            except AccountError as exc:
                session.rollback()  # nothing of a refused form is kept (not the user without their roster)
                kept = {"username": name, "role": role, "printed_name": printed_name, "qualification": qualification,
                        "credentials": credentials, "trained_on": trained_on}  # never the passwords
                return users_list(session, visitor, 400, f"User {name!r} not added: {exc}.", kept)
        return _done(name, "added")

    @router.get("/users/{username}", response_class=HTMLResponse)
    def one_user(request: Request, username: str, done: str = "") -> HTMLResponse:
        with transaction(factory) as session:
            return user_page(session, admin(session, request), username, done=done)

    def change(request: Request, username: str, csrf: str, what: str, act) -> Response:  # type: ignore[no-untyped-def]
        """One change to one user in one transaction; a refusal shows the user's page with the reason."""
        with transaction(factory) as session:
            visitor = admin(session, request, csrf)
            try:
                accounts.get_user(session, username)
            except AccountError as exc:
                raise PageError(404, f"There is no user {username!r}; the users page lists them.") from exc
            try:
                outcome = act(session, visitor)
            except AccountError as exc:
                session.rollback()
                return user_page(session, visitor, username, 409, f"Not done: {exc}.")
        return _done(username, outcome if isinstance(outcome, str) else what)

    @router.post("/users/{username}/role")
    def set_role(request: Request, username: str, csrf: Annotated[str, Form()] = "",
                 role: Annotated[str, Form()] = "") -> Response:
        return change(request, username, csrf, "role",
                      lambda session, visitor: accounts.set_role(session, username, role, visitor.username))

    @router.post("/users/{username}/disable")
    def disable(request: Request, username: str, csrf: Annotated[str, Form()] = "",
                reason: Annotated[str, Form()] = "") -> Response:
        return change(request, username, csrf, "disabled", lambda session, visitor: accounts.disable_user(
            session, username, visitor.username, reason.strip() or None))

    @router.post("/users/{username}/enable")
    def enable(request: Request, username: str, csrf: Annotated[str, Form()] = "") -> Response:
        return change(request, username, csrf, "enabled",
                      lambda session, visitor: accounts.enable_user(session, username, visitor.username))

    @router.post("/users/{username}/password")
    def reset_password(request: Request, username: str, csrf: Annotated[str, Form()] = "",
                       password: Annotated[str, Form()] = "", password_again: Annotated[str, Form()] = "") -> Response:
        return change(request, username, csrf, "password", lambda session, visitor: accounts.reset_password(
            session, username, _new_password(password, password_again), visitor.username))

    @router.post("/users/{username}/unlock")
    def unlock(request: Request, username: str, csrf: Annotated[str, Form()] = "",
               back: Annotated[str, Form()] = "") -> Response:
        response = change(request, username, csrf, "unlocked",
                          lambda session, visitor: accounts.unlock_user(session, username, visitor.username))
        if back == "list" and response.status_code == 303:
            return RedirectResponse("/users", status_code=303)
        return response

    @router.post("/users/{username}/roster")
    def roster(request: Request, username: str, csrf: Annotated[str, Form()] = "",
               printed_name: Annotated[str, Form()] = "", qualification: Annotated[str, Form()] = "",
               credentials: Annotated[str, Form()] = "", trained_on: Annotated[str, Form()] = "") -> Response:
        def act(session: Session, visitor: Visitor) -> str:
            changed = accounts.update_roster(session, username,
                                             _roster(printed_name, qualification, credentials, trained_on),
                                             visitor.username)
            return "roster" if changed else "unchanged"

        return change(request, username, csrf, "roster", act)
