"""De-identification throughput: ``medannot.deid`` against ``dicognito`` (the peer) on the same 1,000 files.

Run: ``PYTHONPATH=MedAnnotExtension python Testing/benchmarks/bench_deid.py [--files 1000] [--shape 64 64]``

The files are CT slices generated with PHI planted at the top level, in nested sequences and in a private block.
Both tools read each file, de-identify it in memory and write it; the time includes reading and writing. After the
runs the script counts what each left behind of the planted values (dicognito keeps private tags and free text
it does not know, so its count is not 0) and prints the throughput ratio (MedAnnot / dicognito; below 1 is slower).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence

from medannot.demo_data import make_ct_series
from medannot.deid import DeidOptions, deidentify

PLANTED = ["Doe^Jane", "PHI-4711", "ACC98765", "St Elsewhere", "OTHER-ID-314", "Private Jane"]


def _plant(ds: Dataset) -> None:
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.InstitutionName = PLANTED[:4]
    other = Dataset()
    other.PatientID = PLANTED[4]
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.ImageComments = f"seen {PLANTED[1]}"
    ds.private_block(0x0011, "ACME PHI", create=True).add_new(0x01, "LO", PLANTED[5])


def make_files(folder: Path, count: int, shape: tuple[int, int]) -> list[Path]:
    series = make_ct_series(folder / "gen", (count, *shape))
    paths = sorted(series.glob("*.dcm"))
    for path in paths:
        ds = dcmread(path)
        _plant(ds)
        ds.save_as(path)
    return paths


def _left(folder: Path) -> int:
    return sum(any(value.encode() in p.read_bytes() for value in PLANTED) for p in folder.glob("*.dcm"))


def run_medannot(paths: list[Path], out: Path) -> float:
    options = DeidOptions(bytes(range(32)))
    out.mkdir()
    start = time.perf_counter()
    for path in paths:
        clean, _ = deidentify(dcmread(path), options, in_place=True)  # as `deid apply` does
        clean.save_as(out / path.name, enforce_file_format=True)
    return time.perf_counter() - start


def run_dicognito(paths: list[Path], out: Path) -> float:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="bench")
    out.mkdir()
    start = time.perf_counter()
    for path in paths:
        ds = dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name, enforce_file_format=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--shape", type=int, nargs=2, default=(64, 64))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_files(root, args.files, tuple(args.shape))
        ours = run_medannot(paths, root / "medannot")
        peer = run_dicognito(paths, root / "dicognito")
        print(f"{len(paths)} files of {args.shape[0]}x{args.shape[1]} CT with planted PHI")
        print(f"medannot.deid: {ours:.2f} s ({len(paths) / ours:.0f} files/s), files still holding planted PHI: "
              f"{_left(root / 'medannot')}")
        print(f"dicognito    : {peer:.2f} s ({len(paths) / peer:.0f} files/s), files still holding planted PHI: "
              f"{_left(root / 'dicognito')}")
        print(f"throughput ratio medannot / dicognito: {peer / ours:.2f} (above 1: faster than the peer)")


if __name__ == "__main__":
    main()
