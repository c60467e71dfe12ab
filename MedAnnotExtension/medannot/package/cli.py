"""``medannot package build|verify``: the regulatory submission package."""

from __future__ import annotations

from pathlib import Path

import click

from medannot.cli_common import CONTEXT, MedAnnotGroup
from medannot.server.cli import DATA_OPTION, DB_OPTION


@click.group("package", cls=MedAnnotGroup, context_settings=CONTEXT)
def package() -> None:
    """The regulatory submission package: build it from the server database, verify it offline."""


@package.command("build", context_settings=CONTEXT)
@click.argument("project_id", type=int)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="New folder for the package.")
@DB_OPTION
@DATA_OPTION
@click.option("--include-images", is_flag=True, help="Also copy the cases' source images (through the de-id gate).")
@click.option("--sign-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="EC P-256 private key (PEM) to sign the tag manifest with (detached CMS, manifest.p7s).")
@click.option("--certificate", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="X.509 certificate (PEM) of --sign-key; it travels in the package.")
@click.option("--require-final", is_flag=True, help="Fail, naming them, when any case is not final.")
@click.option("--anchor", "anchor_files", multiple=True, type=click.Path(path_type=Path),
              help="Audit anchor file ('medannot audit anchor'; repeatable): the trail must hold them; they are "
                   "copied into the package.")
def build(project_id: int, output: Path, db: str | None, data_dir: Path | None, include_images: bool,
          sign_key: Path | None, certificate: Path | None, require_final: bool, anchor_files: tuple[Path, ...]) -> None:
    """Build the BagIt package of PROJECT_ID in OUTPUT from the database and data folder (no server needed)."""
    from medannot.audit import read_anchors
    from medannot.package import build_package
    from medannot.server.config import resolve_settings
    from medannot.server.db import make_engine, session_factory, transaction, upgrade_database

    settings = resolve_settings(db, data_dir)
    anchors = [anchor for path in anchor_files for anchor in read_anchors(path)]
    engine = make_engine(settings.db_url)
    upgrade_database(engine)
    with transaction(session_factory(engine)) as session:
        numbers = build_package(session, settings.data_dir, project_id, output, include_images=include_images,
                                sign_key=sign_key, certificate=certificate, require_final=require_final,
                                anchors=anchors)
    engine.dispose()
    opened = f"; open (not final): {', '.join(numbers['open_cases'])}" if numbers["open_cases"] else ""
    click.echo(f"package of project {project_id} in {output}: {numbers['cases']} cases ({numbers['final_cases']} "
               f"final{opened}), {numbers['reads']} reads, {numbers['consensus']} consensus, "
               f"{numbers['signatures']} signatures, audit head {numbers['audit_head']['seq']}"
               + ("; signed" if sign_key else ""))
    if numbers["deid"] == "not-checked":
        click.echo("warning: the de-identification gate is not installed; data/deid-report.json says so", err=True)


@package.command("verify", context_settings=CONTEXT)
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--certificate", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="The certificate the package must be signed with (pins the signer).")
@click.option("--no-dciodvfy", is_flag=True, help="Skip dciodvfy (MedAnnot's own SEG/SR checks still run).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes validating SEG/SR files "
              "(default: one per core).")
def verify(folder: Path, certificate: Path | None, no_dciodvfy: bool, workers: int | None) -> None:
    """Check FOLDER offline: exit 0 when everything holds, 1 naming the first problem (file, record, what)."""
    from medannot.package import verify_package

    result = verify_package(folder, certificate, use_dciodvfy=not no_dciodvfy, workers=workers)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    signed = f", signed by {result.signed_by}" if result.signed_by else ""
    click.echo(f"package intact: {result.payload_files} files ({result.payload_bytes / 1e6:.1f} MB), "
               f"{result.dicom_files} SEG/SR valid, {result.audit_records} audit records chained to the head, "
               f"{result.signatures} signatures match their files{signed}")
