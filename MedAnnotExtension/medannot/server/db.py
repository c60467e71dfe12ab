"""Engine, sessions and migrations. SQLite: WAL and serialised write transactions (BEGIN IMMEDIATE);
PostgreSQL: row locks with SKIP LOCKED in the queue, an advisory lock around the audit chain."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 0x4D41_4E4E  # advisory lock id so two server processes never migrate at once


class DatabaseError(MedAnnotError):
    """The database cannot be reached or prepared."""


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite every transaction takes the write lock up front (BEGIN IMMEDIATE)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # the database holds password hashes and patient case lists: readable by the server's user only
            # (SQLite gives its -wal and -shm files the database file's mode). Only a new file is touched: closing
            # any descriptor of a file drops every POSIX lock this process holds on it, so opening and closing an
            # existing database here (as a second create_app in `medannot serve` did) silently released the
            # locks of connections already open; the next process to close the database then took it for unused
            # and deleted its -wal file, and every later write of the server went to the deleted file.
            if not Path(parsed.database).exists():
                os.close(os.open(parsed.database, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):  # type: ignore[no-untyped-def]
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise DatabaseError(f"database URL {parsed.render_as_string(hide_password=True)}: {exc}; use "
                            "sqlite:///path/to/file.db or postgresql://user@host:5432/database") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def upgrade_database(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe to call from several processes at once)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("medannot.server") / "migrations"))
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise DatabaseError(f"cannot open database {engine.url.render_as_string(hide_password=True)}: "
                            f"{str(exc.orig).strip().splitlines()[0]}") from exc


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
