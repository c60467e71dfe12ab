"""The dashboard's insight pages in a real browser (Debian's Chromium, headless, driven by Playwright) against a real
`medannot serve`, on SQLite and PostgreSQL: the completions chart and throughput of the projects page as cases
become final, a project's agreement page against the review report module's own numbers, and the audit page's
filters, paging, verification and last anchor; annotators are refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import create_engine, text
from harness import (  # noqa: F401
    GUIDELINE, PASSWORD, SHAPE, Lab, ServerProcess, db_url, login, make_final, make_lab, medannot, read_case, reader,
)
from test_dashboard import counts, press, sign_in, sql

from medannot.demo_data import ct_geometry, ct_phantom
from medannot.dicomseg import ReaderInfo, export_segmentation
from medannot.guideline import load_guideline
from medannot.imaging import load_source


@pytest.fixture
def lab(db_url: str, tmp_path: Path) -> Lab:  # noqa: F811
    return make_lab(db_url, tmp_path / "lab", cases=3, extra_users={"rev": "reviewer"})


@pytest.fixture
def anchors(tmp_path: Path) -> Path:
    return tmp_path / "anchors.jsonl"


@pytest.fixture
def server(lab: Lab, tmp_path: Path, anchors: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(lab.db_url, tmp_path / "data", env={"MEDANNOT_AUDIT_ANCHOR_FILE": str(anchors)}).start()
    try:
        yield process
    finally:
        process.stop()


def read_shifted(lab: Lab, server: ServerProcess, name: str, tmp_path: Path, shift: int) -> int:
    """``name`` claims the next slot and submits the phantom's labels moved ``shift`` columns (so readers
    disagree a little, and volumes differ at the image's edge); returns the submission id."""
    client = reader(server, name)
    task = client.claim(lab.project_id)
    assert task is not None
    _, labels = ct_phantom(SHAPE)
    moved = np.roll(labels, shift, axis=2)
    if shift > 0:
        moved[:, :, :shift] = 0
    result = export_segmentation(load_source(lab.series[str(task.case_id)]), moved, ct_geometry(SHAPE),
                                 load_guideline(GUIDELINE), ReaderInfo(f"{name}^Test", name),
                                 tmp_path / f"{name}-{task.task_id}")
    return client.submit(task.task_id, task.lease_token, result.seg_path, result.sr_path,
                         str(uuid.uuid4())).submission_id


def table(page, selector: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    rows = page.locator(f"{selector} tbody tr")
    return [[cell.strip() for cell in rows.nth(i).inner_text().split("\t")] for i in range(rows.count())]


def image_loaded(page, server: ServerProcess, locator) -> bytes:  # type: ignore[no-untyped-def]
    """The image's bytes as this server sent them, after checking the browser drew it."""
    assert locator.evaluate("img => img.complete && img.naturalWidth > 0")
    answer = page.request.get(server.url + locator.get_attribute("src"))
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    body = answer.body()
    assert body.startswith(b"\x89PNG\r\n\x1a\n")
    return body


def tamper(db: str, statement: str) -> None:
    """Change the trail behind the server's back, as a database administrator could (on PostgreSQL going
    around the append-only trigger)."""
    engine = create_engine(db, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only"))
        connection.execute(text(statement))
        if postgres:
            connection.execute(text("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only"))
    engine.dispose()


def test_the_projects_page_charts_completions_and_its_numbers_change_as_cases_become_final(lab, server, page,
                                                                                            tmp_path):
    sign_in(page, server.url, "admin")
    section = f"#project-{lab.project_id}"
    assert page.locator(f"{section} .no-completions").is_visible()
    assert page.locator(f"{section} img.chart").count() == 0
    assert table(page, f"{section} table.throughput") == [["last 7 days", "0", "0.00"], ["last 30 days", "0", "0.00"]]
    missing = page.request.get(f"{server.url}/projects/{lab.project_id}/completions.png")
    assert missing.status == 404  # nothing is final: no chart

    read_case(lab, server, "r1", tmp_path)
    read_case(lab, server, "r2", tmp_path)  # case-001: both reads in
    page.reload()
    times = dict((row[0], row[1:]) for row in table(page, f"{section} table.times"))
    assert times["per read (claim to submit)"][0] == "2" and times["per case (first claim to final)"][0] == "0"
    assert page.locator(f"{section} .no-completions").is_visible()

    make_final(lab, server)
    page.reload()
    assert counts(page, lab.project_id)["final"] == 1
    # the day it became final is the day of its last required signature (UTC), as the database has it
    (signed,) = sql(lab.db_url, "SELECT MAX(signed_at) FROM signatures")[0]
    day = str(signed)[:10]
    assert table(page, f"{section} table.completions") == [[day, "1", "1"]]
    first = image_loaded(page, server, page.locator(f"{section} img.chart"))
    assert table(page, f"{section} table.throughput") == [["last 7 days", "1", "0.14"], ["last 30 days", "1", "0.03"]]
    times = dict((row[0], row[1:]) for row in table(page, f"{section} table.times"))
    assert times["per case (first claim to final)"][0] == "1"
    assert times["per case (first claim to final)"][1].endswith("min")

    read_case(lab, server, "r2", tmp_path)
    read_case(lab, server, "r1", tmp_path)  # case-002
    make_final(lab, server)
    page.reload()
    assert table(page, f"{section} table.completions") == [[day, "2", "2"]]
    assert table(page, f"{section} table.throughput")[0] == ["last 7 days", "2", "0.29"]
    second = image_loaded(page, server, page.locator(f"{section} img.chart"))
    assert second != first  # redrawn with the new numbers

    # a case that became final 40 days ago (its decision and signatures moved back) leaves the 7- and 30-day
    # windows, and the chart starts that day
    old = (datetime.now(timezone.utc) - timedelta(days=40)).replace(tzinfo=None)
    (review_id,) = sql(lab.db_url, "SELECT MIN(id) FROM reviews")[0]
    sql(lab.db_url, "UPDATE reviews SET decided_at = :t WHERE id = :r", t=old, r=review_id)
    sql(lab.db_url, "UPDATE signatures SET signed_at = :t WHERE review_id = :r", t=old, r=review_id)
    page.reload()
    assert table(page, f"{section} table.completions") == [[day, "1", "2"], [old.date().isoformat(), "1", "1"]]
    assert table(page, f"{section} table.throughput") == [["last 7 days", "1", "0.14"], ["last 30 days", "1", "0.03"]]
    assert image_loaded(page, server, page.locator(f"{section} img.chart")) not in (first, second)

    # an annotator sees the chart of their project too, and the page has no script to need
    page.context.clear_cookies()
    sign_in(page, server.url, "r1")
    image_loaded(page, server, page.locator(f"{section} img.chart"))
    assert page.locator(f"{section} a[href='/projects/{lab.project_id}/agreement']").count() == 0


def test_the_agreement_page_shows_the_review_report_with_the_report_modules_numbers(lab, server, page, tmp_path):
    from medannot.review.report import summarise

    read_shifted(lab, server, "r1", tmp_path, 0)
    read_shifted(lab, server, "r2", tmp_path, 1)  # case-001: r2 one column off
    read_shifted(lab, server, "r2", tmp_path, 2)
    read_shifted(lab, server, "r1", tmp_path, 0)  # case-002: r2 two columns off
    make_final(lab, server)

    # the numbers, independently: every review round from the API, reads named by their readers, summarised by
    # the report module
    headers = login(server.url, "admin")
    rows = []
    for summary in requests.get(f"{server.url}/api/v1/projects/{lab.project_id}/reviews", headers=headers,
                                timeout=30).json():
        detail = requests.get(f"{server.url}/api/v1/reviews/{summary['review_id']}", headers=headers,
                              timeout=30).json()
        names = {str(r["submission_id"]): r["reader"] for r in detail["reads"]}
        rows += [{**m, "case": detail["case_id"], "a": names.get(m["a"], m["a"]), "b": names.get(m["b"], m["b"])}
                 for m in detail["metrics"]]
    expected = summarise(rows)
    assert expected["per_structure"]["Liver"]["dice"]["median"] < 1  # the readers really disagree

    sign_in(page, server.url, "rev")
    press(page, page.locator(f"#project-{lab.project_id}").get_by_role("link", name="Agreement"))
    assert page.url == f"{server.url}/projects/{lab.project_id}/agreement"
    figures = page.locator("section.figure")
    assert [figures.nth(i).get_attribute("data-numbers") for i in range(figures.count())] == [
        "per_structure", "per_reader.consensus",
        *(f"bland_altman_volume_ml.{s}" for s in expected["bland_altman_volume_ml"])]
    shown = []
    for i in range(figures.count()):
        shown.append(image_loaded(page, server, figures.nth(i).locator("img")))
    assert len(set(shown)) == len(shown)

    def f3(value: float | None) -> str:
        return "\u2013" if value is None else f"{value:.3f}"

    structure = table(page, "#figure-per_structure table.numbers")
    label = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "nsd": "NSD"}
    assert structure == [[segment, label[metric], str(s["n"]), f3(s.get("median")), f3(s.get("q1")),
                          f3(s.get("q3")), f3(s.get("mean")), str(s["missing"])]
                         for segment, metrics in sorted(expected["per_structure"].items())
                         for metric, s in metrics.items()]
    per_reader = table(page, "#figure-per_reader-consensus table.numbers")
    assert per_reader == [[reader_name, segment, str(s["dice"]["n"]), f3(s["dice"].get("mean")),
                           f3(s["hd95_mm"].get("mean")), f3(s["nsd"].get("mean"))]
                          for reader_name, segments in sorted(expected["per_reader"]["consensus"].items())
                          for segment, s in sorted(segments.items())]
    assert {row[0] for row in per_reader} == {"r1", "r2"}
    for segment, ba in expected["bland_altman_volume_ml"].items():
        numbers = table(page, f"[data-numbers='bland_altman_volume_ml.{segment}'] table.numbers")
        assert numbers == [[str(ba["n"]), f3(ba["bias"]), f3(ba["sd"]), f3(ba["loa_low"]), f3(ba["loa_high"])]]
    assert expected["bland_altman_volume_ml"]["Liver"]["bias"] != 0

    # a second view draws nothing again; a new measured round makes a new report
    figure_url = figures.first.locator("img").get_attribute("src")
    page.reload()
    assert figures.first.locator("img").get_attribute("src") == figure_url
    read_shifted(lab, server, "r1", tmp_path, 0)
    read_shifted(lab, server, "r2", tmp_path, 0)  # case-003: the readers agree
    page.reload()
    assert figures.first.locator("img").get_attribute("src") != figure_url
    assert "3 case(s)" in page.locator(".summary").inner_text()

    # annotators never see agreement (blinding), neither the page nor its figures
    page.context.clear_cookies()
    sign_in(page, server.url, "r1")
    for path in (f"/projects/{lab.project_id}/agreement", figure_url):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 403, path
        assert "you are signed in as r1 (annotator)" in page.get_by_role("alert").inner_text()
    for name in ("../../server.db", "report.json"):  # only the figures report.json lists are served
        page.context.clear_cookies()
        sign_in(page, server.url, "rev")
        key = figure_url.split("/")[-2]  # type: ignore[union-attr]
        answer = page.request.get(f"{server.url}/projects/{lab.project_id}/agreement/{key}/{name}")
        assert answer.status == 404, name


def test_the_agreement_page_before_any_review_says_so(lab, server, page):
    sign_in(page, server.url, "admin", path=f"/projects/{lab.project_id}/agreement")
    assert "needs at least one case whose reads are all in" in page.locator(".no-report").inner_text()


def test_the_audit_page_filters_pages_verifies_and_shows_the_last_anchor(lab, server, page, tmp_path, anchors):
    read_case(lab, server, "r1", tmp_path)
    read_case(lab, server, "r2", tmp_path)
    reader(server, "r1").claim(lab.project_id)  # case-002 slot 1
    proc = medannot("audit", "anchor", "--output", anchors, db=lab.db_url)
    assert proc.returncode == 0, proc.stderr
    sign_in(page, server.url, "admin", path="/audit")
    assert page.url == server.url + "/audit"

    verify = medannot("audit", "verify", "--anchor", anchors, db=lab.db_url)
    assert verify.returncode == 0, verify.stderr
    page.reload()
    assert page.locator(".verify-result").inner_text() == verify.stdout.strip()
    (head,) = sql(lab.db_url, "SELECT MAX(seq) FROM audit_records WHERE action = 'task.claim'")[0]
    assert f"Last anchor: record {head}," in page.locator(".last-anchor").inner_text()

    def shown() -> list[list[str]]:
        return table(page, "table.audit")

    def seqs(where: str = "1 = 1", **params: object) -> list[int]:
        return [s for (s,) in sql(lab.db_url, f"SELECT seq FROM audit_records WHERE {where} ORDER BY seq DESC",
                                  **params)]

    everything = seqs()
    assert [int(r[0]) for r in shown()] == everything[:50]
    assert f"{len(everything)} record(s) match" in page.locator(".shown").inner_text()

    page.get_by_label("Actor").fill("r1")
    press(page, page.get_by_role("button", name="Show"))
    assert "actor=r1" in page.url
    assert [int(r[0]) for r in shown()] == seqs("\"user\" = 'r1'") and {r[2] for r in shown()} == {"r1"}

    page.get_by_label("Actor").fill("")
    page.get_by_label("Action").fill("task.*")
    press(page, page.get_by_role("button", name="Show"))
    assert [int(r[0]) for r in shown()] == seqs("action LIKE 'task.%'")
    assert {r[3] for r in shown()} == {"task.claim", "task.submit"}

    (task_id,) = sql(lab.db_url, "SELECT id FROM tasks WHERE case_id = 1 AND slot = 1")[0]
    page.get_by_label("Action").fill("")
    page.get_by_label("Entity").fill(f"task:{task_id}")
    press(page, page.get_by_role("button", name="Show"))
    assert [r[4] for r in shown()] == [f"task:{task_id}"] * len(seqs("entity = :e", e=f"task:{task_id}"))
    assert {r[3] for r in shown()} == {"task.claim", "task.submit"}

    page.get_by_label("Entity").fill("case:1")  # the case and its parts, as the case page lists them
    press(page, page.get_by_role("button", name="Show"))
    entities = {r[4] for r in shown()}
    assert {"case:1", f"task:{task_id}"} <= entities and all(e.split(":")[0] in ("case", "task", "submission",
                                                                                  "review") for e in entities)
    (other,) = sql(lab.db_url, "SELECT id FROM tasks WHERE case_id = 2 AND slot = 1")[0]
    assert f"task:{other}" not in entities

    today = datetime.now(timezone.utc).date()
    page.get_by_label("Entity").fill("")
    page.get_by_label("From", exact=True).fill((today + timedelta(days=1)).isoformat())
    press(page, page.get_by_role("button", name="Show"))
    assert shown() == [["No record matches."]] and "0 record(s) match" in page.locator(".shown").inner_text()
    page.get_by_label("From", exact=True).fill(today.isoformat())
    page.get_by_label("To", exact=True).fill(today.isoformat())
    press(page, page.get_by_role("button", name="Show"))
    assert [int(r[0]) for r in shown()] == seqs()[:50]
    bad = page.goto(f"{server.url}/audit?since=2026-12-05&until=2026-12-01")
    assert bad is not None and bad.status == 400 and "'from' comes after 'to'" in page.get_by_role("alert").inner_text()

    # paging: 2 a page, older and newer follow the sequence numbers, and the filter stays on
    page.goto(f"{server.url}/audit?action=task.*&limit=2")
    want = seqs("action LIKE 'task.%'")
    assert len(want) == 5
    pages = [[int(r[0]) for r in shown()]]
    while page.get_by_role("link", name="older").count():
        press(page, page.get_by_role("link", name="older"))
        assert "action=task." in page.url
        pages.append([int(r[0]) for r in shown()])
    assert [s for p in pages for s in p] == want and [len(p) for p in pages] == [2, 2, 1]
    press(page, page.get_by_role("link", name="newer"))
    assert [int(r[0]) for r in shown()] == pages[-2]
    press(page, page.get_by_role("link", name="newest"))
    assert [int(r[0]) for r in shown()] == pages[0] and page.get_by_role("link", name="newer").count() == 0

    # a record edited behind the server's back: the page names it, as `audit verify` does
    tamper(lab.db_url, "UPDATE audit_records SET reason = 'edited' WHERE seq = 3")
    page.goto(server.url + "/audit")
    assert page.locator(".verify-result").inner_text().startswith("audit trail intact")  # the check of just now
    press(page, page.get_by_role("link", name="Verify now"))
    broken = medannot("audit", "verify", "--anchor", anchors, db=lab.db_url)
    assert broken.returncode == 1
    message = page.locator(".verify-result").inner_text()
    assert message.startswith("audit trail broken at audit record 3: its content was changed")
    assert message in broken.stderr


def test_only_admins_open_the_audit_page(lab, server, page):
    for name in ("r1", "rev"):
        page.context.clear_cookies()
        sign_in(page, server.url, name)
        assert page.get_by_role("link", name="Audit").count() == 0
        response = page.goto(server.url + "/audit")
        assert response is not None and response.status == 403, name
        assert page.get_by_role("heading", name="Not allowed").is_visible()
    page.context.clear_cookies()
    sign_in(page, server.url, "admin")
    press(page, page.get_by_role("link", name="Audit"))
    assert page.url == server.url + "/audit"
    assert "No anchors" not in page.locator(".verify").inner_text()  # the anchor file is set, but not written yet
    assert "cannot read audit anchors" in page.locator(".anchor-problem").inner_text()
    # the whole trail on one page: no password, hash or token in it (the login records name only the client)
    page.goto(server.url + "/audit?limit=500")
    html = page.content()
    secrets = [PASSWORD, *(c["value"] for c in page.context.cookies() if c["name"] == "medannot_session")]
    secrets += [h for (h,) in sql(lab.db_url, "SELECT password_hash FROM users")]
    secrets += [h for (h,) in sql(lab.db_url, "SELECT token_hash FROM auth_tokens")]
    assert "login.ok" in html and all(secret not in html for secret in secrets)
