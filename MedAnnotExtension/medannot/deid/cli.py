"""``medannot deid check|apply|keygen``: the de-identification gate (DICOM PS3.15 Annex E Basic Profile)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from medannot.cli_common import CONTEXT, MedAnnotGroup
from medannot.deid import profile

KEY_OPTION = click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                          help="The lab's key (hex, from 'medannot deid keygen'); default $MEDANNOT_DEID_KEY, else "
                               "~/.medannot/deid.key (made on first use). The same key always gives the same UIDs, "
                               "pseudonyms and date offsets.")


@click.group("deid", cls=MedAnnotGroup, context_settings=CONTEXT)
def deid() -> None:
    """De-identification gate: find PHI in DICOM files, de-identify them (PS3.15 Basic Profile, keyed UIDs)."""


@deid.command("check", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object: every file and its findings.")
def check(paths: tuple[Path, ...], as_json: bool) -> None:
    """Report every PHI candidate left in PATHS (files or folders), with its tag path.

    Exit 0 when every file passes, 1 when any has a finding. A file passes when it is marked de-identified
    (PatientIdentityRemoved YES, method code 113100), no attribute Table E.1-1 removes or empties holds a value
    (the options recorded in DeidentificationMethodCodeSequence allow theirs), it has no private elements, and
    its pixels are not known or likely to carry burned-in text.
    """
    from medannot.deid import check_paths

    results = check_paths(paths)
    failing = [r for r in results if r.findings]
    if as_json:
        click.echo(json.dumps({"table": f"PS3.15 Table E.1-1 ({profile.TABLE_EDITION})", "files": len(results),
                               "failing": len(failing),
                               "results": [{"file": str(r.path), "passes": not r.findings,
                                            "findings": [{"path": f.path, "message": f.message} for f in r.findings]}
                                           for r in results]}, indent=2))
    else:
        for r in failing:
            for finding in r.findings:
                click.echo(f"{r.path}: {finding}")
        click.echo(f"{len(results)} file(s) checked: {len(results) - len(failing)} pass, {len(failing)} with PHI "
                   "candidates", err=bool(failing))
    if failing:
        sys.exit(1)


@deid.command("apply", context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the de-identified copies (same layout as SOURCE).")
@click.option("--profile", "profile_name", type=click.Choice(sorted(profile.PROFILES)), default="basic",
              show_default=True, help="basic: dates replaced by a dummy; retain-dates-shifted: every date moved "
                                      "back by one keyed offset per patient.")
@click.option("--retain-patient-characteristics", is_flag=True,
              help="Keep sex, age (over 89 as 090Y), size, weight (option 113108).")
@click.option("--us-pixels", type=click.Choice(["flag", "blank-outside-regions", "confirmed-clean"]),
              default="flag", show_default=True,
              help="Burned-in text of ultrasound and secondary captures: leave it flagged, blank outside "
                   "SequenceOfUltrasoundRegions (ultrasound only), or record that the lab confirmed the pixels "
                   "are clean.")
@KEY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print what changed per file as JSON.")
def apply(source: Path, output: Path, profile_name: str, retain_patient_characteristics: bool, us_pixels: str,
          key_file: Path | None, as_json: bool) -> None:
    """De-identify every DICOM file under SOURCE into OUTPUT.

    UIDs (also nested ones: references, SourceImageSequence, SR UIDREFs) are remapped by HMAC-SHA256 with the
    lab's key, so a SEG de-identified with the same key still references its de-identified images. PatientID and
    PatientName become one pseudonym per patient; private elements are removed; SR free text is removed (Clean
    Structured Content). Every copy is checked again: exit 1 when any still has a PHI candidate (listed).
    """
    from medannot.deid import DeidOptions, apply_tree, load_key
    from medannot.deid.files import KEY_ENV, default_key_path

    options = DeidOptions(load_key(key_file), profile_name, retain_patient_characteristics, us_pixels)
    results = apply_tree(source, output, options)
    written = [r for r in results if r.output is not None]
    remaining = [r for r in written if r.remaining]
    if as_json:
        click.echo(json.dumps([{"source": str(r.source), "output": str(r.output) if r.output else None,
                                "changes": r.changes, "skipped": r.skipped,
                                "remaining": [str(f) for f in r.remaining]} for r in results], indent=2))
    for r in remaining:
        for finding in r.remaining:
            click.echo(f"{r.output}: still {finding}", err=True)
    skipped = len(results) - len(written)
    if key_file is None and not os.environ.get(KEY_ENV):
        click.echo(f"key: {default_key_path()} (the default; --key-file to use the lab's own)", err=True)
    click.echo(f"{len(written)} file(s) de-identified into {output} (key {options.key_id}, profile {profile_name})"
               + (f"; {skipped} not DICOM, not copied" if skipped else "")
               + (f"; {len(remaining)} still flagged (see above)" if remaining else ""), err=as_json)
    if remaining:
        sys.exit(1)


@deid.command("keygen", context_settings=CONTEXT)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="New key file (written 0600; never overwritten).")
def keygen(output: Path) -> None:
    """Write a new random 256-bit de-identification key. Keep it secret and keep it: it links pseudonyms to
    patients, and a new key gives every patient new UIDs and pseudonyms."""
    from medannot.deid.files import write_new_key

    write_new_key(output)
    click.echo(f"wrote a new de-identification key to {output}")
