"""``medannot client``: log in to the lab's task server, claim cases, keep leases, submit through the outbox."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from medannot.cli_common import CONTEXT, MedAnnotGroup

if TYPE_CHECKING:
    from medannot.client.api import TaskServerClient

LOGIN_HINT = "medannot client login --server URL --username NAME"

lease_option = click.option("--lease-token", required=True, help="The lease token from `medannot client next`.")
outbox_option = click.option("--outbox", "outbox_dir", type=click.Path(path_type=Path), envvar="MEDANNOT_OUTBOX",
                             default=None,
                             help="Outbox folder [default: $MEDANNOT_OUTBOX, else $MEDANNOT_HOME/outbox, "
                                  "else ~/.medannot/outbox].")


@click.group("client", cls=MedAnnotGroup, context_settings=CONTEXT)
def client_group() -> None:
    """The lab's task server: log in, claim the next case, keep the lease, submit (kept in an outbox until sent).

    The login is kept in ~/.medannot/session.json (token, server and expiry only; MEDANNOT_HOME moves the folder).
    """


def _client(allow_expired: bool = False) -> TaskServerClient:
    from medannot.client.api import TaskServerClient, load_session
    from medannot.client.errors import AuthenticationError

    session = load_session()
    if session is None:
        raise AuthenticationError(f"not logged in to a task server: run `{LOGIN_HINT}` first")
    if session.expired and not allow_expired:
        raise AuthenticationError(f"your login to {session.server_url} expired at {session.expires_at}: run "
                                  f"`medannot client login --server {session.server_url} --username NAME` again",
                                  server_url=session.server_url)
    return TaskServerClient.from_session(session)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _read_password(from_stdin: bool, prompt: str) -> str:
    """The password from the first line of standard input, or asked without echo; an empty one is a usage error."""
    password = sys.stdin.readline().rstrip("\r\n") if from_stdin else click.prompt(prompt, hide_input=True)
    if not password:
        raise click.UsageError("the password is empty")
    return password


@client_group.command("login", context_settings=CONTEXT)
@click.option("--server", required=True, envvar="MEDANNOT_SERVER",
              help="Task server address, https://host[:port] [env: MEDANNOT_SERVER].")
@click.option("--username", required=True, help="Your user name on the task server.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def login(server: str, username: str, password_stdin: bool) -> None:
    """Log in and keep the session token (never the password) for the other commands."""
    from medannot.client.api import TaskServerClient, save_session

    password = _read_password(password_stdin, "Password")
    with TaskServerClient(server) as client:
        session = client.login(username, password)
    del password
    path = save_session(session)
    until = f"until {session.expires_at}" if session.expires_at else "until the server ends the session"
    click.echo(f"logged in to {session.server_url} as {username} {until} (session in {path})")


@client_group.command("logout", context_settings=CONTEXT)
def logout() -> None:
    """Revoke the session token on the server and forget it here."""
    from medannot.client.api import TaskServerClient, clear_session, load_session
    from medannot.client.errors import ServerUnreachableError

    session = load_session()
    if session is None:
        click.echo("not logged in")
        return
    try:
        with TaskServerClient.from_session(session) as client:
            client.logout()
    except ServerUnreachableError as exc:
        click.echo(f"medannot: warning: {exc}; the token is forgotten here but stays valid on the server until "
                   f"{session.expires_at or 'it expires'}", err=True)
    clear_session()
    click.echo(f"logged out of {session.server_url}")


@client_group.command("projects", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the server's project list as JSON.")
def projects(as_json: bool) -> None:
    """List your projects with their guideline and progress."""
    from rich.console import Console
    from rich.table import Table

    with _client() as client:
        found = client.projects()
    if as_json:
        _print_json(found)
        return
    table = Table("id", "name", "guideline", "readers/case", "cases", "submitted")
    for p in found:
        guideline = f"{p.get('guideline_id', '')} {p.get('guideline_version', '')}".strip()
        table.add_row(str(p["id"]), str(p.get("name", "")), guideline, str(p.get("readers_per_case", "")),
                      str(p.get("cases", "")), f"{p.get('tasks_submitted', '?')}/{p.get('tasks_total', '?')}")
    Console(soft_wrap=True).print(table)


@client_group.command("guideline", context_settings=CONTEXT)
@click.argument("project_id")
@click.option("--output", "-o", "output_dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Folder to save guideline.yaml and its reference images in.")
def guideline(project_id: str, output_dir: Path) -> None:
    """Save PROJECT_ID's current guideline (YAML, byte for byte) and its reference images; prints the YAML's path."""
    with _client() as client:
        path = client.download_guideline(project_id, output_dir)
    click.echo(str(path))


@client_group.command("next", context_settings=CONTEXT)
@click.argument("project_id")
@click.option("--download", "download_dir", type=click.Path(path_type=Path), default=None,
              help="Also download the case's DICOM files into this folder.")
def next_task(project_id: str, download_dir: Path | None) -> None:
    """Claim the next task of PROJECT_ID and print it as JSON (nothing on stdout when none is left).

    If you already hold a task there, you get that task again with a new lease token; the old token stops
    working (the server keeps only a digest of each token, so it cannot hand the old one out again)."""
    from medannot.client.errors import TaskServerError

    with _client() as client:
        task = client.claim(project_id)
        if task is None:
            click.echo(f"no task left for you in project {project_id}", err=True)
            return
        data = dict(task.raw)
        if download_dir is not None:
            try:
                data["instances_dir"] = str(client.download_instances(task.task_id, task.lease_token, download_dir))
            except TaskServerError as exc:
                raise type(exc)(f"{exc}; task {task.task_id} stays claimed: download again later or give it back "
                                f"with `medannot client release {task.task_id} --lease-token {task.lease_token}`",
                                server_url=exc.server_url, status_code=exc.status_code, detail=exc.detail) from None
    _print_json(data)


@client_group.command("heartbeat", context_settings=CONTEXT)
@click.argument("task_id")
@lease_option
def heartbeat(task_id: str, lease_token: str) -> None:
    """Extend the lease on TASK_ID; prints the new expiry."""
    with _client() as client:
        click.echo(client.heartbeat(task_id, lease_token))


@client_group.command("release", context_settings=CONTEXT)
@click.argument("task_id")
@lease_option
def release(task_id: str, lease_token: str) -> None:
    """Give TASK_ID back so another reader can take it."""
    with _client() as client:
        client.release(task_id, lease_token)
    click.echo(f"released task {task_id}")


@client_group.command("submit", context_settings=CONTEXT)
@click.argument("task_id")
@lease_option
@click.option("--seg", "seg_path", required=True, type=click.Path(path_type=Path), help="The DICOM-SEG file.")
@click.option("--sr", "sr_path", required=True, type=click.Path(path_type=Path), help="Its companion SR file.")
@outbox_option
def submit(task_id: str, lease_token: str, seg_path: Path, sr_path: Path, outbox_dir: Path | None) -> None:
    """Submit the SEG and SR answering TASK_ID through the outbox; prints the submission id.

    When the server cannot be reached the files wait in the outbox ("queued in outbox"); send them later with
    `medannot client outbox --flush`.
    """
    from medannot.client.errors import ServerRejectedError
    from medannot.client.outbox import Outbox

    with _client(allow_expired=True) as client:
        result = Outbox(outbox_dir).submit(client, task_id, lease_token, seg_path, sr_path)
    if result.status == "sent":
        click.echo(str(result.submission_id))
    elif result.status == "queued":
        click.echo(f"queued in outbox: {result.path} ({result.detail}); send it later with "
                   "`medannot client outbox --flush`")
    else:
        raise ServerRejectedError(f"the server rejected task {task_id}'s submission: {result.detail}; the files "
                                  f"are kept in {result.path}")


@client_group.command("outbox", context_settings=CONTEXT)
@click.option("--flush", is_flag=True, help="Deliver the pending items now (exit 1 if any stay queued or are "
              "rejected).")
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@outbox_option
def outbox(flush: bool, as_json: bool, outbox_dir: Path | None) -> None:
    """List the outbox: submits pending, sent and rejected; --flush delivers the pending ones."""
    from rich.console import Console
    from rich.table import Table

    from medannot.client.errors import OutboxError
    from medannot.client.outbox import Outbox

    box = Outbox(outbox_dir)
    if flush:
        if not box.pending():
            click.echo("nothing pending")
            return
        with _client(allow_expired=True) as client:
            results = box.flush(client)
        if as_json:
            _print_json([{"item_id": r.item_id, "task_id": r.task_id, "status": r.status, "path": str(r.path),
                          "submission_id": r.submission_id, "detail": r.detail} for r in results])
        else:
            for r in results:
                click.echo(f"{r.status:8} task {r.task_id}  {r.item_id}  "
                           f"{r.submission_id if r.status == 'sent' else r.detail}")
        unsent = [r for r in results if r.status != "sent"]
        if unsent:
            raise OutboxError(f"{len(results) - len(unsent)} of {len(results)} outbox item(s) sent; "
                              f"{sum(r.status == 'queued' for r in unsent)} still queued, "
                              f"{sum(r.status == 'rejected' for r in unsent)} rejected (see {box.folder})")
        return
    items = box.items()
    if as_json:
        _print_json([{"item_id": i.item_id, "state": i.state, "path": str(i.path),
                      **{k: v for k, v in i.manifest.items() if k != "lease_token"}} for i in items])
        return
    if not items:
        click.echo(f"the outbox {box.folder} is empty")
        return
    table = Table("state", "item", "task", "created", "attempts", "submission / last error")
    for i in items:
        m = i.manifest
        outcome = m.get("submission_id") if i.state == "sent" else m.get("detail") or m.get("last_error") or ""
        table.add_row(i.state, i.item_id, str(m.get("task_id")), str(m.get("created", ""))[:19],
                      str(m.get("attempts", 0)), str(outcome))
    Console(soft_wrap=True).print(table)


@client_group.command("reviews", context_settings=CONTEXT)
@click.argument("project_id")
@click.option("--json", "as_json", is_flag=True, help="Print the server's review list as JSON.")
def reviews(project_id: str, as_json: bool) -> None:
    """List PROJECT_ID's review rounds (reviewers and admins): a case appears once all its reads are in."""
    from rich.console import Console
    from rich.table import Table

    with _client() as client:
        found = client.reviews(project_id)
    if as_json:
        _print_json(found)
        return
    table = Table("review", "case", "round", "status", "consensus", "reviewer", "below threshold")
    for r in found:
        table.add_row(str(r["review_id"]), str(r["case_id"]), str(r["round"]), str(r["status"]),
                      str(r.get("consensus_method", "")), str(r.get("reviewer") or ""),
                      str(len(r.get("disagreement") or [])))
    Console(soft_wrap=True).print(table)


@client_group.group("review", cls=MedAnnotGroup, context_settings=CONTEXT)
def review_group() -> None:
    """Review tasks (role reviewer): claim the next case whose reads are all in, then decide it."""


@review_group.command("next", context_settings=CONTEXT)
@click.argument("project_id")
@click.option("--download", "download_dir", type=click.Path(path_type=Path), default=None,
              help="Also download every reader's SEG + SR and the consensus into this folder.")
def review_next(project_id: str, download_dir: Path | None) -> None:
    """Claim the next review of PROJECT_ID and print it as JSON: reads, agreement metrics, consensus, lease
    token (nothing on stdout when none is left)."""
    with _client() as client:
        claimed = client.claim_review(project_id)
        if claimed is None:
            click.echo(f"no review left for you in project {project_id}", err=True)
            return
        if download_dir is not None:
            claimed["files"] = client.download_review(claimed, download_dir)
    _print_json(claimed)


@review_group.command("decide", context_settings=CONTEXT)
@click.argument("task_id")
@lease_option
@click.option("--accept", "accept", type=int, default=None, metavar="SUBMISSION_ID",
              help="Accept this reader's submission as the case's result.")
@click.option("--consensus", "use_consensus", is_flag=True, help="Accept the consensus as the case's result.")
@click.option("--return", "returned", type=int, default=None, metavar="SUBMISSION_ID",
              help="Return this submission's slot to its reader (with --reason); the old result is kept.")
@click.option("--reason", default=None, help="Why the read is returned (the reader is told).")
@click.option("--seg", "seg_path", type=click.Path(path_type=Path), default=None,
              help="Your edited SEG (exported with replaces= the SEG you edited), with --sr.")
@click.option("--sr", "sr_path", type=click.Path(path_type=Path), default=None, help="The edited SEG's SR.")
def review_decide(task_id: str, lease_token: str, accept: int | None, use_consensus: bool, returned: int | None,
                  reason: str | None, seg_path: Path | None, sr_path: Path | None) -> None:
    """Decide review TASK_ID: exactly one of --accept SUBMISSION_ID, --consensus, --seg SEG --sr SR,
    --return SUBMISSION_ID --reason TEXT."""
    import uuid

    chosen = [name for name, given in (("--accept", accept is not None), ("--consensus", use_consensus),
                                       ("--return", returned is not None),
                                       ("--seg", seg_path is not None or sr_path is not None)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --accept SUBMISSION_ID, --consensus, --seg SEG --sr SR, "
                               "--return SUBMISSION_ID")
    if returned is not None and not (reason or "").strip():
        raise click.UsageError("--return needs --reason TEXT: the reader is told why")
    with _client() as client:
        if seg_path is not None or sr_path is not None:
            if seg_path is None or sr_path is None:
                raise click.UsageError("an edited result needs both --seg SEG and --sr SR")
            data = client.decide_edited(task_id, lease_token, str(uuid.uuid4()), seg_path, sr_path)
        else:
            action = "accept" if accept is not None else "consensus" if use_consensus else "return"
            data = client.decide(task_id, lease_token, str(uuid.uuid4()), action,
                                 accept if accept is not None else returned, reason)
    _print_json(data)


@review_group.command("retry", context_settings=CONTEXT)
@click.argument("review_id")
def review_retry(review_id: str) -> None:
    """Measure failed review round REVIEW_ID again, say once the PACS is back (role admin). Prints the round as
    JSON: its status is "open" (or decided) when it could be measured, "failed" with the error otherwise."""
    from medannot.errors import MedAnnotError

    with _client() as client:
        data = client.retry_review(review_id)
    _print_json(data)
    if data.get("status") == "failed":
        raise MedAnnotError(f"review {review_id} could still not be measured: {data.get('error')}")


@client_group.command("sign", context_settings=CONTEXT)
@click.argument("submission_id")
@click.option("--meaning", type=click.Choice(["authored", "reviewed", "approved"]), required=True,
              help="What the signature means.")
@click.option("--printed-name", default=None, help="Your name as printed with the signature [default: user name].")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--review", "review_file", type=click.Choice(["consensus", "edited"]), default=None,
              help="SUBMISSION_ID is a review task: sign its consensus or its edited SEG instead of a read.")
def sign(submission_id: str, meaning: str, printed_name: str | None, password_stdin: bool,
         review_file: str | None) -> None:
    """Sign SUBMISSION_ID's SEG electronically (with --review, a review's consensus or edited SEG); your password
    is asked again (a wrong one counts as a failed login). Prints the signature (user, printed name, UTC time,
    meaning, sha256 of the signed bytes) as JSON."""
    password = _read_password(password_stdin, "Password (to sign)")
    with _client() as client:
        if review_file is not None:
            data = client.sign_review(submission_id, review_file, password, meaning, printed_name)
        else:
            data = client.sign(submission_id, password, meaning, printed_name)
    del password
    _print_json(data)
