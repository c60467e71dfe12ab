"""Electronic signatures (21 CFR Part 11 style): the signer enters their password again; the signature records
user, printed name, UTC time and meaning over the sha256 of the exact bytes signed (the SEG), and is audited.
A signature cannot be moved to other bytes: :func:`verify` fails as soon as the file's bytes differ."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.db import transaction
from medannot.server.models import MEANINGS, Review, Signature, Submission, Task, User, utcnow
from medannot.server.security import reauthenticate
from medannot.server.storage import ObjectStore


class SignatureRefused(MedAnnotError):
    """The signature is not allowed: wrong password, wrong meaning for this signer, or nothing to sign yet."""


class WrongPassword(SignatureRefused):
    """The password entered to sign is wrong (or the account is throttled)."""


class SignatureNotFound(MedAnnotError):
    """No such signature or signed object."""


@dataclass(frozen=True)
class Verification:
    valid: bool
    detail: str


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


REVIEW_SUBJECTS = ("consensus", "edited")


def _review_file(review: Review, which: str) -> str | None:
    return review.consensus_seg_sha256 if which == "consensus" else review.edited_seg_sha256


def sign(factory: sessionmaker[Session], store: ObjectStore, user_id: int, password: str, meaning: str,
         printed_name: str | None = None, submission_id: int | None = None,
         review_id: int | None = None, which: str = "consensus") -> Signature:
    """Sign a reader's submission, or a review's consensus or edited SEG (``review_id``, ``which``), with
    ``meaning``.

    ``authored``: only the submission's own reader. ``reviewed`` / ``approved``: a reviewer or admin who did not
    read the case, once the read is part of a review (blinding), never their own read.
    """
    if meaning not in MEANINGS:
        raise SignatureRefused(f"meaning {meaning!r} is not one of {', '.join(MEANINGS)}")
    if not reauthenticate(factory, user_id, password, "signature"):
        raise WrongPassword("the password is wrong (or the account is throttled after failed attempts); "
                            "nothing was signed")
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        if submission_id is not None:
            submission = session.get(Submission, submission_id)
            if submission is None:
                raise SignatureNotFound(f"no submission {submission_id}")
            task = session.get(Task, submission.task_id)
            assert task is not None
            subject, case_id, file_sha = f"submission:{submission.id}", task.case_id, submission.seg_sha256
            sr_sha = submission.sr_sha256
            author_id: int | None = submission.user_id
        else:
            if which not in REVIEW_SUBJECTS:
                raise SignatureNotFound(f"a review has no {which!r} to sign; sign its consensus or edited SEG")
            review = session.get(Review, review_id)
            found = _review_file(review, which) if review is not None else None
            if review is None or found is None:
                raise SignatureNotFound(f"review task {review_id} has no {which} SEG to sign")
            subject, case_id, file_sha = f"review:{review.id}:{which}", review.case_id, found
            sr_sha = review.consensus_sr_sha256 if which == "consensus" else review.edited_sr_sha256
            # an edited SEG is its reviewer's own work: they sign it as authored, someone else approves it
            author_id = review.reviewer_id if which == "edited" else None
        _check_signer(session, user, meaning, subject, case_id, author_id, submission_id)
        data = store.get(file_sha)
        if _sha256(data) != file_sha:  # the stored object itself was altered: never sign what is not on record
            raise SignatureRefused(f"{subject}: the stored file no longer matches its sha256 {file_sha[:12]}...; "
                                   "nothing was signed, tell the administrator")
        signature = Signature(submission_id=submission_id, review_id=review_id if submission_id is None else None,
                              subject="submission" if submission_id is not None else which,
                              file_sha256=file_sha, user_id=user.id, username=user.username,
                              printed_name=(printed_name or user.username).strip()[:256], meaning=meaning,
                              signed_at=utcnow())
        if meaning == "approved" and sr_sha is not None:
            signature.verified_sr_sha256 = store.put(verified_sr(store.get(sr_sha), signature))
        session.add(signature)
        session.flush()
        append_audit(session, user.username, "signature.sign", subject, None,
                     {"signature": signature.id, "meaning": meaning, "printed_name": signature.printed_name,
                      "sha256": file_sha, "signed_at": signature.signed_at,
                      "verified_sr_sha256": signature.verified_sr_sha256})
        _queue_if_final(session, store, case_id)
        return signature


def _queue_if_final(session: Session, store: ObjectStore, case_id: int) -> None:
    """The signature that makes a case final queues its result for the project's archive (same transaction)."""
    from medannot.server.archive import enqueue_final
    from medannot.server.review import current_review

    review = current_review(session, case_id)
    if review is not None:
        enqueue_final(session, store, review)


def _check_signer(session: Session, user: User, meaning: str, subject: str, case_id: int, author_id: int | None,
                  submission_id: int | None) -> None:
    from medannot.server.review import _readers_of

    if meaning == "authored":
        if author_id != user.id:
            raise SignatureRefused(f"{subject}: only its own reader signs it as authored")
        return
    if user.role not in ("reviewer", "admin"):
        raise SignatureRefused(f"{subject}: signing as {meaning} needs the reviewer or admin role, not {user.role}")
    if author_id == user.id or user.id in _readers_of(session, case_id):
        # (the reviewer who drew an edited SEG is its author: they cannot review or approve it either)
        raise SignatureRefused(f"{subject}: you read this case yourself; a reader cannot sign their own read as "
                               f"{meaning}")
    if submission_id is not None:
        rounds = session.scalars(select(Review.submission_ids).where(Review.case_id == case_id))
        if not any(submission_id in json.loads(ids) for ids in rounds):
            raise SignatureRefused(f"{subject}: not all reads of its case are in yet, so it is not in review; "
                                   f"it cannot be signed as {meaning}")


def verified_sr(sr_bytes: bytes, signature: Signature, organization: str = "MedAnnot") -> bytes:
    """The SR reissued as a new instance with VerificationFlag VERIFIED, the signer as VerifyingObserver and the
    signature's own time (not "now" at writing), pointing at the unverified SR as its predecessor."""
    import io

    from pydicom import Dataset, dcmread
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    ds = dcmread(io.BytesIO(sr_bytes))
    previous = Dataset()
    previous.ReferencedSOPClassUID, previous.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = ds.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([previous])
    study = Dataset()
    study.StudyInstanceUID = ds.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    ds.PredecessorDocumentsSequence = Sequence([study])
    when = signature.signed_at.strftime("%Y%m%d%H%M%S.%f")
    observer = Dataset()
    observer.VerifyingObserverName = signature.printed_name.replace(" ", "^")
    person = Dataset()
    person.CodeValue, person.CodingSchemeDesignator = signature.username[:16], "99MEDANNOT"
    person.CodeMeaning = signature.printed_name[:64]
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([person])
    observer.VerifyingOrganization = organization
    observer.VerificationDateTime = when
    ds.VerificationFlag = "VERIFIED"
    ds.VerifyingObserverSequence = Sequence([observer])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = when[:8], when[8:]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def get_signature(session: Session, signature_id: int) -> Signature:
    signature = session.get(Signature, signature_id)
    if signature is None:
        raise SignatureNotFound(f"no signature {signature_id}")
    return signature


def verify_bytes(signature: Signature, data: bytes) -> Verification:
    """Whether ``data`` are exactly the bytes ``signature`` was made over."""
    return _verdict(signature, _sha256(data))


def _verdict(signature: Signature, actual: str) -> Verification:
    if actual != signature.file_sha256:
        return Verification(False, f"signature {signature.id} is over sha256 {signature.file_sha256}, but the "
                                   f"file has sha256 {actual}: the file was changed after signing")
    return Verification(True, f"signature {signature.id}: {signature.meaning} by {signature.printed_name} "
                              f"({signature.username}) at {signature.signed_at.isoformat()}Z over sha256 {actual}")


def verify_file(signature: Signature, upload: BinaryIO) -> Verification:
    """Whether an uploaded file (read in pieces) holds exactly the bytes ``signature`` was made over."""
    digest = hashlib.sha256()
    upload.seek(0)
    while chunk := upload.read(1024 * 1024):
        digest.update(chunk)
    return _verdict(signature, digest.hexdigest())


def verify(session: Session, store: ObjectStore, signature: Signature) -> Verification:
    """Verify a signature against the stored file (and the signed record still pointing at those bytes)."""
    if signature.submission_id is not None:
        submission = session.get(Submission, signature.submission_id)
        recorded = submission.seg_sha256 if submission else None
    else:
        review = session.get(Review, signature.review_id)
        recorded = _review_file(review, signature.subject) if review else None
    if recorded != signature.file_sha256:
        return Verification(False, f"signature {signature.id}: the signed record now points at other bytes "
                                   f"({recorded}), not the signed sha256 {signature.file_sha256}")
    try:
        data = store.get(signature.file_sha256)
    except OSError:
        return Verification(False, f"signature {signature.id}: the signed file {signature.file_sha256} is missing")
    return verify_bytes(signature, data)


def signature_body(signature: Signature) -> dict[str, object]:
    return {"signature_id": signature.id, "subject": signature.subject, "submission_id": signature.submission_id,
            "review_id": signature.review_id, "sha256": signature.file_sha256, "user": signature.username,
            "printed_name": signature.printed_name, "meaning": signature.meaning,
            "signed_at": signature.signed_at.isoformat() + "Z", "verified_sr_sha256": signature.verified_sr_sha256}
