"""The lab dashboard in a real browser: Debian's Chromium (headless, driven by Playwright) against a real
`medannot serve` process, on SQLite and PostgreSQL. Sign-in and sign-out, progress as readers submit, the cases
page's filters and sort, a case's record, expired sessions, CSRF refusals and roles."""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness import PASSWORD, Lab, ServerProcess, db_url, make_final, make_lab, read_case, reader  # noqa: F401
from sqlalchemy import create_engine, text


SHOTS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab", cases=3, extra_users={"rev": "reviewer"})


@pytest.fixture
def server(lab: Lab, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(lab.db_url, tmp_path / "data").start()
    try:
        yield process
    finally:
        process.stop()


def press(page, button) -> None:  # type: ignore[no-untyped-def]
    """Click a form's button and wait for the page the form's post leads to."""
    with page.expect_navigation():
        button.click()


def sign_in(page, url: str, username: str, password: str = PASSWORD, path: str = "/") -> None:  # type: ignore[no-untyped-def]
    page.goto(url + path)
    assert "/signin" in page.url
    fill_sign_in(page, username, password)


def fill_sign_in(page, username: str, password: str = PASSWORD) -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    press(page, page.get_by_role("button", name="Sign in"))


def counts(page, project_id: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    cells = page.locator(f"#project-{project_id} td.count")
    return {cells.nth(i).get_attribute("data-status"): int(cells.nth(i).inner_text())  # type: ignore[misc]
            for i in range(cells.count())}


def sql(db: str, statement: str, **params: object) -> list[tuple]:  # type: ignore[type-arg]
    engine = create_engine(db)
    with engine.begin() as connection:
        result = connection.execute(text(statement), params)
        rows = [tuple(r) for r in result] if result.returns_rows else []
    engine.dispose()
    return rows


def test_sign_in_then_progress_changes_as_readers_submit_and_a_case_becomes_final(lab, server, page, tmp_path):
    page.goto(server.url + "/")
    assert page.url == server.url + "/signin?next=/"
    sign_in(page, server.url, "admin", path="/")
    assert page.url == server.url + "/"
    assert page.get_by_role("heading", name="Projects").is_visible()
    assert counts(page, lab.project_id) == {"open": 3, "reading": 0, "review": 0, "final": 0, "all": 3}
    assert page.locator(f"#project-{lab.project_id} .none-leased").is_visible()

    r1 = reader(server, "r1")
    task = r1.claim(lab.project_id)
    assert task is not None
    page.reload()
    assert counts(page, lab.project_id) == {"open": 2, "reading": 1, "review": 0, "final": 0, "all": 3}
    leases = page.locator(f"#project-{lab.project_id} table.leases tbody tr")
    assert leases.count() == 1 and leases.first.inner_text().split("\t")[:3] == ["r1", "case-001", "1"]

    seg, sr = lab.export_for(str(task.case_id), tmp_path / "r1", reader="r1")
    r1.submit(task.task_id, task.lease_token, seg, sr, str(uuid.uuid4()))
    read_case(lab, server, "r2", tmp_path)  # r2 takes case-001's second slot: all its reads are in
    page.reload()
    assert counts(page, lab.project_id) == {"open": 2, "reading": 0, "review": 1, "final": 0, "all": 3}
    assert page.locator(f"#project-{lab.project_id} .none-leased").is_visible()

    make_final(lab, server)
    page.reload()
    assert counts(page, lab.project_id) == {"open": 2, "reading": 0, "review": 0, "final": 1, "all": 3}
    assert page.locator("progress").get_attribute("value") == "1"


def test_cases_filter_and_sort_by_status_and_reader_and_a_case_shows_its_whole_record(lab, server, page, tmp_path,
                                                                                     db_url):  # noqa: F811
    first = read_case(lab, server, "r1", tmp_path)    # case-001 slot 1
    second = read_case(lab, server, "r2", tmp_path)   # case-001 slot 2: in review
    review_id = make_final(lab, server)               # case-001 final
    assert reader(server, "r2").claim(lab.project_id) is not None  # case-002: r2 reading
    sign_in(page, server.url, "rev", path=f"/projects/{lab.project_id}")
    assert page.url == f"{server.url}/projects/{lab.project_id}"

    def shown() -> list[tuple[str, str]]:
        rows = page.locator("table.cases tbody tr[data-case]")
        return [(rows.nth(i).get_attribute("data-case"), rows.nth(i).get_attribute("data-status"))  # type: ignore[misc]
                for i in range(rows.count())]

    assert shown() == [("case-001", "final"), ("case-002", "reading"), ("case-003", "open")]
    page.get_by_label("Status").select_option("reading")
    press(page, page.get_by_role("button", name="Show"))
    assert shown() == [("case-002", "reading")]
    assert "status=reading" in page.url and page.locator(".shown").inner_text() == "1 of 3 cases shown"

    page.get_by_label("Status").select_option("")
    page.get_by_label("Reader").select_option("r1")
    press(page, page.get_by_role("button", name="Show"))
    assert shown() == [("case-001", "final")]

    page.get_by_label("Reader").select_option("")
    page.get_by_label("Sort by").select_option("status")
    page.get_by_label("Order").select_option("desc")
    press(page, page.get_by_role("button", name="Show"))
    assert shown() == [("case-001", "final"), ("case-002", "reading"), ("case-003", "open")]
    page.get_by_label("Order").select_option("asc")
    press(page, page.get_by_role("button", name="Show"))
    assert shown() == [("case-003", "open"), ("case-002", "reading"), ("case-001", "final")]
    page.get_by_label("Sort by").select_option("reader")
    press(page, page.get_by_role("button", name="Show"))
    assert [key for key, _ in shown()] == ["case-001", "case-002", "case-003"]  # r1 < r2 < nobody

    press(page, page.get_by_role("link", name="case-001"))
    assert page.locator("h1").inner_text() == "case-001 final"
    body = page.locator("main").inner_text()
    reads = page.locator("table.reads tbody tr")
    assert reads.count() == 2
    assert [reads.nth(i).inner_text().split("\t")[:3] for i in range(2)] == [[str(first), "1", "r1"],
                                                                             [str(second), "2", "r2"]]
    seg_sha = sql(db_url, "SELECT seg_sha256 FROM submissions WHERE id = :i", i=first)[0][0]
    assert seg_sha[:12] in body  # reads are shown once all reads of the case are in
    metrics = page.locator("table.metrics tbody tr")
    assert metrics.count() >= 1
    assert f"r1 (read {first}) vs r2 (read {second})" in body
    dice = sql(db_url, "SELECT dice FROM review_metrics WHERE review_id = :r AND a = :a AND b = :b",
               r=review_id, a=str(first), b=str(second))[0][0]
    assert f"{dice:.3f}" in body
    assert "rev: consensus" in page.locator("ul.decisions").inner_text()
    signatures = page.locator("table.signatures tbody tr")
    assert [signatures.nth(i).inner_text().split("\t")[1:3] for i in range(2)] == [
        ["Rita Reviewer (rev)", "reviewed"], ["Ada Admin (admin)", "approved"]]
    audit_actions = [row.split("\t")[3] for row in page.locator("table.audit tbody tr").all_inner_texts()]
    for action in ("case.import", "task.claim", "task.submit", "review.start", "review.open", "review.claim",
                   "review.decide", "signature.sign"):
        assert action in audit_actions, (action, audit_actions)
    # only this case's records: case-002's claim by r2 is not among them
    case2_tasks = {f"task:{i}" for (i,) in sql(db_url, "SELECT t.id FROM tasks t JOIN cases c ON c.id = t.case_id "
                                                       "WHERE c.case_key = 'case-002'")}
    assert not case2_tasks & {row.split("\t")[4] for row in page.locator("table.audit tbody tr").all_inner_texts()}


def test_an_expired_session_goes_to_sign_in_and_back_to_the_same_page_and_next_stays_local(lab, server, page):
    sign_in(page, server.url, "admin")
    page.goto(f"{server.url}/projects/{lab.project_id}?status=open")
    assert page.locator("table.cases tbody tr[data-case]").count() == 3
    # the session's idle time runs out (30 minutes without a request)
    sql(lab.db_url, "UPDATE auth_tokens SET last_used_at = :t, created_at = :t",
        t="2000-01-01 00:00:00")
    page.reload()
    assert page.url == f"{server.url}/signin?next=/projects/{lab.project_id}%3Fstatus%3Dopen"
    fill_sign_in(page, "admin")
    assert page.url == f"{server.url}/projects/{lab.project_id}?status=open"

    press(page, page.get_by_role("button", name="Sign out"))
    assert page.url == server.url + "/signin"
    page.goto(server.url + "/users")
    assert "/signin?next=/users" in page.url  # signed out means signed out: the token was revoked server-side
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/\r\n//evil.example"):
        page.goto(server.url + "/signin?next=" + quote(target, safe=""))
        fill_sign_in(page, "admin")
        assert page.url == server.url + "/", (target, page.url)  # never to another site
        press(page, page.get_by_role("button", name="Sign out"))


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_behind_tls(lab, server, page, tmp_path):
    sign_in(page, server.url, "admin")
    cookie = next(c for c in page.context.cookies() if c["name"] == "medannot_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert page.evaluate("document.cookie") == ""  # no script on the page could read it
    tls = ServerProcess(lab.db_url, tmp_path / "data", env={"MEDANNOT_BEHIND_TLS": "1"}).start()
    try:
        form = requests.get(tls.url + "/signin", timeout=30)
        signin_cookie = form.raw.headers.getlist("set-cookie")[0]
        assert signin_cookie.startswith("medannot_signin=") and "secure" in signin_cookie.lower()
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        signed = requests.post(tls.url + "/signin", data={"username": "admin", "password": PASSWORD, "csrf": nonce},
                               cookies={"medannot_signin": form.cookies["medannot_signin"]}, allow_redirects=False, timeout=30)
        assert signed.status_code == 303
        session = next(c for c in signed.raw.headers.getlist("set-cookie") if c.startswith("medannot_session="))
        attributes = {part.strip().split("=")[0].lower() for part in session.split(";")[1:]}
        assert {"httponly", "secure", "samesite"} <= attributes and "samesite=strict" in session.lower()
    finally:
        tls.stop()


def test_wrong_passwords_are_refused_audited_and_throttled_like_the_api(lab, tmp_path, page):
    # the first block lasts a minute here (1 s by default), so a slow machine cannot outlast it between steps
    server = ServerProcess(lab.db_url, tmp_path / "slow-data", env={"MEDANNOT_LOGIN_CLIENT_BLOCK_SECONDS": "60"})
    try:
        _throttled_like_the_api(lab, server.start(), page)
    finally:
        server.stop()


def _throttled_like_the_api(lab, server, page):
    for _ in range(5):
        sign_in(page, server.url, "r1", password="not the password at all")
        assert page.get_by_role("alert").inner_text() == "Invalid user name or password."
        assert "/signin" in page.url
    # the right password, but this computer is now throttled, as it is for the API (and the API sees it too)
    sign_in(page, server.url, "r1")
    assert page.get_by_role("alert").inner_text().startswith("Too many failed sign-ins from this computer")
    assert "/signin" in page.url
    answer = requests.post(server.url + "/api/v1/auth/login", json={"username": "r1", "password": PASSWORD},
                           timeout=30)
    assert answer.status_code == 429 and "Retry-After" in answer.headers
    reasons = [r for (r,) in sql(lab.db_url, "SELECT reason FROM audit_records WHERE action = 'login.failed' AND "
                                              "entity = 'user:r1' ORDER BY seq")]
    assert reasons == ["wrong password"] * 5  # throttled attempts write no records (#14 L5)


def test_a_forged_or_stale_form_post_is_refused_and_changes_nothing(lab, server, page):
    for _ in range(2):  # r1 has failed sign-ins: the admin's users page offers to lift the count
        requests.post(server.url + "/api/v1/auth/login", json={"username": "r1", "password": "wrong wrong wrong"},
                      timeout=30)

    def failed() -> int:
        return int(sql(lab.db_url, "SELECT failed_logins FROM users WHERE username = 'r1'")[0][0])

    assert failed() == 2
    sign_in(page, server.url, "admin", path="/users")
    assert page.url == server.url + "/users"
    old_token = page.locator("tr[data-user=r1] input[name=csrf]").get_attribute("value")

    # a post with the admin's cookie but no token, and one with a made-up token
    for form in ({}, {"csrf": "0" * 64}):
        refused = page.request.post(server.url + "/users/r1/unlock", form=form, max_redirects=0)
        assert refused.status == 403 and "nothing was done" in refused.text()
    assert failed() == 2

    # a page on another site that posts the form: SameSite=Strict keeps the session cookie home
    page.route("http://attacker.test/", lambda route: route.fulfill(content_type="text/html", body=(
        f'<form id="f" method="post" action="{server.url}/users/r1/unlock">'
        f'<input name="csrf" value="{old_token}"></form><script>document.getElementById("f").submit()</script>')))
    page.goto("http://attacker.test/")
    page.wait_for_url(re.compile(r".*/signin.*"))
    assert failed() == 2

    # the token of an earlier session is stale once the admin signed out and in again
    page.goto(server.url + "/users")
    press(page, page.get_by_role("button", name="Sign out"))
    sign_in(page, server.url, "admin", path="/users")
    stale = page.request.post(server.url + "/users/r1/unlock", form={"csrf": old_token or ""}, max_redirects=0)
    assert stale.status == 403 and "nothing was done" in stale.text()
    assert failed() == 2

    # a sign-in post without the sign-in form's token is refused before any password check
    logins = len(sql(lab.db_url, "SELECT seq FROM audit_records WHERE action LIKE 'login.%'"))
    forged = page.request.post(server.url + "/signin", form={"username": "admin", "password": PASSWORD},
                               max_redirects=0)
    assert forged.status == 403 and "nothing was done" in forged.text()
    assert len(sql(lab.db_url, "SELECT seq FROM audit_records WHERE action LIKE 'login.%'")) == logins

    # the real form works, and is audited as the admin's act
    press(page, page.locator("tr[data-user=r1]").get_by_role("button", name="Lift throttle"))
    assert page.url == server.url + "/users" and failed() == 0
    assert sql(lab.db_url, "SELECT \"user\" FROM audit_records WHERE action = 'user.unlock'") == [("admin",)]


def test_an_annotator_is_refused_admin_pages_and_no_page_shows_a_password_or_token(lab, server, page, tmp_path):
    r2 = reader(server, "r2")
    r2_task = r2.claim(lab.project_id)
    assert r2_task is not None
    sign_in(page, server.url, "r1")
    r1_task = reader(server, "r1").claim(lab.project_id)
    assert r1_task is not None
    page.reload()
    leases = page.locator("table.leases tbody tr").all_inner_texts()
    assert len(leases) == 1 and leases[0].startswith("r1\t")  # their own lease, not who else reads what
    assert page.get_by_role("link", name="Users").count() == 0
    for path in ("/users", f"/projects/{lab.project_id}", "/cases/1", f"/projects/{lab.project_id}/package"):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 403, path
        assert page.get_by_role("heading", name="Not allowed").is_visible()
        assert "you are signed in as r1 (annotator)" in page.get_by_role("alert").inner_text()
    refused = page.request.post(server.url + "/users/r2/unlock", max_redirects=0)
    assert refused.status == 403

    secrets = [PASSWORD, r1_task.lease_token, r2_task.lease_token,
               *(c["value"] for c in page.context.cookies() if c["name"] == "medannot_session")]
    hashes = [h for (h,) in sql(lab.db_url, "SELECT password_hash FROM users")]
    hashes += [h for (h,) in sql(lab.db_url, "SELECT token_hash FROM auth_tokens")]
    pages = [page.content()]
    press(page, page.get_by_role("button", name="Sign out"))
    sign_in(page, server.url, "admin")
    secrets += [c["value"] for c in page.context.cookies() if c["name"] == "medannot_session"]
    for path in ("/", "/users", f"/projects/{lab.project_id}", "/cases/1", "/cases/2",
                 f"/projects/{lab.project_id}/package"):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 200, path
        pages.append(page.content())
    for html in pages:
        for secret in secrets + hashes:
            assert secret and secret not in html
        assert "$argon2" not in html
        # every asset is this server's own: nothing is loaded from the internet
        assert all(ref.startswith("/") for ref in re.findall(r'(?:src|href)="([^"#][^"]*)"', html)), html
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script runs
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_an_admin_builds_the_package_sees_its_verification_and_downloads_it(lab, server, page, tmp_path):
    import json
    import zipfile

    read_case(lab, server, "r1", tmp_path)
    read_case(lab, server, "r2", tmp_path)
    make_final(lab, server)  # case-001 final; case-002 and case-003 open
    sign_in(page, server.url, "admin", path=f"/projects/{lab.project_id}")
    press(page, page.get_by_role("link", name="Submission package"))
    assert page.url == f"{server.url}/projects/{lab.project_id}/package"
    assert "1 of 3 cases are final" in page.locator("main").inner_text()

    page.get_by_label("only if every case is final").check()
    with page.expect_navigation() as refused:
        page.get_by_role("button", name="Build package").click()
    assert refused.value is not None and refused.value.status == 409
    assert "2 case(s) not final: case-002, case-003" in page.get_by_role("alert").inner_text()
    assert not list((tmp_path / "data" / "packages").glob("project-*/*"))  # a refused build leaves nothing

    page.goto(f"{server.url}/projects/{lab.project_id}/package")
    press(page, page.get_by_role("button", name="Build package"))
    rows = page.locator("table.packages tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td.verify").inner_text().startswith("intact:")
    assert "1 final; open: case-002, case-003" in rows.first.inner_text()
    with page.expect_download() as download:
        rows.first.get_by_role("link", name="download").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = set(archive.namelist())
        summary = json.loads(archive.read("data/package.json"))
    assert {"bagit.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt"} <= names
    assert summary["final_cases"] == 1 and summary["open_cases"] == ["case-002", "case-003"]
    assert sql(lab.db_url, "SELECT \"user\" FROM audit_records WHERE action = 'package.build'") == [("admin",)]
    for name in ("20000101T000000Z-000000", "..%2F..%2Fserver.db%00"):  # not built here / not a package name
        missing = page.goto(f"{server.url}/projects/{lab.project_id}/package/{name}.zip")
        assert missing is not None and missing.status == 404, name


def test_a_reviewer_sees_only_the_projects_they_are_a_member_of(lab, server, page):
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.projects import set_members

    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        set_members(session, lab.project_id, [], ["rev"], actor="test")
    engine.dispose()
    sign_in(page, server.url, "rev")
    assert page.locator(f"#project-{lab.project_id}").count() == 0
    assert "not a member of any project" in page.locator(".none-projects").inner_text()
    for path in (f"/projects/{lab.project_id}", "/cases/1"):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 403, path
        assert f"not a member of project {lab.project_id}" in page.get_by_role("alert").inner_text()


def test_a_returned_read_puts_its_case_back_in_reading_until_its_new_read_is_in(lab, server, tmp_path):
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.models import Project
    from medannot.server.web.progress import case_rows

    def statuses() -> dict[str, str]:
        engine = make_engine(lab.db_url)
        try:
            with transaction(session_factory(engine)) as session:
                project = session.get(Project, lab.project_id)
                assert project is not None
                return {row.case_key: row.status for row in case_rows(session, project)}
        finally:
            engine.dispose()

    first = read_case(lab, server, "r1", tmp_path)
    read_case(lab, server, "r2", tmp_path)
    assert statuses()["case-001"] == "review"
    rev = reader(server, "rev")
    claimed = rev.claim_review(lab.project_id)
    assert claimed is not None
    rev.decide(claimed["review_id"], claimed["lease_token"], str(uuid.uuid4()), "return", first, "liver tip missed")
    assert statuses()["case-001"] == "reading"
    again = read_case(lab, server, "r1", tmp_path)  # the returned slot comes back to r1 first
    assert again != first
    assert statuses() == {"case-001": "review", "case-002": "open", "case-003": "open"}


@pytest.mark.parametrize("target, expected", [
    ("/projects/1?status=final", "/projects/1?status=final"), ("/", "/"), ("", "/"), (None, "/"),
    ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("\\\\evil", "/"),
    ("/\t/evil.example", "/"), ("/\r\n/evil.example", "/"), ("projects/1", "/"), ("javascript:alert(1)", "/"),
])
def test_after_sign_in_only_a_path_on_this_server_is_followed(target, expected):
    from medannot.server.web.sessions import local_path

    assert local_path(target) == expected


def test_the_package_page_shows_the_results_archive_outbox_with_its_errors(lab, server, page, tmp_path):
    import socket

    from harness import medannot

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    proc = medannot("admin", "project", "archive", lab.project_id, f"http://127.0.0.1:{closed}/dicom-web",
                    "--data-dir", tmp_path / "data", db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    read_case(lab, server, "r1", tmp_path)
    read_case(lab, server, "r2", tmp_path)
    make_final(lab, server)  # the signature that makes case-001 final queues its files
    proc = medannot("admin", "archive", "send", "--data-dir", tmp_path / "data", db=lab.db_url)
    assert proc.returncode == 1  # the archive is down: kept, retried
    sign_in(page, server.url, "admin", path=f"/projects/{lab.project_id}/package")
    rows = page.locator("table.outbox tbody tr")
    assert rows.count() == 3
    states = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(3)]
    assert states == ["pending"] * 3
    assert all("cannot reach the archive" in rows.nth(i).inner_text() for i in range(3))
