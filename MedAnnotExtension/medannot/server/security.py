"""Passwords (argon2id), bearer tokens with idle and absolute expiry, and login throttling."""

from __future__ import annotations

import hashlib
import unicodedata
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.config import ABSOLUTE_TOKEN_SECONDS, IDLE_TOKEN_SECONDS
from medannot.server.db import transaction
from medannot.server.models import ROLES, AuthToken, User, utcnow

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # longer input is refused unhashed: argon2 of 100 MB is a denial of service
MIN_DISTINCT_CHARACTERS = 5
# The patterns every breach list starts with (NIST SP 800-63B asks to refuse "commonly-used" passwords). No breach
# list ships offline here; these catch the guesses an attacker tries first, whatever digits follow them.
_COMMON_WORDS = ("password", "passw0rd", "qwerty", "letmein", "welcome", "admin", "medannot", "changeme",
                 "iloveyou", "abc123", "secret", "monkey", "dragon", "football")
FREE_FAILURES = 5  # failures before the account is throttled
MAX_LOCK_SECONDS = 15 * 60
TOUCH_SECONDS = 60

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("medannot-timing-equaliser")


class AccountError(MedAnnotError):
    """A user account cannot be created or changed as asked."""


def normalised(password: str) -> str:
    """The password as it is hashed and checked: Unicode NFC, so the same password typed on a keyboard that
    composes characters (NFC) and one that does not (NFD) is one password."""
    return unicodedata.normalize("NFC", password)


def password_problem(password: str, username: str | None = None) -> str | None:
    """Why ``password`` may not be set, or None: at least 12 characters (not counting spaces at either end), at
    most 1024, at least 5 different characters, not the user name, not a common word with digits or symbols
    around it, not a keyboard or digit run."""
    text = normalised(password)
    if len(text) > MAX_PASSWORD_LENGTH:
        return f"password too long: at most {MAX_PASSWORD_LENGTH} characters"
    if len(text.strip()) < MIN_PASSWORD_LENGTH:
        return f"password too short: at least {MIN_PASSWORD_LENGTH} characters are required (spaces at the ends " \
               "do not count)"
    if len(set(text)) < MIN_DISTINCT_CHARACTERS:
        return f"password too simple: use at least {MIN_DISTINCT_CHARACTERS} different characters"
    folded = text.casefold()
    letters = "".join(ch for ch in folded if ch.isalpha())
    if username and username.casefold() in folded:
        return "password must not contain the user name"
    if any(letters.startswith(word) or letters.endswith(word) for word in _COMMON_WORDS if len(letters) <= len(word) + 2):
        return "password too common (a well-known word with digits around it): choose a passphrase of several words"
    core = "".join(ch for ch in folded if ch.isalnum())
    if core and any(core in run * 3 for run in ("0123456789", "1234567890", "qwertyuiop", "asdfghjkl",
                                                 "abcdefghijklmnopqrstuvwxyz")):
        return "password too simple (a keyboard or digit run): choose a passphrase of several words"
    return None


def hash_password(password: str, username: str | None = None) -> str:
    problem = password_problem(password, username)
    if problem is not None:
        raise AccountError(problem)
    return _hasher.hash(normalised(password))


def _verify(password_hash: str, password: str) -> bool:
    """argon2 check of ``password`` (NFC); raises argon2's VerifyMismatchError on a mismatch. A password stored
    before normalisation (not NFC) still matches as it was typed."""
    if len(password) > MAX_PASSWORD_LENGTH:
        _hasher.verify(_DUMMY_HASH, "")  # the same time as a real check, then a mismatch
        return False
    try:
        return _hasher.verify(password_hash, normalised(password))
    except VerifyMismatchError:
        if normalised(password) == password:
            raise
        return _hasher.verify(password_hash, password)


def create_user(session: Session, username: str, role: str, password: str, actor: str | None = None) -> User:
    """Add a user (audited)."""
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AccountError(f"user name {username!r}: use 1-64 letters, digits, '.', '-' or '_'")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(username=username, role=role, password_hash=hash_password(password, username), failed_logins=0,
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
        password_ok = _verify(found.password_hash if found else _DUMMY_HASH, password) and found is not None
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
            user.password_hash = _hasher.hash(normalised(password))
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
    user = session.get(User, record.user_id)
    if user is None or user.disabled_at is not None:  # disabling revokes tokens; this holds even for a stray one
        return None
    if now - record.last_used_at > timedelta(seconds=TOUCH_SECONDS):
        record.last_used_at = now  # idle clock kept to the minute: most requests then write nothing here
    return user


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
        password_ok = found is not None and _verify(found.password_hash, password)
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
    password counts towards throttling; each refusal is audited as ``<purpose>.failed``. A disabled account is
    refused whatever the password."""
    if user.disabled_at is not None:
        append_audit(session, user.username, f"{purpose}.failed", target, None, None, "account disabled")
        return False
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
