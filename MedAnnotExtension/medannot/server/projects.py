"""Projects made from guidelines (every version kept) and cases imported from a manifest."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medannot.errors import MedAnnotError
from medannot.guideline import Guideline, load_guideline, parse_guideline
from medannot.server.audit import append_audit
from medannot.server.models import (TASK_SUBMITTED, Case, GuidelineFile, GuidelineVersion, Project, ProjectMember,
                                    Task, User, utcnow)


class ProjectError(MedAnnotError):
    """A project, guideline version or case import cannot be done as asked."""


class NotAMember(ProjectError):
    """The user is not a member of the project (admins are members of every project)."""


def is_member(session: Session, user: User, project_id: int) -> bool:
    """Whether ``user`` may work in the project: admins always, others when an admin added them."""
    if user.role == "admin":
        return True
    return session.scalar(select(ProjectMember.id).where(ProjectMember.project_id == project_id,
                                                         ProjectMember.user_id == user.id)) is not None


def project_for(session: Session, user: User, project_id: int) -> Project:
    """The project, when ``user`` is a member of it (``NotAMember`` otherwise, which says whom to ask)."""
    project = session.get(Project, project_id)
    if project is None or not is_member(session, user, project_id):
        if project is not None and user.role != "admin":
            raise NotAMember(f"you are not a member of project {project_id}; ask an admin to add you "
                             f"('medannot admin project members {project_id} --add {user.username}')")
        raise ProjectError(f"no project {project_id}; list them with 'medannot client projects'")
    return project


def member_projects(session: Session, user: User) -> list[Project]:
    """The projects ``user`` sees in the worklist: their own (all, for an admin)."""
    query = select(Project).order_by(Project.id)
    if user.role != "admin":
        query = query.where(Project.id.in_(select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)))
    return list(session.scalars(query))


def set_members(session: Session, project_id: int, add: list[str], remove: list[str], actor: str) -> list[str]:
    """Add and remove members of a project by user name; returns the member names after the change."""
    get_project(session, project_id)
    by_name = {u.username: u for u in session.scalars(select(User).where(User.username.in_([*add, *remove])))}
    for name in [*add, *remove]:
        if name not in by_name:
            raise ProjectError(f"no user {name!r}; list them with 'medannot admin user list'")
    for name in add:
        user = by_name[name]
        if user.role == "admin":
            continue  # an admin works in every project
        if not is_member(session, user, project_id):
            session.add(ProjectMember(project_id=project_id, user_id=user.id, added_by=actor))
            append_audit(session, actor, "project.member.add", f"project:{project_id}", None, {"user": name})
    for name in remove:
        member = session.scalar(select(ProjectMember).where(ProjectMember.project_id == project_id,
                                                            ProjectMember.user_id == by_name[name].id))
        if member is not None:
            session.delete(member)
            append_audit(session, actor, "project.member.remove", f"project:{project_id}", {"user": name}, None)
    session.flush()
    return sorted(session.scalars(select(User.username).join(ProjectMember, ProjectMember.user_id == User.id)
                                  .where(ProjectMember.project_id == project_id)))


def create_project(session: Session, guideline_path: str | Path, name: str | None = None,
                   actor: str | None = None) -> Project:
    """Create a project from a guideline file; its version becomes the project's first guideline version.

    The reference images of its instructions are stored with the version and served with it."""
    guideline, text = _read_guideline(guideline_path)
    project = Project(name=name or guideline.title, guideline_id=guideline.id,
                      readers_per_case=guideline.readers_per_case, created_at=utcnow())
    session.add(project)
    session.flush()
    _add_version(session, project, guideline, text, actor)
    append_audit(session, actor, "project.create", f"project:{project.id}", None,
                 {"name": project.name, "guideline": guideline.id, "version": guideline.version})
    return project


def add_guideline_version(session: Session, project_id: int, guideline_path: str | Path,
                          actor: str | None = None) -> GuidelineVersion:
    """Add a new guideline version to a project (old versions are kept; results name the version they followed)."""
    project = get_project(session, project_id)
    guideline, text = _read_guideline(guideline_path)
    if guideline.id != project.guideline_id:
        raise ProjectError(f"{guideline_path}: guideline id {guideline.id!r} differs from the project's "
                           f"{project.guideline_id!r}; make a new project for a different guideline")
    existing = session.scalar(select(GuidelineVersion).where(GuidelineVersion.project_id == project.id,
                                                             GuidelineVersion.version == guideline.version))
    if existing is not None:
        raise ProjectError(f"{guideline_path}: project {project.id} already has version {guideline.version}; "
                           "bump the version to change the guideline")
    return _add_version(session, project, guideline, text, actor)


def _read_guideline(path: str | Path) -> tuple[Guideline, str]:
    """The guideline and its exact text: stored and served byte for byte, so its sha256 stays the same
    (reading it as text would turn CRLF line ends into LF and change the hash)."""
    path = Path(path)
    guideline = load_guideline(path)
    for image in guideline.reference_images:
        try:
            Path(image).resolve().relative_to(path.parent.resolve())
        except ValueError:
            raise ProjectError(f"{path}: reference image {image} lies outside the guideline's folder; keep "
                               "reference images in that folder or below it, so they travel with the guideline") from None
    return guideline, path.read_bytes().decode("utf-8")


def guideline_files(session: Session, version: GuidelineVersion) -> list[tuple[str, str, int]]:
    """Name, sha256 and size of the files stored with a guideline version (reference images), by name."""
    rows = session.execute(select(GuidelineFile.name, GuidelineFile.sha256, func.length(GuidelineFile.content))
                           .where(GuidelineFile.guideline_version_id == version.id).order_by(GuidelineFile.name))
    return [(str(name), str(digest), int(size)) for name, digest, size in rows]


def guideline_file(session: Session, version: GuidelineVersion, name: str) -> GuidelineFile | None:
    """One file stored with a guideline version, or None."""
    return session.scalar(select(GuidelineFile).where(GuidelineFile.guideline_version_id == version.id,
                                                      GuidelineFile.name == name))


def _add_version(session: Session, project: Project, guideline: Guideline, text: str,
                 actor: str | None) -> GuidelineVersion:
    old = current_version(session, project)
    version = GuidelineVersion(project_id=project.id, guideline_id=guideline.id, version=guideline.version,
                               sha256=guideline.sha256, yaml_text=text, created_at=utcnow())
    session.add(version)
    session.flush()
    folder = guideline.source_path.parent.resolve() if guideline.source_path else None
    for image in guideline.reference_images:
        data = Path(image).read_bytes()
        name = Path(image).resolve().relative_to(folder).as_posix() if folder else Path(image).as_posix()
        session.add(GuidelineFile(guideline_version_id=version.id, name=name,
                                  sha256=hashlib.sha256(data).hexdigest(), content=data))
    project.current_guideline_version_id = version.id
    project.readers_per_case = guideline.readers_per_case
    append_audit(session, actor, "guideline.version", f"project:{project.id}",
                 {"version": old.version} if old else None,
                 {"guideline": guideline.id, "version": guideline.version, "sha256": guideline.sha256})
    return version


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise ProjectError(f"no project {project_id}; list them with 'medannot client projects'")
    return project


def current_version(session: Session, project: Project) -> GuidelineVersion | None:
    if project.current_guideline_version_id is None:
        return None
    return session.get(GuidelineVersion, project.current_guideline_version_id)


def current_guideline(session: Session, project: Project) -> Guideline:
    version = current_version(session, project)
    assert version is not None
    return parse_guideline(version.yaml_text.encode("utf-8"), origin=f"project {project.id} guideline")


def import_cases(session: Session, project_id: int, manifest: str | Path, actor: str | None = None) -> list[Case]:
    """Import cases from a CSV manifest with columns ``case_id,source`` and optionally ``gold``; all or nothing.

    ``gold`` (a path, relative to the manifest or absolute) names a reference SEG of the case's source: the case is
    a gold case, mixed into readers' queues like any other (nothing a reader sees marks it), and each read of it is
    measured against the reference. The reference must be a SEG of the case's series; its sha256 is kept, and a
    changed file is refused when the reads are measured.

    Each case gets ``readers_per_case`` task slots. A source is a local series folder or multi-frame file, or a
    DICOMweb series URL ``.../studies/{uid}/series/{uid}``.
    """
    import json

    from medannot.server.pacs import instance_uids, parse_source, series_uid_of

    project = get_project(session, project_id)
    manifest = Path(manifest)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ProjectError(f"{manifest}: cannot read manifest ({exc.strerror or exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"case_id", "source"} <= {f.strip() for f in reader.fieldnames}:
        raise ProjectError(f"{manifest}: header must have the columns case_id,source (found {reader.fieldnames})")
    known = set(session.scalars(select(Case.case_key).where(Case.project_id == project.id)))
    cases: list[Case] = []
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        key, source_text = row.get("case_id", ""), row.get("source", "")
        if not key or not source_text:
            raise ProjectError(f"{manifest}:{line}: case_id and source must both be filled in")
        if key in known:
            raise ProjectError(f"{manifest}:{line}: case {key!r} is already in project {project.id}")
        known.add(key)
        source = parse_source(source_text)
        if source.kind == "local" and not Path(source_text).is_absolute():
            source = parse_source(str((manifest.parent / source_text).resolve()))
            source_text = str(source.path)
        try:
            study_uid, series_uid = series_uid_of(source)
            # a DICOMweb case's instances are listed at its first download (import needs no PACS)
            instances = json.dumps(instance_uids(source)) if source.kind == "local" else None
        except MedAnnotError as exc:
            raise ProjectError(f"{manifest}:{line}: case {key!r}: {exc}") from exc
        gold_path, gold_sha = _gold_reference(manifest, line, key, row.get("gold", ""), series_uid)
        case = Case(project_id=project.id, case_key=key, source=source_text, study_uid=study_uid,
                    series_uid=series_uid, gold_path=gold_path, gold_sha256=gold_sha, instance_uids=instances)
        session.add(case)
        session.flush()
        for slot in range(1, project.readers_per_case + 1):
            session.add(Task(project_id=project.id, case_id=case.id, slot=slot, status="open"))
        append_audit(session, actor, "case.import", f"case:{case.id}", None,
                     {"project": project.id, "case_id": key, "series_uid": series_uid, "slots": project.readers_per_case,
                      "gold_sha256": gold_sha})
        cases.append(case)
    if not cases:
        raise ProjectError(f"{manifest}: no cases in the manifest")
    return cases


def _gold_reference(manifest: Path, line: int, key: str, text: str, series_uid: str
                    ) -> tuple[str | None, str | None]:
    """(absolute path, sha256) of a case's gold reference SEG, checked to be a SEG of the case's series."""
    import hashlib

    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    if not text:
        return None, None
    path = Path(text) if Path(text).is_absolute() else (manifest.parent / text).resolve()
    where = f"{manifest}:{line}: case {key!r}: gold reference {path}"
    try:
        data = path.read_bytes()
        seg = dcmread(path, stop_before_pixels=True)
    except OSError as exc:
        raise ProjectError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
    except InvalidDicomError as exc:
        raise ProjectError(f"{where}: not a DICOM file") from exc
    if seg.get("Modality") != "SEG":
        raise ProjectError(f"{where}: not a SEG (Modality {seg.get('Modality')!r})")
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if series_uid not in referenced:
        raise ProjectError(f"{where}: it references series {', '.join(sorted(referenced)) or 'none'}, not the "
                           f"case's series {series_uid}")
    return str(path), hashlib.sha256(data).hexdigest()


def project_summary(session: Session, project: Project) -> dict[str, object]:
    version = current_version(session, project)
    counts = dict(session.execute(select(Task.status, func.count()).where(Task.project_id == project.id)
                                  .group_by(Task.status)).all())
    return {
        "id": project.id, "name": project.name, "guideline_id": project.guideline_id,
        "guideline_version": version.version if version else None,
        "guideline_sha256": version.sha256 if version else None,
        "readers_per_case": project.readers_per_case,
        "cases": session.scalar(select(func.count()).select_from(Case).where(Case.project_id == project.id)),
        "tasks_total": sum(counts.values()), "tasks_submitted": counts.get(TASK_SUBMITTED, 0),
        "tasks_leased": counts.get("leased", 0), "tasks_open": counts.get("open", 0),
    }
