"""Make the README's dashboard figures: a generated lab (cases final, in review, in reading and open) behind a real
`medannot serve`, its pages photographed in Debian's headless Chromium.

    PYTHONPATH=MedAnnotExtension python Testing/server/dashboard_screenshots.py docs/
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from browser import chromium_binary, chromium_problem  # noqa: E402
from harness import PASSWORD, ServerProcess, make_final, make_lab, medannot, read_case, reader  # noqa: E402
from test_dashboard_insights import read_shifted  # noqa: E402


def main(out: Path) -> None:
    problem = chromium_problem()
    if problem:
        raise SystemExit(problem)
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medannot-shots-") as tmp:
        root = Path(tmp)
        lab = make_lab(f"sqlite:///{root / 'server.db'}", root / "lab", cases=8, annotators=3,
                       extra_users={"rev": "reviewer"})
        anchors = root / "anchors.jsonl"
        server = ServerProcess(lab.db_url, root / "data", env={"MEDANNOT_AUDIT_ANCHOR_FILE": str(anchors)}).start()
        try:
            for name, shift in (("r1", 0), ("r2", 1)):  # case-001: both reads in, decided, signed: final
                read_shifted(lab, server, name, root, shift)
            make_final(lab, server)
            for name, shift in (("r2", 2), ("r1", 0)):  # case-002: both reads in: in review
                read_shifted(lab, server, name, root, shift)
            read_case(lab, server, "r3", root)  # case-003: one read in ...
            reader(server, "r1").claim(lab.project_id)  # ... and r1 reads it now
            reader(server, "r2").claim(lab.project_id)  # case-004: r2 reads it now
            medannot("audit", "anchor", "--output", anchors, db=lab.db_url)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium_binary(), headless=True)
                page = browser.new_page(viewport={"width": 1100, "height": 700}, device_scale_factor=1)
                page.goto(server.url + "/")
                page.screenshot(path=str(out / "dashboard-signin.png"))
                page.get_by_label("User name").fill("admin")
                page.get_by_label("Password").fill(PASSWORD)
                with page.expect_navigation():
                    page.get_by_role("button", name="Sign in").click()
                page.screenshot(path=str(out / "dashboard-projects.png"), full_page=True)
                page.goto(f"{server.url}/projects/{lab.project_id}")
                page.screenshot(path=str(out / "dashboard-cases.png"), full_page=True)
                page.goto(f"{server.url}/cases/1")
                page.screenshot(path=str(out / "dashboard-case.png"), full_page=True)
                page.goto(f"{server.url}/projects/{lab.project_id}/agreement")
                page.screenshot(path=str(out / "dashboard-agreement.png"), full_page=True)
                page.goto(f"{server.url}/audit?limit=12")
                page.screenshot(path=str(out / "dashboard-audit.png"), full_page=True)
                page.goto(f"{server.url}/projects/{lab.project_id}/package")
                with page.expect_navigation():
                    page.get_by_role("button", name="Build package").click()
                page.screenshot(path=str(out / "dashboard-package.png"), full_page=True)
                page.goto(f"{server.url}/users/r1")
                page.screenshot(path=str(out / "dashboard-user.png"), full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('dashboard-*.png')))} to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
