"""The dashboard's admin pages in a real browser (Debian's Chromium, headless) against a real `medannot serve`, on
SQLite and PostgreSQL: the users pages (add, sign in, disable, enable, reset password, role, roster), their
refusals (annotators, forged or stale forms), the cases page's pages, the 404 page, and the archive outbox's
"Retry now"."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from browser import new_page
from harness import PASSWORD, Lab, ServerProcess, db_url, make_final, make_lab, medannot, read_case  # noqa: F401
from test_dashboard import fill_sign_in, lab, press, server, sign_in, sql  # noqa: F401

NEW_PASSWORD = "violet harbour lantern seven"
RESET_PASSWORD = "granite meadow cobalt eleven"


@pytest.fixture
def other(browser):  # type: ignore[no-untyped-def]
    """A second browser (its own cookies): the user the admin manages."""
    yield from new_page(browser)


def user_row(db: str, name: str) -> tuple | None:  # type: ignore[type-arg]
    rows = sql(db, "SELECT role, disabled_at, password_hash, qualification, trained_on, printed_name FROM users "
                   "WHERE username = :u", u=name)
    return rows[0] if rows else None


def audit_actions(db: str, entity: str) -> list[tuple[str, str]]:
    return [(u, a) for u, a in sql(db, "SELECT \"user\", action FROM audit_records WHERE entity = :e ORDER BY seq",
                                   e=entity)]


def test_an_admin_adds_a_user_who_signs_in_then_disables_resets_and_changes_their_role(lab, server, page, other):
    sign_in(page, server.url, "admin", path="/users")
    form = page.locator("form[action='/users']")
    form.get_by_label("User name").fill("nina")
    form.get_by_label("Role").select_option("reviewer")
    form.get_by_label("Password", exact=True).fill("nina12345678")  # the API's password policy applies
    form.get_by_label("Password again").fill("nina12345678")
    form.get_by_label("Qualification").fill("radiologist, 6 years")
    press(page, form.get_by_role("button", name="Add user"))
    assert "password must not contain the user name" in page.get_by_role("alert").inner_text()
    assert user_row(lab.db_url, "nina") is None
    form = page.locator("form[action='/users']")
    assert form.get_by_label("User name").input_value() == "nina"  # kept for a second try; the password is not
    assert form.get_by_label("Qualification").input_value() == "radiologist, 6 years"
    assert form.get_by_label("Password", exact=True).input_value() == ""
    form.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    form.get_by_label("Password again").fill(NEW_PASSWORD)
    form.get_by_label("Trained on").fill("2026-02-03")
    press(page, form.get_by_role("button", name="Add user"))
    assert page.url == f"{server.url}/users/nina?done=added"
    assert page.get_by_role("status").inner_text().startswith("nina: added")
    role, disabled, _hash, qualification, trained_on, _ = user_row(lab.db_url, "nina")  # type: ignore[misc]
    assert (role, disabled, qualification, str(trained_on)[:10]) == ("reviewer", None, "radiologist, 6 years",
                                                                     "2026-02-03")

    sign_in(other, server.url, "nina", NEW_PASSWORD)
    assert other.url == server.url + "/" and other.locator(".who .role").inner_text() == "reviewer"

    page.get_by_label("Reason (kept in the audit trail)").fill("left the study")
    press(page, page.get_by_role("button", name="Disable"))
    assert page.get_by_role("status").inner_text().startswith("nina: disabled")
    assert page.locator("dd.state").inner_text().startswith("disabled since")
    other.reload()
    assert "/signin?next=" in other.url  # her open session ended at once
    fill_sign_in(other, "nina", NEW_PASSWORD)
    assert other.get_by_role("alert").inner_text() == "Invalid user name or password."

    press(page, page.get_by_role("button", name="Enable"))
    assert page.get_by_role("status").inner_text().startswith("nina: enabled")
    fill_sign_in(other, "nina", NEW_PASSWORD)
    assert "/signin" not in other.url

    page.get_by_label("New password", exact=True).fill(RESET_PASSWORD)
    page.get_by_label("New password again").fill(RESET_PASSWORD + "x")
    press(page, page.get_by_role("button", name="Reset password"))
    assert "the two passwords differ" in page.get_by_role("alert").inner_text()
    page.get_by_label("New password", exact=True).fill(RESET_PASSWORD)
    page.get_by_label("New password again").fill(RESET_PASSWORD)
    press(page, page.get_by_role("button", name="Reset password"))
    assert page.get_by_role("status").inner_text().startswith("nina: password reset")
    other.reload()
    assert "/signin?next=" in other.url  # a reset ends the sessions
    fill_sign_in(other, "nina", NEW_PASSWORD)
    assert other.get_by_role("alert").inner_text() == "Invalid user name or password."
    fill_sign_in(other, "nina", RESET_PASSWORD)
    assert "/signin" not in other.url

    page.get_by_label("New role").select_option("annotator")
    press(page, page.get_by_role("button", name="Set role"))
    assert page.get_by_role("status").inner_text().startswith("nina: role changed")
    other.reload()
    assert "/signin?next=" in other.url
    fill_sign_in(other, "nina", RESET_PASSWORD)
    assert other.locator(".who .role").inner_text() == "annotator"
    response = other.goto(f"{server.url}/users")
    assert response is not None and response.status == 403

    page.get_by_label("Printed name").fill("Nina Novak, MD")
    page.get_by_label("Qualification").fill("")
    press(page, page.get_by_role("button", name="Save roster"))
    assert page.get_by_role("status").inner_text().startswith("nina: roster fields saved")
    role, _, _, qualification, _, printed = user_row(lab.db_url, "nina")  # type: ignore[misc]
    assert (role, qualification, printed) == ("annotator", None, "Nina Novak, MD")

    changes = [(user, action) for user, action in audit_actions(lab.db_url, "user:nina") if action.startswith("user.")]
    assert changes == [
        ("admin", "user.create"), ("admin", "user.update"), ("admin", "user.disable"), ("admin", "user.enable"),
        ("admin", "user.password_reset"), ("admin", "user.role"), ("admin", "user.update")]

    # the last admin cannot disable themselves, and no page shows a password or a hash
    page.goto(f"{server.url}/users/admin")
    press(page, page.get_by_role("button", name="Disable"))
    assert "last enabled admin" in page.get_by_role("alert").inner_text()
    hashes = [h for (h,) in sql(lab.db_url, "SELECT password_hash FROM users")]
    hashes += [h for (h,) in sql(lab.db_url, "SELECT token_hash FROM auth_tokens")]
    for path in ("/users", "/users/nina", "/users/admin"):
        page.goto(server.url + path)
        html = page.content()
        for secret in (PASSWORD, NEW_PASSWORD, RESET_PASSWORD, *hashes):
            assert secret not in html, path
        assert "$argon2" not in html


def test_user_changes_need_an_admin_and_a_valid_form_token_else_nothing_changes(lab, server, page, other):
    forms = {"/users": {"username": "mallory", "role": "admin", "password": NEW_PASSWORD,
                        "password_again": NEW_PASSWORD},
             "/users/r2/role": {"role": "admin"}, "/users/r2/disable": {}, "/users/r2/enable": {},
             "/users/r2/password": {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
             "/users/r2/unlock": {}, "/users/r2/roster": {"qualification": "forged"}}
    before = sql(lab.db_url, "SELECT username, role, disabled_at, password_hash, qualification FROM users "
                             "ORDER BY username")
    records = len(sql(lab.db_url, "SELECT seq FROM audit_records WHERE action LIKE 'user.%'"))

    sign_in(other, server.url, "r1")  # an annotator, with her own valid form token
    token = other.locator("form.signout input[name=csrf]").get_attribute("value")
    for path in ("/users", "/users/r2"):
        response = other.goto(server.url + path)
        assert response is not None and response.status == 403, path
        assert "you are signed in as r1 (annotator)" in other.get_by_role("alert").inner_text()
    for path, form in forms.items():
        refused = other.request.post(server.url + path, form={**form, "csrf": token or ""}, max_redirects=0)
        assert refused.status == 403, path

    sign_in(page, server.url, "admin", path="/users/r2")
    stale = page.locator("form.signout input[name=csrf]").get_attribute("value")
    press(page, page.get_by_role("button", name="Sign out"))
    sign_in(page, server.url, "admin", path="/users/r2")
    for path, form in forms.items():
        for csrf in (None, "0" * 64, stale):  # no token, a made-up one, the one of the admin's earlier session
            sent = {**form, **({"csrf": csrf} if csrf is not None else {})}
            refused = page.request.post(server.url + path, form=sent, max_redirects=0)
            assert refused.status == 403 and "nothing was done" in refused.text(), (path, csrf)
    assert sql(lab.db_url, "SELECT username, role, disabled_at, password_hash, qualification FROM users "
                           "ORDER BY username") == before
    assert len(sql(lab.db_url, "SELECT seq FROM audit_records WHERE action LIKE 'user.%'")) == records
    other.goto(server.url + "/")
    press(other, other.get_by_role("button", name="Sign out"))
    sign_in(other, server.url, "r2")  # r2's password still works: nothing was reset, disabled or changed
    assert other.url == server.url + "/" and other.locator(".who .role").inner_text() == "annotator"


def add_cases(lab: Lab, count: int, reading: int) -> None:
    """``count`` more cases straight into the database (the pages read rows only); the first ``reading`` of them
    have slot 1 leased by r1."""
    from medannot.server.db import make_engine, session_factory, transaction
    from medannot.server.models import TASK_LEASED, TASK_OPEN, Case, Task, User, utcnow
    from sqlalchemy import select

    engine = make_engine(lab.db_url)
    with transaction(session_factory(engine)) as session:
        r1 = session.scalar(select(User.id).where(User.username == "r1"))
        for i in range(count):
            case = Case(project_id=lab.project_id, case_key=f"case-{i + 4:03d}", source="/nowhere", study_uid="1.2",
                        series_uid=f"1.2.{i}")
            session.add(case)
            session.flush()
            for slot in (1, 2):
                task = Task(project_id=lab.project_id, case_id=case.id, slot=slot, status=TASK_OPEN)
                if slot == 1 and i < reading:
                    task.status, task.reader_id, task.lease_token = TASK_LEASED, r1, uuid.uuid4().hex
                    task.lease_expires_at = utcnow() + timedelta(hours=1)
                session.add(task)
    engine.dispose()


def test_the_cases_pages_keep_filter_and_sort_and_unknown_pages_are_a_404_page(lab, server, page):
    add_cases(lab, 240, reading=150)  # 243 cases: 150 reading (r1), 93 open
    sign_in(page, server.url, "rev", path=f"/projects/{lab.project_id}")

    def shown() -> list[tuple[str, str]]:
        rows = page.locator("table.cases tbody tr[data-case]")
        return [(rows.nth(i).get_attribute("data-case"), rows.nth(i).get_attribute("data-status"))  # type: ignore[misc]
                for i in range(rows.count())]

    assert len(shown()) == 100 and shown()[0][0] == "case-001"
    assert page.locator(".shown").inner_text() == "243 cases; 1–100 on page 1 of 3"
    page.get_by_label("Status").select_option("reading")
    page.get_by_label("Reader").select_option("r1")
    page.get_by_label("Order").select_option("desc")
    press(page, page.get_by_role("button", name="Show"))
    first = shown()
    assert len(first) == 100 and {status for _, status in first} == {"reading"}
    assert first[0][0] == "case-153" and first[-1][0] == "case-054"
    press(page, page.locator("nav.pages").first.get_by_role("link", name="next"))
    query = page.url.split("?", 1)[1]
    assert set(query.split("&")) == {"status=reading", "reader=r1", "order=desc", "page=2"}
    second = shown()
    assert [key for key, _ in second] == [f"case-{n:03d}" for n in range(53, 3, -1)]  # the next 50, still sorted
    assert {status for _, status in second} == {"reading"}
    assert page.locator(".shown").inner_text() == "150 of 243 cases shown; 101–150 on page 2 of 2"
    assert page.get_by_label("Status").input_value() == "reading" and page.get_by_label("Order").input_value() == "desc"
    press(page, page.locator("nav.pages").first.get_by_role("link", name="1", exact=True))
    assert shown() == first

    for path, message in ((f"/projects/{lab.project_id}?status=reading&page=3", "There is no page 3 of these cases"),
                          ("/projects/999", "There is no project 999"), ("/cases/99999", "There is no case 99999"),
                          ("/projects/abc", "There is no page /projects/abc"),
                          ("/no/such/page", "There is no page /no/such/page")):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 404, path
        assert response.headers["content-type"].startswith("text/html")
        assert page.get_by_role("heading", name="Not found").is_visible(), path
        assert message in page.get_by_role("alert").inner_text(), path
        assert page.locator(".who").inner_text().startswith("rev")  # the page has the signed-in header
    api = page.request.get(server.url + "/api/v1/no-such-thing")
    assert api.status == 404 and api.headers["content-type"] == "application/json"  # the API keeps its JSON
    anonymous = requests.get(server.url + "/no/such/page", timeout=30)
    assert anonymous.status_code == 404 and anonymous.headers["content-type"] == "application/json"  # no page for
    # a visitor who is not signed in


def test_retry_now_sends_a_waiting_archive_file_at_once_and_shows_the_outcome(lab, tmp_path, page, orthanc):
    data = tmp_path / "data"
    env = {"MEDANNOT_ARCHIVE_INTERVAL": "0", "MEDANNOT_RESULTS_DICOMWEB_USER": orthanc.auth[0]}
    proc = medannot("admin", "project", "archive", lab.project_id, orthanc.dicomweb_url, "--data-dir", data,
                    db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    server = ServerProcess(lab.db_url, data, env={**env, "MEDANNOT_RESULTS_DICOMWEB_PASSWORD": "wrong"}).start()
    try:
        read_case(lab, server, "r1", tmp_path)
        read_case(lab, server, "r2", tmp_path)
        make_final(lab, server)  # queues case-001's files; no sender runs in this server (interval 0)
        sign_in(page, server.url, "admin", path=f"/projects/{lab.project_id}/package")
        rows = page.locator("table.outbox tbody tr")
        assert rows.count() == 3
        first = rows.first.get_attribute("data-outbox")
        press(page, rows.first.get_by_role("button", name="Retry now"))
        assert "Tried again, not sent" in page.get_by_role("alert").inner_text()
        assert "HTTP 401" in page.get_by_role("alert").inner_text()  # the archive refused the wrong password
        states = sql(lab.db_url, "SELECT id, status, attempts FROM archive_outbox ORDER BY id")
        assert [(s, a) for i, s, a in states if str(i) == first] == [("pending", 1)]
        assert sorted(a for _, _, a in states) == [0, 0, 1]  # only that file was tried

        forged = page.request.post(f"{server.url}/projects/{lab.project_id}/package/outbox/{first}/retry",
                                   form={"csrf": "0" * 64}, max_redirects=0)
        assert forged.status == 403
    finally:
        server.stop()
    server = ServerProcess(lab.db_url, data, env={**env, "MEDANNOT_RESULTS_DICOMWEB_PASSWORD": orthanc.auth[1]})
    server.start()  # the right credentials now; the outbox is in the database, nothing was lost
    try:
        page.goto(f"{server.url}/projects/{lab.project_id}/package")  # the session outlives the restart too
        row = page.locator(f"table.outbox tbody tr[data-outbox='{first}']")
        press(page, row.get_by_role("button", name="Retry now"))
        assert page.get_by_role("status").inner_text().startswith("Sent now:")
        row = page.locator(f"table.outbox tbody tr[data-outbox='{first}']")
        assert row.locator("td").nth(2).inner_text() == "sent" and row.get_by_role("button").count() == 0
        sop = sql(lab.db_url, "SELECT sop_uid FROM archive_outbox WHERE id = :i", i=int(first or 0))[0][0]
        found = requests.post(f"{orthanc.url}/tools/lookup", data=sop, auth=orthanc.auth, timeout=10).json()
        assert [item["Type"] for item in found] == ["Instance"]
        again = page.request.post(f"{server.url}/projects/{lab.project_id}/package/outbox/{first}/retry",
                                  form={"csrf": page.locator("form.signout input[name=csrf]").get_attribute("value")
                                        or ""}, max_redirects=0)
        assert again.status == 409 and "is sent, not waiting" in again.text()
        assert sql(lab.db_url, "SELECT \"user\", entity FROM audit_records WHERE action = 'archive.retry'") == [
            ("admin", f"outbox:{first}"), ("admin", f"outbox:{first}")]
    finally:
        server.stop()
