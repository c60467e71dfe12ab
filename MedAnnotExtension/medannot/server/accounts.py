"""What an admin does to an existing account: disable and enable it, reset its password, lift its throttle,
change its role. Each change is one audited transaction; disabling and a password reset revoke the user's tokens,
so a session already open ends at its next request."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from medannot.server.audit import append_audit
from medannot.server.models import ROLES, AuthToken, User, utcnow
from medannot.server.security import AccountError, hash_password


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username).with_for_update())
    if user is None:
        raise AccountError(f"no user {username!r}; `medannot admin user list` shows the users")
    return user


def _revoke_tokens(session: Session, user: User) -> int:
    result = session.execute(update(AuthToken).where(AuthToken.user_id == user.id, AuthToken.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return int(result.rowcount or 0)


def _last_admin(session: Session, user: User) -> bool:
    admins = session.scalars(select(User.id).where(User.role == "admin", User.disabled_at.is_(None))).all()
    return user.role == "admin" and list(admins) == [user.id]


def disable_user(session: Session, username: str, actor: str, reason: str | None = None) -> User:
    """Disable an account: no login, no signing, every open session revoked."""
    user = get_user(session, username)
    if user.disabled_at is not None:
        raise AccountError(f"user {username!r} is already disabled")
    if _last_admin(session, user):
        raise AccountError(f"user {username!r} is the last enabled admin; add another admin first")
    user.disabled_at = utcnow()
    revoked = _revoke_tokens(session, user)
    append_audit(session, actor, "user.disable", f"user:{username}", {"disabled": False},
                 {"disabled": True, "tokens_revoked": revoked}, reason)
    return user


def enable_user(session: Session, username: str, actor: str) -> User:
    user = get_user(session, username)
    if user.disabled_at is None:
        raise AccountError(f"user {username!r} is not disabled")
    user.disabled_at = None
    append_audit(session, actor, "user.enable", f"user:{username}", {"disabled": True}, {"disabled": False})
    return user


def reset_password(session: Session, username: str, password: str, actor: str) -> User:
    """Set a new password (the policy of :func:`medannot.server.security.password_problem`), lift the throttle and
    revoke every session."""
    user = get_user(session, username)
    user.password_hash = hash_password(password, username)
    user.failed_logins, user.locked_until = 0, None
    revoked = _revoke_tokens(session, user)
    append_audit(session, actor, "user.password_reset", f"user:{username}", None, {"tokens_revoked": revoked})
    return user


def unlock_user(session: Session, username: str, actor: str) -> User:
    """Lift the throttle after failed logins (the real user locked out by someone's guesses)."""
    user = get_user(session, username)
    old = {"failed_logins": user.failed_logins,
           "locked_until": user.locked_until.isoformat() if user.locked_until else None}
    user.failed_logins, user.locked_until = 0, None
    append_audit(session, actor, "user.unlock", f"user:{username}", old, {"failed_logins": 0})
    return user


def set_role(session: Session, username: str, role: str, actor: str) -> User:
    """Change a user's role; their sessions are revoked, so the new role applies from their next login."""
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    user = get_user(session, username)
    if user.role == role:
        raise AccountError(f"user {username!r} already has the role {role}")
    if role != "admin" and _last_admin(session, user):
        raise AccountError(f"user {username!r} is the last enabled admin; add another admin first")
    old, user.role = user.role, role
    revoked = _revoke_tokens(session, user)
    append_audit(session, actor, "user.role", f"user:{username}", {"role": old},
                 {"role": role, "tokens_revoked": revoked})
    return user


ROSTER_FIELDS = ("printed_name", "qualification", "credentials", "trained_on")  # the package's reader roster


def update_roster(session: Session, username: str, changes: dict[str, str | date | None], actor: str) -> list[str]:
    """Set roster fields of a user (printed name, qualification, credentials, training date); a value of None or
    "" clears the field. Audited with the old and new values of the fields that changed; returns their names
    (none: nothing written)."""
    unknown = set(changes) - set(ROSTER_FIELDS)
    if unknown:
        raise AccountError(f"not a roster field: {', '.join(sorted(unknown))} (use {', '.join(ROSTER_FIELDS)})")
    user = get_user(session, username)
    given = {key: (value.strip() or None) if isinstance(value, str) else value for key, value in changes.items()}
    if isinstance(given.get("trained_on"), str):
        raise AccountError("the training date must be a date (YYYY-MM-DD)")
    changed = {key: value for key, value in given.items() if getattr(user, key) != value}
    if not changed:
        return []
    old = {key: getattr(user, key) for key in changed}
    for key, value in changed.items():
        setattr(user, key, value)
    append_audit(session, actor, "user.update", f"user:{username}", old, changed)
    return sorted(changed)


def user_details(session: Session, username: str) -> dict[str, object]:
    """One user as the users page shows them (never a password hash or token)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"no user {username!r}; `medannot admin user list` shows the users")
    now = utcnow()
    return {"user": user.username, "role": user.role, "disabled": user.disabled_at is not None,
            "disabled_at": user.disabled_at, "throttled": user.locked_until is not None and user.locked_until > now,
            "failed_logins": user.failed_logins, "created_at": user.created_at.isoformat() + "Z",
            **{key: getattr(user, key) for key in ROSTER_FIELDS}}


def list_users(session: Session) -> list[dict[str, object]]:
    """Every user as a row (never a password hash or token)."""
    now = utcnow()
    return [{"user": u.username, "role": u.role, "disabled": u.disabled_at is not None,
             "throttled": u.locked_until is not None and u.locked_until > now, "failed_logins": u.failed_logins,
             "created_at": u.created_at.isoformat() + "Z"}
            for u in session.scalars(select(User).order_by(User.username))]
