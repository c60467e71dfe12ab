"""The dashboard's insight pages: the completions chart of the projects page (a PNG drawn here), a project's
agreement (the review report's figures with their numbers, reviewers and admins), and the audit trail (admins, as
the API's ``/audit``): filtered, paged, with the result of ``audit verify`` and the last anchor.

Added to the dashboard's router by :func:`install_insights`; every image is served from this server, so the pages
need no script and load nothing from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from medannot.server.config import ServerSettings
from medannot.server.db import transaction
from medannot.server.models import Project, utcnow
from medannot.server.web import activity, agreement, audit_trail
from medannot.server.web.pages import PageError, Visitor, render, require_role, signed_in

ProjectOf = Callable[[Session, int, Visitor], Project]
IMAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
METRIC_LABELS = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "nsd": "NSD"}


def _figure_numbers(report: dict[str, Any], key: str) -> dict[str, Any]:
    """The numbers of one figure of report.json as a table: its title, column names and rows."""
    part, _, name = key.partition(".")
    if part == "per_structure":
        rows = [[segment, METRIC_LABELS[metric], s["n"], s.get("median"), s.get("q1"), s.get("q3"), s.get("mean"),
                 s["missing"]]
                for segment, metrics in sorted(report["per_structure"].items())
                for metric, s in metrics.items()]
        return {"title": "Per structure: reader pairs", "numbers": key, "digits": [None, None, 0, 3, 3, 3, 3, 0],
                "columns": ["structure", "metric", "pairs", "median", "q1", "q3", "mean", "missing"], "rows": rows}
    if part == "per_reader":
        rows = [[reader, segment, s["dice"]["n"], s["dice"].get("mean"), s["hd95_mm"].get("mean"),
                 s["nsd"].get("mean")]
                for reader, segments in sorted(report["per_reader"][name].items())
                for segment, s in sorted(segments.items())]
        return {"title": f"Per reader: against the {name}", "numbers": key, "digits": [None, None, 0, 3, 3, 3],
                "columns": ["reader", "structure", "cases", "mean Dice", "mean HD95 (mm)", "mean NSD"], "rows": rows}
    ba = report["bland_altman_volume_ml"][name]
    return {"title": f"Bland-Altman of volumes: {name} (reader minus consensus, ml)", "numbers": key,
            "digits": [0, 3, 3, 3, 3],
            "columns": ["pairs", "bias", "SD", "95% limit low", "95% limit high"],
            "rows": [[ba["n"], ba["bias"], ba["sd"], ba["loa_low"], ba["loa_high"]]]}


def install_insights(router: APIRouter, settings: ServerSettings, factory: sessionmaker[Session],
                     project_of: ProjectOf) -> None:
    """Add the completions chart, the agreement page and the audit page to the dashboard's ``router``;
    ``project_of`` is the dashboard's own project lookup (404 unknown, 403 not a member)."""

    @router.get("/projects/{project_id}/completions.png")
    def completions_chart(request: Request, project_id: int) -> Response:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            project = project_of(session, project_id, visitor)
            done = activity.completions(activity.final_times(session, project), utcnow().date())
            title = project.name
        if not done.days:
            raise PageError(404, f"No case of project {project_id} is final yet: there is no chart to draw.")
        png = activity.completions_png(title, done.days, done.final)
        return Response(png, media_type="image/png", headers=IMAGE_HEADERS)

    @router.get("/projects/{project_id}/agreement", response_class=HTMLResponse)
    def agreement_page(request: Request, project_id: int) -> HTMLResponse:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "reviewer", "admin")
            project = project_of(session, project_id, visitor)
            report = agreement.agreement_report(session, settings.data_dir, project)
            figures = [] if report is None else [
                {**_figure_numbers(report.report, f["numbers"]), "file": f["file"]} for f in report.report["figures"]]
            return render("agreement.html", visitor=visitor, project=project, report=report, figures=figures)

    @router.get("/projects/{project_id}/agreement/{key}/{name}")
    def agreement_figure(request: Request, project_id: int, key: str, name: str) -> Response:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "reviewer", "admin")
            project_of(session, project_id, visitor)
        report = agreement.stored_report(settings.data_dir, project_id, key)
        path: Path | None = report.figure(name) if report is not None else None
        if path is None or not path.is_file():
            raise PageError(404, f"Project {project_id} has no agreement figure {key}/{name}; open its agreement "
                                 "page again (the figures are redrawn when the numbers change).")
        return Response(path.read_bytes(), media_type="image/png", headers=IMAGE_HEADERS)

    @router.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, actor: str = "", action: str = "", entity: str = "", since: str = "",
                   until: str = "", before: int | None = None, after: int | None = None,
                   limit: int = audit_trail.PAGE_SIZE, verify: str = "") -> HTMLResponse:
        with transaction(factory) as session:
            visitor = signed_in(session, request)
            require_role(visitor, "admin")  # the API's /audit is for admins only
            try:
                chosen = audit_trail.TrailFilter.parse(actor, action, entity, since, until)
            except audit_trail.FilterError as exc:
                raise PageError(400, str(exc)) from exc
            if not 1 <= limit <= audit_trail.MAX_PAGE_SIZE:
                raise PageError(400, f"limit {limit}: show between 1 and {audit_trail.MAX_PAGE_SIZE} records a page.")
            shown = audit_trail.trail_page(session, chosen, before, after, limit)
            verification = audit_trail.current_verification(session, now=verify == "now")
            query = {**chosen.query(), **({"limit": str(limit)} if limit != audit_trail.PAGE_SIZE else {})}
            return render("audit.html", visitor=visitor, chosen=chosen, page=shown, verification=verification,
                          query=query, anchor_env=audit_trail.ANCHOR_FILE_ENV)
