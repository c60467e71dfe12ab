"""Detached CMS (PKCS#7) signatures over the bag's tag manifest: made with ``cryptography``, checked here without
the network or openssl (a minimal DER walk of the SignedData), and checkable by ``openssl cms -verify``."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from medannot.errors import MedAnnotError

_MESSAGE_DIGEST_OID = bytes.fromhex("2a864886f70d010904")  # 1.2.840.113549.1.9.4


class PackageSignatureError(MedAnnotError):
    """A signing key or certificate is unusable, or a package's signature does not hold."""


def load_signer(key_path: Path, cert_path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Read an EC P-256 private key (PEM, unencrypted) and its X.509 certificate; refuse a key that is not the
    certificate's."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PackageSignatureError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PackageSignatureError(f"{cert_path}: not a PEM X.509 certificate ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PackageSignatureError(f"{key_path}: the package is signed with an EC P-256 key; make one with "
                                    "'openssl ecparam -name prime256v1 -genkey -noout -out key.pem'")
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise PackageSignatureError(f"{key_path}: this private key does not match the public key of certificate "
                                    f"{cert_path} ({cert.subject.rfc4514_string()}); give the certificate issued "
                                    "for this key")
    return key, cert


def sign_detached(data: bytes, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes:
    """A PEM detached CMS SignedData over ``data`` (SHA-256, signer certificate included)."""
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    return (pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.PEM, options))


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int, int]:
    """(tag, start of value, end of value, end of header+value) of the DER element at ``pos``."""
    tag = buf[pos]
    length = buf[pos + 1]
    head = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(buf[head:head + count], "big")
        head += count
    return tag, head, head + length, head + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    items, pos = [], start
    while pos < end:
        tag, vstart, vend, nxt = _tlv(buf, pos)
        items.append((tag, pos, vstart, vend))
        pos = nxt
    return items


def verify_detached(pem: bytes, data: bytes, pinned: x509.Certificate | None = None) -> x509.Certificate:
    """Check a detached PEM CMS signature over ``data``; return the signer certificate.

    Raises ``PackageSignatureError`` saying what does not hold (not CMS, digest, signature, pinned signer).
    """
    try:
        body = "".join(line.strip() for line in pem.decode("ascii").splitlines() if line and "-----" not in line)


        der_bytes = base64.b64decode(body, validate=True)
        certs = pkcs7.load_der_pkcs7_certificates(der_bytes)
        _, s, e, _ = _tlv(der_bytes, 0)  # ContentInfo
        content_info = _children(der_bytes, s, e)
        _, _, cs, ce = content_info[1]  # [0] EXPLICIT
        _, _, sds, sde = _children(der_bytes, cs, ce)[0]  # SignedData
        signed_data = _children(der_bytes, sds, sde)
        signer_infos = signed_data[-1]
        _, _, sis, sie = signer_infos
        _, _, ss, se = _children(der_bytes, sis, sie)[0]  # the first SignerInfo
        fields = _children(der_bytes, ss, se)
        attrs = next(f for f in fields if f[0] == 0xA0)
        signature = fields[-1] if fields[-1][0] == 0x04 else next(f for f in reversed(fields) if f[0] == 0x04)
    except (ValueError, IndexError, StopIteration, UnicodeDecodeError) as exc:
        raise PackageSignatureError(f"not a CMS signature in PEM ({exc})") from exc
    if not certs:
        raise PackageSignatureError("the CMS signature carries no signer certificate")
    signer = certs[0]
    if pinned is not None and signer.fingerprint(hashes.SHA256()) != pinned.fingerprint(hashes.SHA256()):
        raise PackageSignatureError(f"signed by {signer.subject.rfc4514_string()}, not by the given certificate "
                                    f"{pinned.subject.rfc4514_string()}")
    _, astart, avs, ave = attrs
    digest = None
    for _, _, vs, ve in _children(der_bytes, avs, ave):
        parts = _children(der_bytes, vs, ve)
        if der_bytes[parts[0][2]:parts[0][3]] == _MESSAGE_DIGEST_OID:
            _, _, set_s, set_e = parts[1]
            _, _, ds, de = _children(der_bytes, set_s, set_e)[0]
            digest = der_bytes[ds:de]
    if digest is None:
        raise PackageSignatureError("the CMS signature has no messageDigest attribute")
    if digest != hashlib.sha256(data).digest():
        raise PackageSignatureError("the signed digest does not match the file (it was changed after signing)")
    signed_attrs = b"\x31" + der_bytes[astart + 1:ave]  # signed over as a DER SET, not the [0] IMPLICIT tag
    public_key = signer.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PackageSignatureError("the signer certificate's key is not an EC key")
    try:
        public_key.verify(der_bytes[signature[2]:signature[3]], signed_attrs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PackageSignatureError("the signature does not verify with the signer certificate's public key") \
            from None
    return signer
