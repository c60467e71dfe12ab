"""Passwords (argon2id), bearer tokens with idle and absolute expiry, and login throttling (per client address
first, per account second) with a bound on concurrent argon2 checks."""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
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

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # longer input is refused unhashed: argon2 of 100 MB is a denial of service
MIN_DISTINCT_CHARACTERS = 5
# The patterns every breach list starts with (NIST SP 800-63B asks to refuse "commonly-used" passwords). No breach
# list ships offline here; these catch the guesses an attacker tries first, whatever digits follow them.
_COMMON_WORDS = ("password", "passw0rd", "qwerty", "letmein", "welcome", "admin", "medannot", "changeme",
                 "iloveyou", "abc123", "secret", "monkey", "dragon", "football")
# Two brakes on guessing. The first is per client address: after CLIENT_FREE_FAILURES failed logins (any user) a
# client waits 1, 2, 4 ... s (at most MAX_LOCK_SECONDS) before its next attempt, answered 429 without a password
# check. The second is per account, against guesses spread over many clients: only a client's first
# CLIENT_FREE_FAILURES failures count towards it, so one client alone can never lock the real user out.
CLIENT_FREE_FAILURES = 5
CLIENT_MEMORY_SECONDS = 24 * 60 * 60  # a client's failures are forgotten this long after its last one
MAX_CLIENTS_REMEMBERED = 10_000  # the oldest client is forgotten first: memory stays bounded
FREE_FAILURES = 2 * CLIENT_FREE_FAILURES  # counted failures before the account is throttled (two clients' worth)
MAX_LOCK_SECONDS = 15 * 60
PASSWORD_CHECK_WAIT_SECONDS = 10.0  # how long a signature's password check waits for a free argon2 slot
TOUCH_SECONDS = 60

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("medannot-timing-equaliser")


class AccountError(MedAnnotError):
    """A user account cannot be created or changed as asked."""


class PasswordChecksBusy(MedAnnotError):
    """Every argon2 slot is taken: the caller should try again in a moment (HTTP 503 with Retry-After)."""


class PasswordCheckGate:
    """A bound on concurrent argon2 checks in this process: each takes 64 MiB and a core for ~0.1-0.3 s, so an
    unbounded number of them (a login flood) exhausts memory, threads and the database pool for everyone."""

    def __init__(self, permits: int) -> None:
        self.permits = permits
        self._slots = threading.BoundedSemaphore(permits)

    def enter(self, timeout: float | None = None) -> bool:
        """Take a slot: at once (``timeout`` 0), within ``timeout`` seconds, or waiting as long as it takes."""
        if timeout == 0:
            return self._slots.acquire(blocking=False)
        return self._slots.acquire(timeout=timeout) if timeout is not None else self._slots.acquire()

    def leave(self) -> None:
        self._slots.release()


def lower_thread_priority() -> None:
    """Run the calling thread (and the argon2 threads it starts) below the server's other work (Linux: nice is per
    thread), so a login flood gets only the CPU that signed-in users leave. Elsewhere nothing changes."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def default_password_checks() -> int:
    """Concurrent argon2 checks when not configured: half the cores, 1 to 4 (each check uses up to 4 threads)."""
    import os

    return min(4, max(1, (os.cpu_count() or 2) // 2))


password_checks = PasswordCheckGate(default_password_checks())


def set_password_check_limit(permits: int) -> None:
    """Size the process-wide bound on argon2 checks (the server does this at start from its settings)."""
    global password_checks
    if permits != password_checks.permits:
        password_checks = PasswordCheckGate(permits)


@dataclass
class _ClientRecord:
    failures: int
    last_failure: float
    blocked_until: float


class ClientThrottle:
    """Failed logins per client address, kept in this server process's memory (several worker processes each
    keep their own: an attacker spreading over them gets that many times the attempts, still bounded)."""

    def __init__(self, free_failures: int = CLIENT_FREE_FAILURES, memory_seconds: float = CLIENT_MEMORY_SECONDS,
                 max_clients: int = MAX_CLIENTS_REMEMBERED, first_block_seconds: float = 1.0) -> None:
        self.free_failures, self.memory_seconds, self.max_clients = free_failures, memory_seconds, max_clients
        self.first_block_seconds = first_block_seconds  # the first block; each further failure doubles it
        self._clients: OrderedDict[str, _ClientRecord] = OrderedDict()
        self._lock = threading.Lock()

    def _record(self, client: str, now: float) -> _ClientRecord | None:
        record = self._clients.get(client)
        if record is not None and now - record.last_failure > self.memory_seconds:
            del self._clients[client]
            return None
        return record

    def retry_after(self, client: str) -> int:
        """Whole seconds ``client`` must wait before its next login attempt; 0 when it may try now."""
        now = time.monotonic()
        with self._lock:
            record = self._record(client, now)
            return 0 if record is None or record.blocked_until <= now else math.ceil(record.blocked_until - now)

    def record_failure(self, client: str) -> bool:
        """Count a failed login from ``client``; True while it is within its free failures (then the failure also
        counts towards the account's lock), False once the client itself is being throttled."""
        now = time.monotonic()
        with self._lock:
            record = self._record(client, now) or _ClientRecord(0, now, now)
            record.failures += 1
            record.last_failure = now
            if record.failures >= self.free_failures:
                record.blocked_until = now + min(MAX_LOCK_SECONDS, self.first_block_seconds
                                                 * 2 ** (record.failures - self.free_failures))
            self._clients[client] = record
            self._clients.move_to_end(client)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            return record.failures <= self.free_failures

    def failures(self, client: str) -> int:
        with self._lock:
            record = self._record(client, time.monotonic())
            return 0 if record is None else record.failures


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


def _valid_username(username: str) -> bool:
    return bool(username) and len(username) <= 64 and username.replace("-", "").replace("_", "").replace(".", "").isalnum()


def printable_username(username: str) -> str:
    """A user name as it may be written to the audit trail and logs: control characters (a NUL, which PostgreSQL
    cannot store) escaped, at most 64 characters."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in username[:64])[:64]


def create_user(session: Session, username: str, role: str, password: str, actor: str | None = None) -> User:
    """Add a user (audited)."""
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not _valid_username(username):
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


def _checked_password(password_hash: str, password: str, wait: float | None) -> bool:
    """argon2 check inside a slot of the process-wide gate; raises :class:`PasswordChecksBusy` when no slot frees
    within ``wait`` seconds. Never call it while holding a database connection."""
    if not password_checks.enter(wait):
        raise PasswordChecksBusy("the server is busy checking other passwords: try again in a moment")
    try:
        return _verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
    finally:
        password_checks.leave()


def login(factory: sessionmaker[Session], username: str, password: str, client: str | None = None,
          throttle: ClientThrottle | None = None, wait: float | None = PASSWORD_CHECK_WAIT_SECONDS) -> IssuedToken | None:
    """Check a password and issue a bearer token.

    Returns None on any failure (unknown or malformed user name, wrong password, throttled account: deliberately
    not told apart, and each takes one argon2 verification). The slow password check runs outside any transaction,
    so it never holds a database connection or SQLite's write lock; the counters are then updated under a row lock,
    so parallel guesses all count. With a ``throttle`` a failure is counted for ``client`` too, and counts towards
    the account's lock only while the client is within its free failures.
    """
    found = None
    if _valid_username(username):  # a name that cannot exist (a NUL byte, 10 kB) never reaches the database
        with transaction(factory) as session:
            found = session.execute(select(User.id, User.password_hash).where(User.username == username)).first()
    password_ok = _checked_password(found.password_hash if found else _DUMMY_HASH, password, wait) and found is not None
    counts = True
    details: dict[str, object] | None = None if client is None else {"client": client}
    if not password_ok and throttle is not None and client is not None:
        counts = throttle.record_failure(client)
        details = {"client": client, "client_failures": throttle.failures(client)}
    with transaction(factory) as session:
        now = utcnow()
        if found is None:
            reason = "unknown user" if _valid_username(username) else "malformed user name"
            append_audit(session, None, "login.failed", f"user:{printable_username(username)}", None, details, reason)
            return None
        user = session.scalar(select(User).where(User.id == found.id).with_for_update())
        assert user is not None
        if not _password_accepted(session, user, password_ok, now, "login", f"user:{username}", counts, details):
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(normalised(password))
        user.failed_logins = 0
        user.locked_until = None
        token = secrets.token_urlsafe(32)
        record = AuthToken(token_hash=_token_hash(token), user_id=user.id, created_at=now, last_used_at=now)
        session.add(record)
        append_audit(session, user.username, "login.ok", f"user:{username}", None, details)
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
    password_ok = found is not None and _checked_password(found.password_hash, password, PASSWORD_CHECK_WAIT_SECONDS)
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
                       target: str, counts: bool = True, details: dict[str, object] | None = None) -> bool:
    """The one rule for a password check, at login and at signing: a throttled account is refused, and a wrong
    password counts towards throttling (unless ``counts`` is False: a client already throttled on its own); each
    refusal is audited as ``<purpose>.failed``. A disabled account is refused whatever the password."""
    if user.disabled_at is not None:
        append_audit(session, user.username, f"{purpose}.failed", target, None, details, "account disabled")
        return False
    if user.locked_until is not None and user.locked_until > now:
        append_audit(session, user.username, f"{purpose}.failed", target, None, details, "throttled")
        return False
    if not password_ok:
        if counts:
            user.failed_logins += 1
            if user.failed_logins >= FREE_FAILURES:
                seconds = min(MAX_LOCK_SECONDS, 2 ** (user.failed_logins - FREE_FAILURES) * 30)
                user.locked_until = now + timedelta(seconds=seconds)
        append_audit(session, user.username, f"{purpose}.failed", target, None,
                     {"failed_logins": user.failed_logins, **(details or {})}, "wrong password")
        return False
    return True
