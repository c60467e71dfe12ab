"""Build the submission package of a project from the server's database and data folder (no server needed)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medannot.errors import MedAnnotError
from medannot.package import bag as bagfile
from medannot.package.deid_seam import DEID_NOT_INSTALLED

if TYPE_CHECKING:  # the server's libraries are needed to build, never to verify
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)


class PackageBuildError(MedAnnotError):
    """The package cannot be built: a stored file is missing or altered, a case is open under --require-final,
    the audit trail is broken, or the output folder is in use."""


@dataclass
class _Builder:
    session: "Session"
    data_dir: Path
    root: Path  # the bag folder
    files: list[dict[str, Any]] = field(default_factory=list)  # the lineage table

    @property
    def payload(self) -> Path:
        return self.root  # bagit moves everything written here into data/ when it makes the bag

    def write(self, relative: str, data: bytes) -> str:
        target = self.payload / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return relative

    def stored(self, sha256: str, what: str) -> bytes:
        """Bytes of a stored result, refusing a missing or altered object."""
        from medannot.server.storage import ObjectStore

        path = ObjectStore(self.data_dir).path_of(sha256)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PackageBuildError(f"{what}: stored file {path} is missing ({exc.strerror or exc}); restore the "
                                    "data folder from backup (--data-dir) before packaging") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise PackageBuildError(f"{what}: stored file {path} no longer has the sha256 on record "
                                    f"({sha256[:12]}...); it was altered: restore it from backup")
        return data


def _iso(value: datetime | date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
    return value.isoformat()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def build_package(session: "Session", data_dir: Path, project_id: int, output: Path, *,
                  include_images: bool = False, sign_key: Path | None = None, certificate: Path | None = None,
                  require_final: bool = False, anchors: list[Any] | None = None) -> dict[str, Any]:
    """Write the BagIt submission package of ``project_id`` into ``output`` (a new or empty folder).

    Parameters
    ----------
    session
        An open session on the server database (read only).
    data_dir
        The server's data folder (stored SEG/SR objects).
    project_id
        The project to package.
    output
        Folder to create; refused when it exists and is not empty.
    include_images
        Also copy the cases' source images (only through the de-identification gate).
    sign_key, certificate
        EC P-256 key and its X.509 certificate: sign the tag manifest (detached CMS, ``manifest.p7s``).
    require_final
        Fail, naming them, when any case is not final.
    anchors
        Audit anchors (``medannot audit anchor`` files, read) the trail must still hold.

    Returns
    -------
    dict
        The summary numbers (cases, open cases, files, signatures, audit head).
    """
    from sqlalchemy import select

    from medannot.audit import check_trail
    from medannot.server.audit import audit_entries
    from medannot.server.models import Case, Project, Review
    from medannot.server.review import review_summary

    project = session.get(Project, project_id)
    if project is None:
        raise PackageBuildError(f"project {project_id} does not exist; list projects with the server's "
                                "/api/v1/projects or create one with 'medannot admin project create'")
    signer = None
    if sign_key is not None or certificate is not None:
        from medannot.package.cms import load_signer

        if sign_key is None or certificate is None:
            raise PackageBuildError("signing needs both --sign-key KEY.pem and --certificate CERT.pem")
        signer = load_signer(sign_key, certificate)
    if output.exists() and any(output.iterdir()):
        raise PackageBuildError(f"{output}: exists and is not empty; give a new folder for the package")

    cases = session.scalars(select(Case).where(Case.project_id == project_id).order_by(Case.case_key)).all()
    reviews = session.scalars(select(Review).where(Review.project_id == project_id).order_by(Review.id)).all()
    summaries = {r.id: review_summary(session, r) for r in reviews}
    final_cases = {session.get(Case, r.case_id).case_key for r in reviews  # type: ignore[union-attr]
                   if summaries[r.id]["final"]}
    open_cases = [c.case_key for c in cases if c.case_key not in final_cases]
    if require_final and open_cases:
        shown = ", ".join(open_cases[:20]) + (f" and {len(open_cases) - 20} more" if len(open_cases) > 20 else "")
        raise PackageBuildError(f"project {project_id}: {len(open_cases)} case(s) not final: {shown}; finish their "
                                "reviews and signatures, or build without --require-final (they are then listed "
                                "as open)")

    entries = audit_entries(session)
    count, problem = check_trail(entries, anchors or ())
    if problem is not None:
        raise PackageBuildError(f"audit trail broken at {problem} ({count} records read); not packaging it")

    # built beside the target and renamed into place: a failed build leaves no half package behind
    output.parent.mkdir(parents=True, exist_ok=True)
    work = output.with_name(f".{output.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        numbers = _build(session, Path(data_dir), project_id, work, project, cases, reviews, summaries,
                         final_cases, open_cases, entries, include_images, certificate, signer, anchors)
        if output.exists():
            output.rmdir()  # checked empty above
        work.rename(output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("package of project %s written to %s", project_id, output)
    return numbers


def _build(session: "Session", data_dir: Path, project_id: int, output: Path, project: Any, cases: Any,
           reviews: Any, summaries: dict[int, Any], final_cases: set[str], open_cases: list[str], entries: Any,
           include_images: bool, certificate: Path | None, signer: Any, anchors: list[Any] | None
           ) -> dict[str, Any]:
    from sqlalchemy import select

    from medannot.server.models import Signature, Submission, Task, User

    b = _Builder(session, data_dir, output)
    users = {u.id: u for u in session.scalars(select(User))}
    case_by_id = {c.id: c for c in cases}
    by_seg_sha: dict[str, str] = {}  # sha256 of a SEG -> its package path

    # reads: every submission, earlier versions too
    tasks = {t.id: t for t in session.scalars(select(Task).where(Task.project_id == project_id))}
    submissions = session.scalars(select(Submission).where(Submission.task_id.in_(list(tasks)))
                                  .order_by(Submission.id)).all() if tasks else []
    newest: dict[int, int] = {}
    for s in submissions:
        newest[s.task_id] = s.id
    sub_path: dict[int, str] = {}
    for s in submissions:
        task = tasks[s.task_id]
        case = case_by_id[task.case_id]
        reader = users[s.user_id].username
        stem = f"results/{_safe(case.case_key)}/read-slot{task.slot}-{_safe(reader)}-sub{s.id}"
        what = f"case {case.case_key} submission {s.id} ({reader})"
        seg = b.write(stem + ".seg.dcm", b.stored(s.seg_sha256, what + " SEG"))
        sr = b.write(stem + ".sr.dcm", b.stored(s.sr_sha256, what + " SR"))
        sub_path[s.id] = seg
        by_seg_sha[s.seg_sha256] = seg
        b.files.append({"file": seg, "sr": sr, "kind": "read", "case": case.case_key, "seg_uid": s.seg_sop_uid,
                        "seg_sha256": s.seg_sha256, "sr_sha256": s.sr_sha256, "reader": reader,
                        "submission_id": s.id, "task_id": s.task_id, "slot": task.slot, "review_id": None,
                        "guideline_version": s.guideline_version,
                        "replaces": sub_path.get(s.replaces_id) if s.replaces_id else None, "derived_from": [],
                        "current": newest[s.task_id] == s.id, "created_at": _iso(s.created_at)})

    # consensus and reviewer-edited SEGs, made from the reads under review
    for r in reviews:
        case = case_by_id[r.case_id]
        read_files = [sub_path[i] for i in json.loads(r.submission_ids) if i in sub_path]
        for kind, seg_sha, sr_sha, uid in (("consensus", r.consensus_seg_sha256, r.consensus_sr_sha256,
                                            r.consensus_seg_uid),
                                           ("edited", r.edited_seg_sha256, r.edited_sr_sha256, r.edited_seg_uid)):
            if seg_sha is None or sr_sha is None:
                continue
            stem = f"results/{_safe(case.case_key)}/review{r.round}-{kind}"
            what = f"case {case.case_key} review {r.id} {kind}"
            seg = b.write(stem + ".seg.dcm", b.stored(seg_sha, what + " SEG"))
            sr = b.write(stem + ".sr.dcm", b.stored(sr_sha, what + " SR"))
            by_seg_sha[seg_sha] = seg
            derived = read_files
            if kind == "edited":
                derived = [f["file"] for f in b.files if f["seg_uid"] == r.edited_from_uid] or read_files
            result = summaries[r.id]["result"]
            b.files.append({"file": seg, "sr": sr, "kind": kind, "case": case.case_key, "seg_uid": uid,
                            "seg_sha256": seg_sha, "sr_sha256": sr_sha,
                            "reader": users[r.reviewer_id].username if kind == "edited" and r.reviewer_id else None,
                            "submission_id": None, "task_id": None, "slot": None, "review_id": r.id,
                            "guideline_version": None, "replaces": None, "derived_from": derived,
                            "current": bool(result and result.get("seg_sha256") == seg_sha),
                            "created_at": _iso(r.decided_at or r.created_at)})
    for row in b.files:  # which file each read's result became: mark the case results
        row["final"] = row["case"] in final_cases and row["current"]

    # signatures, and the SRs an approval reissued as VERIFIED
    signature_rows = []
    review_ids = {r.id for r in reviews}
    for sig in session.scalars(select(Signature).order_by(Signature.id)):
        if not (sig.submission_id in sub_path or sig.review_id in review_ids):
            continue
        verified = None
        if sig.verified_sr_sha256:
            case_dir = Path(by_seg_sha.get(sig.file_sha256, "results/_")).parent.as_posix()
            verified = b.write(f"{case_dir}/signature{sig.id}-verified.sr.dcm",
                               b.stored(sig.verified_sr_sha256, f"signature {sig.id} verified SR"))
        signature_rows.append({"signature_id": sig.id, "user": sig.username, "printed_name": sig.printed_name,
                               "signed_at": _iso(sig.signed_at), "meaning": sig.meaning, "subject": sig.subject,
                               "submission_id": sig.submission_id, "review_id": sig.review_id,
                               "file": by_seg_sha.get(sig.file_sha256), "file_sha256": sig.file_sha256,
                               "verified_sr": verified, "verified_sr_sha256": sig.verified_sr_sha256})
    b.write("signatures.json", _json(signature_rows))

    lineage_cols = ["file", "sr", "kind", "case", "seg_uid", "seg_sha256", "sr_sha256", "reader", "submission_id",
                    "task_id", "slot", "review_id", "guideline_version", "replaces", "derived_from", "current",
                    "final", "created_at"]
    b.write("results/lineage.json", _json(b.files))
    b.write("results/lineage.csv", _csv(lineage_cols, [{**f, "derived_from": ";".join(f["derived_from"])}
                                                       for f in b.files]))

    guidelines = _write_guidelines(b, project_id)
    readers = _write_roster(b, users, submissions, tasks, case_by_id, reviews, signature_rows)
    agreement = _write_agreement(b, project, reviews, summaries, case_by_id)

    # the audit trail, its head and the anchors it was checked against
    lines = [json.dumps(e.__dict__, sort_keys=True, ensure_ascii=False) for e in entries]
    b.write("audit/audit.jsonl", ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    head = {"seq": entries[-1].seq if entries else 0, "hash": entries[-1].hash if entries else None,
            "records": len(entries), "taken": _iso(datetime.now(timezone.utc).replace(tzinfo=None))}
    b.write("audit/head.json", _json(head))
    b.write("audit/anchors.jsonl", "".join(a.to_json() + "\n" for a in anchors or []).encode("utf-8"))

    images = _write_images(b, cases) if include_images else []
    deid = _deid_report(b, include_images)

    from medannot.package.summary import render_pdf, render_summary

    numbers = {"project_id": project_id, "project": project.name, "cases": len(cases),
               "final_cases": len(final_cases & {c.case_key for c in cases}), "open_cases": open_cases,
               "reads": sum(1 for f in b.files if f["kind"] == "read"),
               "consensus": sum(1 for f in b.files if f["kind"] == "consensus"),
               "edited": sum(1 for f in b.files if f["kind"] == "edited"), "signatures": len(signature_rows),
               "audit_head": head, "images": len(images), "deid": deid["status"]}
    figures = sorted(p.relative_to(b.payload).as_posix() for p in (b.payload / "agreement").rglob("*.png"))
    html = render_summary(numbers, readers, guidelines, agreement, signature_rows, figures)
    b.write("SUMMARY.html", html.encode("utf-8"))
    no_pdf = render_pdf(html, b.payload, b.payload / "SUMMARY.pdf")
    numbers["summary_pdf"] = no_pdf or "SUMMARY.pdf"
    b.write("package.json", _json({**numbers, "format": "medannot-package 1", "built": head["taken"]}))

    info = {"Source-Organization": "MedAnnot", "External-Description": f"MedAnnot submission package of project "
            f"{project_id} ({project.name})", "MedAnnot-Project": str(project_id),
            "MedAnnot-Audit-Head": f"{head['seq']} {head['hash']}", "Bagging-Date": date.today().isoformat()}
    bagfile.make_bag(output, info, certificate=certificate)
    if signer is not None:
        from medannot.package.cms import sign_detached

        tagmanifest = (output / bagfile.TAGMANIFEST).read_bytes()
        (output / bagfile.SIGNATURE).write_bytes(sign_detached(tagmanifest, *signer))
    return numbers


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _write_guidelines(b: _Builder, project_id: int) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from medannot.server.models import GuidelineFile, GuidelineVersion

    rows = []
    for v in b.session.scalars(select(GuidelineVersion).where(GuidelineVersion.project_id == project_id)
                               .order_by(GuidelineVersion.id)):
        folder = f"guidelines/{_safe(v.guideline_id)}-{_safe(v.version)}"
        data = v.yaml_text.encode("utf-8")
        if hashlib.sha256(data).hexdigest() != v.sha256:
            raise PackageBuildError(f"guideline {v.guideline_id} {v.version}: its stored text no longer hashes to "
                                    f"its recorded sha256 {v.sha256[:12]}...; the database was altered")
        b.write(f"{folder}/guideline.yaml", data)
        files = []
        for f in b.session.scalars(select(GuidelineFile).where(GuidelineFile.guideline_version_id == v.id)
                                   .order_by(GuidelineFile.name)):
            if hashlib.sha256(f.content).hexdigest() != f.sha256:
                raise PackageBuildError(f"guideline {v.guideline_id} {v.version} file {f.name}: stored content no "
                                        "longer matches its sha256")
            b.write(f"{folder}/files/{f.name}", f.content)
            files.append({"name": f.name, "file": f"{folder}/files/{f.name}", "sha256": f.sha256})
        rows.append({"guideline_id": v.guideline_id, "version": v.version, "sha256": v.sha256,
                     "file": f"{folder}/guideline.yaml", "created_at": _iso(v.created_at), "files": files})
    b.write("guidelines/guidelines.json", _json(rows))
    return rows


def _write_roster(b: _Builder, users: dict[int, Any], submissions: list[Any], tasks: dict[int, Any],
                  case_by_id: dict[int, Any], reviews: list[Any], signature_rows: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from medannot.server.models import ReviewDecision

    read: dict[int, set[str]] = {}
    for s in submissions:
        read.setdefault(s.user_id, set()).add(case_by_id[tasks[s.task_id].case_id].case_key)
    reviewed: dict[int, set[str]] = {}
    for r in reviews:
        deciders = {d.user_id for d in b.session.scalars(select(ReviewDecision).where(ReviewDecision.review_id == r.id))}
        for uid in deciders | ({r.reviewer_id} if r.reviewer_id else set()):
            reviewed.setdefault(uid, set()).add(case_by_id[r.case_id].case_key)
    signers = {row["user"] for row in signature_rows}
    rows = []
    for uid, u in sorted(users.items()):
        if uid not in read and uid not in reviewed and u.username not in signers:
            continue
        rows.append({"user": u.username, "printed_name": u.printed_name, "role": u.role,
                     "qualification": u.qualification, "credentials": u.credentials,
                     "trained_on": _iso(u.trained_on), "cases_read": ";".join(sorted(read.get(uid, ()))),
                     "cases_reviewed": ";".join(sorted(reviewed.get(uid, ())))})
    columns = ["user", "printed_name", "role", "qualification", "credentials", "trained_on", "cases_read",
               "cases_reviewed"]
    b.write("readers.csv", _csv(columns, rows))
    b.write("readers.json", _json([{**r, "cases_read": [c for c in r["cases_read"].split(";") if c],
                                    "cases_reviewed": [c for c in r["cases_reviewed"].split(";") if c]}
                                   for r in rows]))
    return rows


def _write_agreement(b: _Builder, project: Any, reviews: list[Any], summaries: dict[int, Any],
                     case_by_id: dict[int, Any]) -> dict[str, Any]:
    """The stored agreement metrics; the figures too when the review report builder is there."""
    from medannot.server.review import review_detail

    rounds = []
    for r in reviews:
        detail = review_detail(b.session, r)
        rounds.append({"case": case_by_id[r.case_id].case_key, "review_id": r.id, "round": r.round,
                       "status": r.status, "consensus_method": r.consensus_method,
                       "disagreement": detail["disagreement"], "metrics": detail["metrics"],
                       "final": summaries[r.id]["final"]})
    per_segment: dict[str, list[float]] = {}
    for item in rounds:
        for m in item["metrics"]:
            if m["b"] != "consensus" and m["a"] != "consensus":
                per_segment.setdefault(m["segment"], []).append(m["dice"])
    overview = {seg: {"pairs": len(v), "mean_dice": sum(v) / len(v), "min_dice": min(v)}
                for seg, v in sorted(per_segment.items())}
    b.write("agreement/agreement.json", _json({"per_segment": overview, "rounds": rounds}))
    from medannot.review.report import build_report
    from medannot.server.review import project_metric_rows

    rows = project_metric_rows(b.session, project.id)
    if rows:  # the figures and report.json of `medannot admin report`
        build_report(rows, b.payload / "agreement" / "report", title=f"Project {project.id} ({project.name})")
    return overview


def _write_images(b: _Builder, cases: list[Any]) -> list[str]:
    written = []
    for case in cases:
        source = Path(case.source)
        if not source.exists():
            raise PackageBuildError(f"case {case.case_key}: source {case.source} is not a local file or folder; "
                                    "--include-images copies local sources only")
        for path in sorted([source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]):
            relative = f"images/{_safe(case.case_key)}/{path.name if source.is_file() else path.relative_to(source)}"
            b.write(relative, path.read_bytes())
            written.append(relative)
    return written


def _deid_report(b: _Builder, include_images: bool) -> dict[str, Any]:
    """Run every DICOM file of the package through the de-identification gate; refuse what fails it."""
    paths = sorted(p for p in b.payload.rglob("*.dcm")) + sorted(
        p for p in (b.payload / "images").rglob("*") if p.is_file() and p.suffix != ".dcm")
    results, failing, installed = [], [], True
    for path in paths:
        findings = _gate()(path)
        relative = path.relative_to(b.payload).as_posix()
        if findings == [DEID_NOT_INSTALLED]:
            installed = False
            break
        results.append({"file": relative, "findings": findings})
        if findings:
            failing.append(f"{relative}: {findings[0]}")
    if not installed:
        if include_images:
            raise PackageBuildError("--include-images needs the de-identification gate (medannot.deid), which is "
                                    "not installed; source images never leave without it")
        report = {"status": "not-checked", "gate": None, "message": DEID_NOT_INSTALLED, "files": []}
    elif failing:
        raise PackageBuildError(f"{len(failing)} file(s) fail the de-identification gate; first: {failing[0]}; "
                                "de-identify the case sources before import ('medannot deid apply') so the reads "
                                "made on them are de-identified too (see 'medannot deid check')")
    else:
        from medannot.deid.profile import TABLE_EDITION

        report = {"status": "passed", "gate": "medannot.deid.check_file",
                  "profile": f"DICOM PS3.15 Annex E Basic Profile, Table E.1-1 ({TABLE_EDITION})", "files": results}
    b.write("deid-report.json", _json(report))
    return report


def _gate():  # type: ignore[no-untyped-def]
    """``medannot.package._deid_gate``, looked up when used so the lead can wire the real gate in one place."""
    import medannot.package

    return medannot.package._deid_gate


def copy_tree(source: Path, target: Path) -> None:
    """Copy a built package (tests and the demo change copies, never the original)."""
    shutil.copytree(source, target)
