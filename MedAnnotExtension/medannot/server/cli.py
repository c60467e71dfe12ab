"""``medannot serve``, ``medannot admin ...`` and ``medannot audit verify``: commands that work on the database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medannot.cli_common import CONTEXT, MedAnnotGroup
from medannot.errors import MedAnnotError

DB_OPTION = click.option("--db", envvar="MEDANNOT_DB", default=None,
                         help="Database URL (default: SQLite file in $MEDANNOT_HOME/server; env MEDANNOT_DB). "
                              "PostgreSQL: postgresql://user@host:5432/db")
DATA_OPTION = click.option("--data-dir", envvar="MEDANNOT_DATA", default=None, type=click.Path(path_type=Path),
                           help="Folder for stored results (default: data/ next to the SQLite file).")


def _factory(db: str | None, data_dir: Path | None = None):  # type: ignore[no-untyped-def]
    from medannot.server.config import resolve_settings
    from medannot.server.db import make_engine, session_factory, upgrade_database

    settings = resolve_settings(db, data_dir)
    engine = make_engine(settings.db_url)
    upgrade_database(engine)
    return session_factory(engine)


@click.command("serve", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (put TLS in front).")
@click.option("--port", default=8765, show_default=True, type=int)
@DB_OPTION
@DATA_OPTION
@click.option("--lease-minutes", default=None, type=float, help="Lease length (default 30; env MEDANNOT_LEASE_SECONDS).")
@click.option("--correction-hours", default=None, type=click.FloatRange(min=0, min_open=True),
              help="How long after a submit the reader may still send corrections with the same lease, until the "
                   "case is in review (default 24; env MEDANNOT_CORRECTION_SECONDS).")
@click.option("--workers", default=1, show_default=True, type=int, help="Worker processes (use PostgreSQL for >1).")
@click.option("--max-upload-mb", default=None, type=click.IntRange(min=1),
              help="Largest upload (request body, and what a deflated file may inflate to) in MiB (default 512; env "
                   "MEDANNOT_MAX_UPLOAD_MB).")
@click.option("--behind-tls/--no-behind-tls", default=None,
              help="A TLS proxy is in front: the dashboard's session cookie is sent over HTTPS only "
                   "(env MEDANNOT_BEHIND_TLS=1).")
def serve(host: str, port: int, db: str | None, data_dir: Path | None, lease_minutes: float | None,
          correction_hours: float | None, workers: int, max_upload_mb: int | None, behind_tls: bool | None) -> None:
    """Run the task-queue server (REST API under /api/v1, OpenAPI docs at /docs, the lab dashboard at /)."""
    import os

    import uvicorn

    from medannot.server.config import resolve_settings

    if correction_hours is not None:
        os.environ["MEDANNOT_CORRECTION_SECONDS"] = str(max(1, round(correction_hours * 3600)))
    settings = resolve_settings(db, data_dir, int(lease_minutes * 60) if lease_minutes else None, max_upload_mb,
                                behind_tls=behind_tls)
    if workers > 1 and settings.is_sqlite:
        raise click.UsageError("several workers need PostgreSQL (--db postgresql://...); SQLite serves one process")
    os.environ["MEDANNOT_DB"] = settings.db_url
    os.environ["MEDANNOT_DATA"] = str(settings.data_dir)
    os.environ["MEDANNOT_LEASE_SECONDS"] = str(settings.lease_seconds)
    os.environ["MEDANNOT_CORRECTION_SECONDS"] = str(settings.correction_seconds)
    os.environ["MEDANNOT_MAX_UPLOAD_MB"] = str(settings.max_upload_bytes // (1024 * 1024))
    os.environ["MEDANNOT_BEHIND_TLS"] = "1" if settings.behind_tls else "0"
    from medannot.server.app import create_app

    create_app(settings)  # migrate and fail fast with a clear message before binding the port
    click.echo(f"MedAnnot server on http://{host}:{port} (dashboard /, docs /docs), database "
               f"{settings.db_url.split('@')[-1]}, data {settings.data_dir}", err=True)
    uvicorn.run("medannot.server.asgi:app", host=host, port=port, workers=workers, log_level="warning")


@click.group("admin", cls=MedAnnotGroup, context_settings=CONTEXT)
def admin() -> None:
    """Administer users, projects and cases directly on the database."""


@admin.group("user", cls=MedAnnotGroup, context_settings=CONTEXT)
def admin_user() -> None:
    """Users and roles."""


@admin_user.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "annotator", "reviewer"]))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else prompt).")
@DB_OPTION
def user_add(name: str, role: str, password_stdin: bool, db: str | None) -> None:
    """Add user NAME with a role; the password (at least 12 characters) is stored as an argon2id hash."""
    from medannot.server.db import transaction
    from medannot.server.security import create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with transaction(_factory(db)) as session:
        user = create_user(session, name, role, password, actor="cli")
        click.echo(f"user {user.username} ({user.role}) added as id {user.id}")


def _read_new_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("New password", hide_input=True, confirmation_prompt=True))


@admin_user.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@DB_OPTION
def user_list(as_json: bool, db: str | None) -> None:
    """List the users: role, disabled, throttled after failed logins (never a password hash or token)."""
    import json

    from medannot.server.accounts import list_users
    from medannot.server.db import transaction

    with transaction(_factory(db)) as session:
        rows = list_users(session)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        flags = [f for f, on in (("disabled", row["disabled"]), ("throttled", row["throttled"])) if on]
        click.echo(f"{row['user']:24s} {row['role']:10s} {', '.join(flags)}".rstrip())


def _account_command(name: str, help_text: str, needs_password: bool = False, needs_role: bool = False,
                     takes_reason: bool = False):  # type: ignore[no-untyped-def]
    """One admin action on user NAME (audited as actor "cli")."""

    def decorate(action):  # type: ignore[no-untyped-def]
        @admin_user.command(name, context_settings=CONTEXT, help=help_text)
        @click.argument("username")
        @DB_OPTION
        def command(username: str, db: str | None, **options: object) -> None:
            from medannot.server.db import transaction

            if needs_password:
                options["password"] = _read_new_password(bool(options.pop("password_stdin")))
            with transaction(_factory(db)) as session:
                user = action(session, username, **options)
                click.echo(f"user {user.username}: {name} done (role {user.role}"
                           f"{', disabled' if user.disabled_at else ''})")

        if needs_password:
            command = click.option("--password-stdin", is_flag=True,
                                   help="Read the new password from standard input (else prompt).")(command)
        if takes_reason:
            command = click.option("--reason", default=None, help="Why (kept in the audit trail).")(command)
        if needs_role:
            command = click.option("--role", required=True, type=click.Choice(["admin", "annotator", "reviewer"]))(
                command)
        return command

    return decorate


@_account_command("disable", "Disable USERNAME: no login, no signing; their open sessions are revoked.",
                  takes_reason=True)
def _disable(session, username, reason=None):  # type: ignore[no-untyped-def]
    from medannot.server.accounts import disable_user

    return disable_user(session, username, "cli", reason)


@_account_command("enable", "Enable USERNAME again (a new login is needed).")
def _enable(session, username):  # type: ignore[no-untyped-def]
    from medannot.server.accounts import enable_user

    return enable_user(session, username, "cli")


@_account_command("reset-password", "Set a new password for USERNAME; lifts the throttle, revokes their sessions.",
                  needs_password=True)
def _reset(session, username, password):  # type: ignore[no-untyped-def]
    from medannot.server.accounts import reset_password

    return reset_password(session, username, password, "cli")


@_account_command("unlock", "Lift the throttle on USERNAME after failed logins.")
def _unlock(session, username):  # type: ignore[no-untyped-def]
    from medannot.server.accounts import unlock_user

    return unlock_user(session, username, "cli")


@_account_command("set-role", "Change USERNAME's role; their sessions are revoked so it applies at next login.",
                  needs_role=True)
def _set_role(session, username, role):  # type: ignore[no-untyped-def]
    from medannot.server.accounts import set_role

    return set_role(session, username, role, "cli")


@admin.command("report", context_settings=CONTEXT)
@click.argument("project_id", type=int)
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Folder for the PNG figures and report.json.")
@DB_OPTION
def admin_report(project_id: int, output: Path, db: str | None) -> None:
    """The agreement report of PROJECT_ID: per structure (reader pairs), per reader (vs consensus, vs gold
    references), Bland-Altman of volumes; PNG figures and report.json holding every number they show."""
    from medannot.review.report import build_report
    from medannot.server.db import transaction
    from medannot.server.projects import get_project
    from medannot.server.review import project_metric_rows

    with transaction(_factory(db)) as session:
        project = get_project(session, project_id)
        title = project.name
        rows = project_metric_rows(session, project.id)
    if not rows:
        raise click.ClickException(f"project {project_id} has no measured review round yet: the report needs at "
                                   "least one case whose reads are all in")
    report = build_report(rows, output, title=f"Project {project_id} ({title})")
    figures = sorted(p.name for p in output.glob("*.png"))
    click.echo(f"{report}  ({len(rows)} metric rows, {len(figures)} figures: {', '.join(figures)})")

@admin_user.command("update", context_settings=CONTEXT)
@click.argument("name")
@click.option("--printed-name", default=None, help="Name as printed on the roster and signatures, e.g. 'Ada Lovelace, MD'.")
@click.option("--qualification", default=None, help="Qualification, e.g. 'board-certified radiologist, 8 years'.")
@click.option("--credentials", default=None, help="Credentials, e.g. licence or registry number.")
@click.option("--trained-on", default=None, help="Date of training on the guideline or qualification (YYYY-MM-DD).")
@DB_OPTION
def user_update(name: str, printed_name: str | None, qualification: str | None, credentials: str | None,
                trained_on: str | None, db: str | None) -> None:
    """Set the roster fields of user NAME (printed name, qualification, credentials, training date); audited."""
    from datetime import date

    from medannot.server.accounts import update_roster
    from medannot.server.db import transaction

    changes: dict[str, object] = {"printed_name": printed_name, "qualification": qualification,
                                  "credentials": credentials}
    if trained_on is not None:
        try:
            changes["trained_on"] = date.fromisoformat(trained_on)
        except ValueError:
            raise click.BadParameter(f"{trained_on!r} is not a date; use YYYY-MM-DD", param_hint="--trained-on")
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        raise click.UsageError("nothing to update: give --printed-name, --qualification, --credentials or --trained-on")
    with transaction(_factory(db)) as session:
        update_roster(session, name, changes, "cli")  # type: ignore[arg-type]
    click.echo(f"user {name} updated: {', '.join(sorted(changes))}")


@admin.group("project", cls=MedAnnotGroup, context_settings=CONTEXT)
def admin_project() -> None:
    """Projects and their guideline versions."""


@admin_project.command("create", context_settings=CONTEXT)
@click.option("--guideline", required=True, type=click.Path(path_type=Path), help="Guideline YAML.")
@click.option("--name", default=None, help="Project name (default: the guideline's title).")
@DB_OPTION
def project_create(guideline: Path, name: str | None, db: str | None) -> None:
    """Create a project from a guideline; prints the new project id alone on the last line."""
    from medannot.server.db import transaction
    from medannot.server.projects import create_project

    with transaction(_factory(db)) as session:
        project = create_project(session, guideline, name, actor="cli")
        project_id = project.id
    click.echo(f"project '{project.name}' created with guideline {project.guideline_id}")
    click.echo(str(project_id))


@admin_project.command("guideline", context_settings=CONTEXT)
@click.argument("project_id", type=int)
@click.option("--guideline", required=True, type=click.Path(path_type=Path), help="New version of the guideline.")
@DB_OPTION
def project_guideline(project_id: int, guideline: Path, db: str | None) -> None:
    """Add a new guideline version to PROJECT_ID (earlier versions are kept)."""
    from medannot.server.db import transaction
    from medannot.server.projects import add_guideline_version

    with transaction(_factory(db)) as session:
        version = add_guideline_version(session, project_id, guideline, actor="cli")
        click.echo(f"project {project_id} now follows {version.guideline_id} {version.version}")


@admin_project.command("members", context_settings=CONTEXT)
@click.argument("project_id", type=int)
@click.option("--add", "add", multiple=True, help="User to add (repeatable).")
@click.option("--remove", "remove", multiple=True, help="User to remove (repeatable).")
@DB_OPTION
def project_members(project_id: int, add: tuple[str, ...], remove: tuple[str, ...], db: str | None) -> None:
    """Show, add or remove PROJECT_ID's members: annotators claim and reviewers review only in their projects
    (admins work in every project)."""
    from medannot.server.db import transaction
    from medannot.server.projects import set_members

    with transaction(_factory(db)) as session:
        members = set_members(session, project_id, list(add), list(remove), actor="cli")
    click.echo(f"project {project_id} members: {', '.join(members) or 'none'}")


@admin_project.command("archive", context_settings=CONTEXT)
@click.argument("project_id", type=int)
@click.argument("url", required=False)
@click.option("--none", "clear", is_flag=True, help="Stop sending this project's results to an archive.")
@DB_OPTION
@DATA_OPTION
def project_archive(project_id: int, url: str | None, clear: bool, db: str | None, data_dir: Path | None) -> None:
    """Send PROJECT_ID's final results (SEG + SR, consensus) to the DICOMweb archive URL (e.g. the lab's PACS,
    https://pacs.example.org/dicom-web). Cases already final are queued now. Credentials: the server's
    MEDANNOT_RESULTS_DICOMWEB_USER / _PASSWORD environment, never the URL."""
    from medannot.server.archive import set_archive
    from medannot.server.config import resolve_settings
    from medannot.server.db import transaction
    from medannot.server.storage import ObjectStore

    if clear == (url is not None):
        raise click.UsageError("give the archive URL, or --none to stop sending")
    settings = resolve_settings(db, data_dir)
    with transaction(_factory(db, data_dir)) as session:
        queued = set_archive(session, ObjectStore(settings.data_dir), project_id, url, actor="cli")
    click.echo(f"project {project_id}: results archive {url or 'none'}" + (f"; {queued} file(s) of final cases "
                                                                            "queued" if url else ""))


@admin.group("archive", cls=MedAnnotGroup, context_settings=CONTEXT)
def admin_archive() -> None:
    """The outbox of final results for the lab's PACS: what is sent, what waits and why."""


@admin_archive.command("list", context_settings=CONTEXT)
@click.option("--project", "project_id", type=int, default=None, help="Only this project.")
@click.option("--pending", is_flag=True, help="Only files not sent yet.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@DB_OPTION
def archive_list(project_id: int | None, pending: bool, as_json: bool, db: str | None) -> None:
    """List the outbox: each file, its state, attempts and last error."""
    import json

    from medannot.server.archive import outbox_rows
    from medannot.server.db import transaction

    with transaction(_factory(db)) as session:
        rows = [r for r in outbox_rows(session, project_id) if not pending or r["status"] != "sent"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        error = f"  {r['last_error']}" if r["last_error"] else ""
        click.echo(f"{r['id']:>5} project {r['project_id']} {r['case']} {r['kind']:<13} {r['status']:<7} "
                   f"attempts {r['attempts']}{error}")
    click.echo(f"{len(rows)} file(s)", err=True)


@admin_archive.command("send", context_settings=CONTEXT)
@DB_OPTION
@DATA_OPTION
def archive_send(db: str | None, data_dir: Path | None) -> None:
    """Send every queued file that is due now (the server does this every 15 s); exit 1 when any failed."""
    from medannot.server.archive import send_due
    from medannot.server.config import resolve_settings
    from medannot.server.storage import ObjectStore

    settings = resolve_settings(db, data_dir)
    results = send_due(_factory(db, data_dir), ObjectStore(settings.data_dir))
    for r in results:
        click.echo(f"{r.sop_uid}: {'sent' if r.sent else 'NOT sent: ' + (r.error or '')}")
    click.echo(f"{sum(r.sent for r in results)} sent, {sum(not r.sent for r in results)} failed (kept, retried)",
               err=True)
    if any(not r.sent for r in results):
        sys.exit(1)


@admin.group("cases", cls=MedAnnotGroup, context_settings=CONTEXT)
def admin_cases() -> None:
    """Cases of a project."""


@admin_cases.command("import", context_settings=CONTEXT)
@click.argument("project_id", type=int)
@click.argument("manifest", type=click.Path(path_type=Path))
@DB_OPTION
def cases_import(project_id: int, manifest: Path, db: str | None) -> None:
    """Import cases from MANIFEST.csv (columns case_id,source); all or nothing."""
    from medannot.server.db import transaction
    from medannot.server.projects import import_cases

    with transaction(_factory(db)) as session:
        cases = import_cases(session, project_id, manifest, actor="cli")
        click.echo(f"{len(cases)} case(s) imported into project {project_id}")


@click.group("audit", cls=MedAnnotGroup, context_settings=CONTEXT)
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify", context_settings=CONTEXT)
@DB_OPTION
@click.option("--anchor", "anchor_files", multiple=True, type=click.Path(path_type=Path),
              help="File of anchors written by 'medannot audit anchor' (repeatable): the records they name must "
                   "still be there with the same hash, so a trail cut at its end is caught too.")
def audit_verify(db: str | None, anchor_files: tuple[Path, ...]) -> None:
    """Check the audit hash chain: exit 0 when intact, 1 naming the first bad record."""
    from medannot.audit import AuditTrailBroken, check_trail, read_anchors
    from medannot.server.audit import audit_entries
    from medannot.server.db import transaction

    from medannot.server.audit import KEY_FILE_ENV, audit_key, check_seals

    anchors = [anchor for path in anchor_files for anchor in read_anchors(path)]
    key = audit_key()
    with transaction(_factory(db)) as session:
        entries = audit_entries(session)
        sealed, before, seal_problem = check_seals(session, key) if key else (0, 0, None)
    count, problem = check_trail(entries, anchors)
    if problem is not None:
        raise AuditTrailBroken(f"audit trail broken at {problem} ({count} records read)")
    if seal_problem is not None:
        raise AuditTrailBroken(f"audit trail broken at {seal_problem}")
    checked = f"; {len(anchors)} anchor(s) hold" if anchors else ""
    if key:
        checked += f"; {sealed} record(s) sealed with the audit key" + (f" ({before} older ones unsealed)"
                                                                        if before else "")
    else:
        checked += f"; no audit key ({KEY_FILE_ENV} unset): records are not sealed"
    click.echo(f"audit trail intact: {count} records, hash chain verified{checked}")


@audit.command("anchor", context_settings=CONTEXT)
@DB_OPTION
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="File to append the anchor to (one JSON line per anchor). Keep it where the database's users "
                   "cannot change it, e.g. write-once storage, or send the printed line to someone who keeps it.")
def audit_anchor(db: str | None, output: Path) -> None:
    """Append the audit trail's head (last record's number and hash) to an anchor file, after verifying the chain.

    Run it on a schedule (e.g. nightly from cron). 'medannot audit verify --anchor FILE' then also catches
    records removed from the end of the trail, which the hash chain alone cannot see.
    """
    from datetime import datetime, timezone

    from medannot.audit import AuditAnchor, AuditTrailBroken, verify_chain
    from medannot.server.audit import audit_entries
    from medannot.server.db import transaction

    with transaction(_factory(db)) as session:
        entries = audit_entries(session)
    count, problem = verify_chain(entries)
    if problem is not None:
        raise AuditTrailBroken(f"not anchoring a broken trail: {problem} ({count} records read)")
    if not entries:
        raise MedAnnotError("the audit trail is empty: nothing to anchor yet")
    when = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    anchor = AuditAnchor(entries[-1].seq, entries[-1].hash, when)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a", encoding="utf-8") as handle:
            handle.write(anchor.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise MedAnnotError(f"{output}: cannot write the anchor ({exc.strerror or exc})") from exc
    click.echo(anchor.to_json())
    click.echo(f"anchored audit record {anchor.seq} of {count} in {output}", err=True)


@admin.command("grant-server-role", context_settings=CONTEXT)
@click.argument("role")
@DB_OPTION
def grant_server_role(role: str, db: str | None) -> None:
    """PostgreSQL: create (if needed) the login ROLE the server should run as, able to read and write every
    table but only SELECT and INSERT on audit_records. Run this as the tables' owner after migrating; then start
    the server with a URL that logs in as ROLE. (The owner could bypass the trigger; ROLE cannot.)"""
    import re

    from sqlalchemy import text

    from medannot.server.db import transaction

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise click.BadParameter("use lower-case letters, digits and _ (PostgreSQL role name)", param_hint="ROLE")
    factory = _factory(db)
    with transaction(factory) as session:
        if session.get_bind().dialect.name != "postgresql":
            raise click.UsageError("grant-server-role is for PostgreSQL; SQLite has no roles")
        schema = session.execute(text("SELECT current_schema()")).scalar_one()
        exists = session.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
        if not exists:
            session.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        for sql in (f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
                    f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
                    f'REVOKE UPDATE, DELETE, TRUNCATE ON "{schema}".audit_records FROM "{role}"',
                    f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"'):
            session.execute(text(sql))
    click.echo(f"role {role} may read and write schema {schema}; on audit_records only SELECT and INSERT")
