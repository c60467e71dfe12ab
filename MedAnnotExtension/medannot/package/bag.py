"""The BagIt layer (RFC 8493): make a bag with the ``bagit`` library and write it as BagIt-Version 1.0; read and
check manifests without it (hashing at the speed of ``sha256sum``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import bagit

BAGIT_TXT = "bagit.txt"
MANIFEST = "manifest-sha256.txt"
TAGMANIFEST = "tagmanifest-sha256.txt"
SIGNATURE = "manifest.p7s"  # detached CMS over the tag manifest; cannot be listed in what it signs
CERTIFICATE = "signer-cert.pem"
BAGIT_DECLARATION = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
_CHUNK = 1 << 20


def encode_path(path: str) -> str:
    """A manifest path as RFC 8493 section 2.1.3 writes it (%, CR and LF percent-encoded)."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def decode_path(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0a", "\n").replace("%0D", "\r").replace("%0d", "\r") \
        .replace("%25", "%")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tag_files(root: Path) -> list[str]:
    """Every file outside data/ the tag manifest covers (all but tag manifests and the signature)."""
    names = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir() or relative.startswith("data/") or relative == SIGNATURE:
            continue
        if relative.startswith("tagmanifest-"):
            continue
        names.append(relative)
    return names


def write_tagmanifest(root: Path) -> None:
    lines = [f"{sha256_file(root / name)}  {encode_path(name)}\n" for name in tag_files(root)]
    for old in root.glob("tagmanifest-*.txt"):
        old.unlink()
    (root / TAGMANIFEST).write_text("".join(lines), encoding="utf-8")


def make_bag(root: Path, info: dict[str, str], certificate: Path | None = None) -> None:
    """Turn the files in ``root`` into a BagIt 1.0 bag (SHA-256 manifests), the signer certificate a tag file."""
    bagit.make_bag(str(root), info, processes=1, checksums=["sha256"])
    # bagit writes 0.97; RFC 8493 is 1.0 (same layout). The tag manifest covers bagit.txt, so rewrite it after.
    (root / BAGIT_TXT).write_text(BAGIT_DECLARATION, encoding="utf-8")
    if certificate is not None:
        shutil.copyfile(certificate, root / CERTIFICATE)
    write_tagmanifest(root)


def read_manifest(path: Path) -> dict[str, str]:
    """{path: sha256} of a manifest file; raises ValueError naming the bad line."""
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name.lstrip(" ")
        if not sep or len(digest) != 64 or not name:
            raise ValueError(f"{path.name}:{number}: not '<sha256> <path>'")
        entries[decode_path(name)] = digest.lower()
    return entries
