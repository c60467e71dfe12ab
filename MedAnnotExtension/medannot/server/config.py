"""Where the server keeps its database and data: ``--db``, else ``MEDANNOT_DB``, else an SQLite file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from medannot.paths import medannot_home
from medannot.errors import MedAnnotError

DEFAULT_LEASE_SECONDS = 30 * 60
# After a submit the reader may send corrections with the same lease for this long (or until the case is in review)
DEFAULT_CORRECTION_SECONDS = 24 * 60 * 60
IDLE_TOKEN_SECONDS = 30 * 60
ABSOLUTE_TOKEN_SECONDS = 12 * 60 * 60
# A large CT's SEG: 1000 slices of 512 x 512, FRACTIONAL (one byte a voxel) is 250 MiB per segment; two fit.
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class ConfigurationError(MedAnnotError):
    """A setting (command-line option or environment variable) is malformed."""


@dataclass(frozen=True)
class ServerSettings:
    """Database URL, data folder for stored results, lease length, how long after a submit a correction is still
    accepted, the largest upload accepted, login limits, and
    whether the server is reached over TLS (a proxy in front terminates it): then the dashboard's session cookie is
    Secure.

    ``max_upload_bytes`` bounds a request body (checked on Content-Length and while it streams in) and what a
    compressed (deflated) upload may inflate to.
    """

    db_url: str
    data_dir: Path
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    correction_seconds: int = DEFAULT_CORRECTION_SECONDS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # concurrent argon2 checks (64 MiB each); logins beyond them wait briefly, then get 503 (None: from the cores)
    password_checks: int | None = None
    login_client_failures: int = 5  # failed logins from one client address before that client is throttled
    login_client_block_seconds: int = 1  # how long that client is first blocked (doubling with each failure)
    behind_tls: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


def resolve_settings(db: str | None = None, data_dir: str | Path | None = None,
                     lease_seconds: int | None = None, max_upload_mb: int | None = None,
                     behind_tls: bool | None = None) -> ServerSettings:
    """Settings from arguments, then environment (``MEDANNOT_DB``, ``MEDANNOT_DATA``, ``MEDANNOT_LEASE_SECONDS``,
    ``MEDANNOT_CORRECTION_SECONDS``, ``MEDANNOT_MAX_UPLOAD_MB``, ``MEDANNOT_BEHIND_TLS``), then defaults.

    The data folder defaults to ``data/`` next to an SQLite file, or ``$MEDANNOT_HOME/server-data`` for PostgreSQL.
    """
    url = db or os.environ.get("MEDANNOT_DB") or f"sqlite:///{medannot_home() / 'server' / 'medannot.db'}"
    try:
        make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several kinds for a malformed URL
        raise ConfigurationError(f"database URL {url!r} is not understood; use sqlite:///path/to/file.db or "
                                 "postgresql://user@host:5432/database") from exc
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if data_dir is None and os.environ.get("MEDANNOT_DATA"):
        data_dir = os.environ["MEDANNOT_DATA"]
    if data_dir is None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            data_dir = Path(parsed.database).resolve().parent / "data"
        else:
            data_dir = medannot_home() / "server-data"
    text = os.environ.get("MEDANNOT_LEASE_SECONDS", str(DEFAULT_LEASE_SECONDS))
    if lease_seconds is None and not (text.isdigit() and int(text) > 0):
        raise ConfigurationError(f"MEDANNOT_LEASE_SECONDS={text!r}: give the lease length as whole seconds, e.g. 1800")
    lease = lease_seconds or int(text)
    limit_text = os.environ.get("MEDANNOT_MAX_UPLOAD_MB", str(DEFAULT_MAX_UPLOAD_BYTES // (1024 * 1024)))
    if max_upload_mb is None and not (limit_text.isdigit() and int(limit_text) > 0):
        raise ConfigurationError(f"MEDANNOT_MAX_UPLOAD_MB={limit_text!r}: give the largest upload as whole MiB, "
                                 "e.g. 512")
    if max_upload_mb is not None and max_upload_mb <= 0:
        raise ConfigurationError(f"--max-upload-mb {max_upload_mb}: give the largest upload as whole MiB, e.g. 512")
    limit = (max_upload_mb or int(limit_text)) * 1024 * 1024
    checks = _positive_env("MEDANNOT_PASSWORD_CHECKS", None, "concurrent password checks, e.g. 2")
    client_failures = _positive_env("MEDANNOT_LOGIN_CLIENT_FAILURES", 5,
                                    "failed logins from one client before it is throttled, e.g. 5")
    client_block = _positive_env("MEDANNOT_LOGIN_CLIENT_BLOCK_SECONDS", 1,
                                 "seconds a throttled client is first blocked (it doubles), e.g. 1")
    if behind_tls is None:
        flag = os.environ.get("MEDANNOT_BEHIND_TLS", "0").strip().lower()
        if flag not in ("0", "1", "true", "false", "yes", "no", ""):
            raise ConfigurationError(f"MEDANNOT_BEHIND_TLS={flag!r}: use 1 (a TLS proxy is in front) or 0")
        behind_tls = flag in ("1", "true", "yes")
    correction = _positive_env("MEDANNOT_CORRECTION_SECONDS", DEFAULT_CORRECTION_SECONDS,
                               "seconds after a submit during which corrections are accepted, e.g. 86400")
    return ServerSettings(db_url=url, data_dir=Path(data_dir), lease_seconds=lease,
                          correction_seconds=correction or DEFAULT_CORRECTION_SECONDS, max_upload_bytes=limit,
                          password_checks=checks, login_client_failures=client_failures or 5,
                          login_client_block_seconds=client_block or 1, behind_tls=behind_tls)


def _positive_env(name: str, default: int | None, what: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    if not (text.isdigit() and int(text) > 0):
        raise ConfigurationError(f"{name}={text!r}: give the number of {what}")
    return int(text)
