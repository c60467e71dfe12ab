"""Passwords (argon2id), bearer tokens with idle and absolute expiry, and login throttling."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.config import ABSOLUTE_TOKEN_SECONDS, IDLE_TOKEN_SECONDS
from medannot.server.db import transaction
from medannot.server.models import ROLES, AuthToken, User, utcnow

MIN_PASSWORD_LENGTH = 12
FREE_FAILURES = 5  # failures before the account is throttled
MAX_LOCK_SECONDS = 15 * 60
TOUCH_SECONDS = 60

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("medannot-timing-equaliser")


class AccountError(MedAnnotError):
    """A user account cannot be created or changed as asked."""


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters are required")
    return _hasher.hash(password)


def create_user(session: Session, username: str, role: str, password: str, actor: str | None = None) -> User:
    """Add a user (audited)."""
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AccountError(f"user name {username!r}: use 1-64 letters, digits, '.', '-' or '_'")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(username=username, role=role, password_hash=hash_password(password), failed_logins=0,
                created_at=utcnow())
    session.add(user)
    session.flush()
    append_audit(session, actor, "user.create", f"user:{username}", None, {"role": role})
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


def token_expiry(record: AuthToken) -> datetime:
    return min(record.last_used_at + timedelta(seconds=IDLE_TOKEN_SECONDS),
               record.created_at + timedelta(seconds=ABSOLUTE_TOKEN_SECONDS))


def login(factory: sessionmaker[Session], username: str, password: str) -> IssuedToken | None:
    """Check a password and issue a bearer token.

    Returns None on any failure (unknown user, wrong password, throttled account: deliberately not told apart,
    and each takes one argon2 verification). The slow password check runs outside any transaction, so it never
    holds SQLite's write lock; the counters are then updated under a row lock, so parallel guesses all count.
    """
    with transaction(factory) as session:
        found = session.execute(select(User.id, User.password_hash).where(User.username == username)).first()
    try:
        password_ok = _hasher.verify(found.password_hash if found else _DUMMY_HASH, password) and found is not None
    except (VerificationError, InvalidHashError):
        password_ok = False
    with transaction(factory) as session:
        now = utcnow()
        if found is None:
            append_audit(session, None, "login.failed", f"user:{username[:64]}", None, None, "unknown user")
            return None
        user = session.scalar(select(User).where(User.id == found.id).with_for_update())
        assert user is not None
        if not _password_accepted(session, user, password_ok, now, "login", f"user:{username}"):
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        user.failed_logins = 0
        user.locked_until = None
        token = secrets.token_urlsafe(32)
        record = AuthToken(token_hash=_token_hash(token), user_id=user.id, created_at=now, last_used_at=now)
        session.add(record)
        append_audit(session, user.username, "login.ok", f"user:{username}")
        return IssuedToken(token, token_expiry(record))


def resolve_token(session: Session, token: str) -> User | None:
    """The user a bearer token belongs to, or None when unknown, revoked or expired; touches its idle clock."""
    record = session.scalar(select(AuthToken).where(AuthToken.token_hash == _token_hash(token)))
    now = utcnow()
    if record is None or record.revoked_at is not None or token_expiry(record) <= now:
        return None
    if now - record.last_used_at > timedelta(seconds=TOUCH_SECONDS):
        record.last_used_at = now  # idle clock kept to the minute: most requests then write nothing here
    return session.get(User, record.user_id)


def logout(session: Session, token: str) -> None:
    """Revoke a token server-side (audited)."""
    record = session.scalar(select(AuthToken).where(AuthToken.token_hash == _token_hash(token)))
    if record is None or record.revoked_at is not None:
        return
    record.revoked_at = utcnow()
    user = session.get(User, record.user_id)
    append_audit(session, user.username if user else None, "logout", f"user:{user.username if user else '?'}")


def reauthenticate(factory: sessionmaker[Session], user_id: int, password: str, purpose: str) -> bool:
    """Check a signer's password again (not their session token), counted like a login: a wrong password adds to
    the failed-login count and throttles the account the same way, and every refusal is audited as
    ``<purpose>.failed``. The argon2 check runs outside any transaction, as in :func:`login`."""
    with transaction(factory) as session:
        found = session.execute(select(User.id, User.password_hash).where(User.id == user_id)).first()
    try:
        password_ok = found is not None and _hasher.verify(found.password_hash, password)
    except (VerificationError, InvalidHashError):
        password_ok = False
    with transaction(factory) as session:
        now = utcnow()
        user = session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None:
            return False
        if not _password_accepted(session, user, password_ok, now, purpose, f"user:{user.username}"):
            return False
        user.failed_logins = 0
        user.locked_until = None
        return True


def _password_accepted(session: Session, user: User, password_ok: bool, now: datetime, purpose: str,
                       target: str) -> bool:
    """The one rule for a password check, at login and at signing: a throttled account is refused, and a wrong
    password counts towards throttling; each refusal is audited as ``<purpose>.failed``."""
    if user.locked_until is not None and user.locked_until > now:
        append_audit(session, user.username, f"{purpose}.failed", target, None, None, "throttled")
        return False
    if not password_ok:
        user.failed_logins += 1
        if user.failed_logins >= FREE_FAILURES:
            seconds = min(MAX_LOCK_SECONDS, 2 ** (user.failed_logins - FREE_FAILURES) * 30)
            user.locked_until = now + timedelta(seconds=seconds)
        append_audit(session, user.username, f"{purpose}.failed", target, None,
                     {"failed_logins": user.failed_logins}, "wrong password")
        return False
    return True
