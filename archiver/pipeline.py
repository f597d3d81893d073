"""The archive pipeline: one object, and the job loop over a listing.

Order of operations for one object, and why it is safe to kill the process at any point::

    fetch (size cap) -> sniff -> decode pixels -> encode at the target PSNR
    -> decode the real bitstream, measure PSNR / MS-SSIM against the original pixels
    -> accept only if PSNR >= min_psnr and saving >= min_saving
    -> write the container -> read it back, compare size and sha256
    -> record the result (and the archived-object ledger row) in one transaction
    -> only then, and only with replace=True, delete the original

A crash before the record leaves the original untouched (a stray container may exist and is
simply overwritten by the rerun). A crash after the record and before the delete leaves both;
the rerun sees the ledger row, re-verifies the stored container and then deletes. So at every
instant there is either the original or a verified bitstream plus its database row.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .codec.api import Codec, QualityHints
from .codec.default import DEFAULT_EFFORT
from .db.models import ArchivedObject, Job, Result, utcnow
from .decision import Container, Facts, Recorded, Step, decide, deletes_original
from .errors import ArchiverError, ContainerError, ImageRejected, StorageError
from .identity import Scope
from .images import delivered, load_image, sniff
from .lossless import JXL_MEDIA_TYPE, LosslessRefused, Policy, Refusal, Tier, Transcoded, reconstruct, transcode
from .metrics import ms_ssim, psnr
from .records import (LedgerView, Outcome, already_archived, finish_job, ledger_row, mark_original_deleted,
                      outcome_from_row, record, result_row)
from .records import new_job as add_job_row
from .restore import prepare_destination, unrestorable_reason
from .storage import PROBE_PREFIX, ObjectInfo, ObjectStore
from .telemetry import log_context
from .storage.retries import GaveUp, with_retries  # noqa: F401 - GaveUp is part of this module's contract
from .vocabulary import (ARCHIVED, NOT_ARCHIVED, REJECTING_ERRORS, RESUMABLE_JOBS, JobKind, JobStatus, Reason,
                         ResultStatus)

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)


PSNR_MARGIN = 0.05  # aim a hair above the threshold; the verification decode is the judge

@dataclass
class PipelineOptions:
    min_psnr: float = 40.0
    min_saving: float = 0.1
    replace: bool = False
    dry_run: bool = False
    max_object_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 120_000_000
    suffix: str = ".cxa"
    # Re-encode object versions already archived with another (older) model. Off by default: a
    # new default model then archives new and changed objects only, so shipping one never turns
    # the next scheduled run into a re-encode of the whole archive; an upgrade is its own job.
    upgrade: bool = False
    # encoder effort (codec/default.py EFFORTS); options saved before it existed take the default
    effort: int = DEFAULT_EFFORT
    # Which tiers may be stored (archiver.lossless.Policy: lossy | lossless | best) and, under
    # best, how much larger the bit-exact JPEG XL may be than the neural stream and still be kept.
    # The default here is "lossy" on purpose: it is what an options dict saved with a job, or sent
    # in a batch, before the tiers existed meant. New jobs take the setting `policy` (default
    # "best") through from_settings, as every front door builds its options.
    policy: str = "lossy"
    lossless_margin: float = 0.0
    # Also try the lossless transcode under policy lossy, to report its size (the pilot's row)
    measure_lossless: bool = False

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineOptions:
        """Options saved with a job or sent in a task; fields it predates take their defaults."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_settings(cls, settings: Settings, *, min_psnr: float | None = None, min_saving: float | None = None,
                      replace: bool = False, dry_run: bool = False, upgrade: bool = False,
                      effort: int | None = None, policy: str | None = None) -> PipelineOptions:
        """The configured floors and limits, with a front door's overrides (``None``: as configured)."""
        return cls(min_psnr=settings.min_psnr if min_psnr is None else min_psnr,
                   min_saving=settings.min_saving if min_saving is None else min_saving,
                   replace=replace, dry_run=dry_run, max_object_bytes=int(settings.max_object_bytes),
                   max_pixels=settings.max_pixels, suffix=settings.container_suffix, upgrade=upgrade,
                   effort=settings.effort if effort is None else effort,
                   policy=Policy(policy or settings.policy).value, lossless_margin=settings.best_lossless_margin)

    def merged(self, overrides: dict[str, Any]) -> PipelineOptions:
        """These options with the fields named in ``overrides`` replaced (a submit's partial dict)."""
        return PipelineOptions.from_dict({**self.as_dict(), **overrides})


def dest_key(key: str, opts: PipelineOptions) -> str:
    return key + opts.suffix


#: container metadata naming the original it was made from (``Scope.source_id``)
SOURCE_ID_META = "source-id"


def _refuse_foreign(dst: ObjectStore, key: str, source_id: str, source_etag: str | None) -> None:
    """Never overwrite what another original's archive (or anything not ours) left at ``key``.

    Two sources can map to one destination key: ``s3://a/x.jpg`` and ``s3://b/x.jpg`` archived
    into the same destination, or jobs on different prefixes. Overwriting would silently destroy
    an archive whose original may already be deleted. Our own earlier container for the same
    original (a rerun, or a crash before the record) is replaced as before.
    """
    head = dst.head(key)
    if head is None:
        return
    meta = head.metadata or {}
    theirs = meta.get(SOURCE_ID_META)
    if theirs == source_id:
        return
    if theirs is None and "model-id" in meta and source_etag and meta.get("source-etag") == source_etag:
        return  # written before containers named their original, from content with our etag
    raise StorageError(
        f"{dst.url_for(key)} already holds "
        + ("the archive of another original" if theirs else "an object this system did not write")
        + "; refusing to overwrite it (give this source its own destination or prefix)",
        code="dest_conflict",
    )


def _verify_stored(dst: ObjectStore, key: str, data_len: int, sha: str, max_bytes: int,
                   rebuilds: str | None = None) -> None:
    """Read ``key`` back and compare size and sha256; with ``rebuilds`` (a lossless archive), also
    reconstruct the original JPEG from the bytes read back and compare its sha256 with that."""
    back = dst.get(key, max_bytes=max(max_bytes, data_len))
    if len(back) != data_len or hashlib.sha256(back).hexdigest() != sha:
        raise StorageError(f"read-back of {key} does not match what was written", code="readback_mismatch", transient=True)
    if rebuilds is not None:
        try:
            same = hashlib.sha256(reconstruct(back)).hexdigest() == rebuilds
        except ArchiverError as e:
            raise StorageError(f"the stored {key} does not rebuild the original: {e}", code="lossless_mismatch") from None
        if not same:
            raise StorageError(f"the JPEG rebuilt from the stored {key} is not the original", code="lossless_mismatch")


def process_object(info: ObjectInfo, src: ObjectStore, dst: ObjectStore, codec: Codec, opts: PipelineOptions,
                   codec_lock: AbstractContextManager | None = None, archived_bytes: int | None = None,
                   pixels: dict[str, np.ndarray] | None = None, hints: QualityHints | None = None) -> Outcome:
    """Recompress and verify one object, and (unless dry-run) write and re-read its container.

    ``pixels``: when given, filled with what the verify step compared, ``"original"`` (the RGB a
    user gets back, as loaded) and ``"decoded"`` (the real bitstream's decode), as far as the
    object got. The pilot uses it to run the classical baselines and a task check on the same
    pixels without fetching or decoding the object twice.

    ``archived_bytes``: the size of a verified archive of this version made with another model
    (an upgrade run). A new container that is not smaller is not written: the outcome is
    ``skipped`` (``archive_smaller``) and the existing archive stays, so an upgrade never grows
    the archive.

    Never deletes anything and never raises for a bad object or a storage failure: the outcome
    says what happened. Transient storage errors are retried per step (:func:`with_retries`);
    an object whose fetch or write keeps failing ends ``failed`` with the error's code.

    ``hints``: where quality searches start (the process's :class:`QualityHints`, kept by its
    runtime); without it each search starts from scratch, with the same result, only slower.
    """
    out = Outcome(key=info.key, status=ResultStatus.FAILED, original_bytes=info.size, etag=info.etag, version_id=info.version_id,
                  device=codec.device_name)
    t0 = time.perf_counter()
    try:
        if info.size > opts.max_object_bytes:
            raise ArchiverError(f"object is {info.size:,} bytes, above the {opts.max_object_bytes:,}-byte limit",
                                code="too_large")
        # if_match: the bytes we archive are the version we listed (and record as ``etag``); an
        # object overwritten in between fails with ``changed`` and is picked up by the next run.
        data = with_retries(lambda: src.get(info.key, max_bytes=opts.max_object_bytes, if_match=info.etag or None),
                            f"fetching {info.key}")
        out.timings["fetch"] = time.perf_counter() - t0
        out.original_bytes = len(data)
        out.original_sha256 = hashlib.sha256(data).hexdigest()
        out.content_type = sniff(data)
        policy = Policy(opts.policy)
        lossless: Transcoded | None = None
        refused: LosslessRefused | None = None
        if policy is not Policy.LOSSY or opts.measure_lossless:
            t1 = time.perf_counter()
            if out.content_type == "image/jpeg":
                try:
                    lossless = transcode(data, max_pixels=opts.max_pixels)  # verified: rebuilds the same bytes
                except LosslessRefused as e:
                    refused = e
            else:
                refused = LosslessRefused(f"{out.content_type} original: the bit-exact tier is for JPEG originals only",
                                          code=Refusal.NOT_JPEG)
            out.timings["lossless"] = time.perf_counter() - t1
            out.lossless_bytes = len(lossless.data) if lossless is not None else None
            out.lossless_refusal = refused.code if refused is not None else None
        if policy is Policy.LOSSLESS:
            if lossless is None:
                out.status, out.reason_code, out.reason = ResultStatus.REJECTED, refused.code, str(refused)
                return out
            out.width, out.height = lossless.info.width, lossless.info.height
            payload, tier = lossless.data, Tier.LOSSLESS
        else:
            try:
                neural = _encode_neural(data, out, codec, opts, codec_lock, pixels, hints)
            except ArchiverError as e:
                if lossless is None:
                    raise
                neural = e  # best: the neural path cannot take it (an image it refuses, a floor out of reach)
            if lossless is not None and isinstance(neural, bytes) and out.psnr is not None and out.psnr < opts.min_psnr:
                neural = ArchiverError(f"verified PSNR {out.psnr:.2f} dB < {opts.min_psnr:.2f} dB",
                                       code=Reason.PSNR_BELOW_THRESHOLD)  # best: the exact copy is kept instead
            if lossless is not None and (not isinstance(neural, bytes)
                                         or len(lossless.data) <= len(neural) * (1.0 + opts.lossless_margin)):
                payload, tier = lossless.data, Tier.LOSSLESS
                out.width, out.height = lossless.info.width, lossless.info.height
                out.quality = None
                out.reason = (None if not isinstance(neural, bytes) else
                              f"lossless {len(lossless.data):,} bytes vs neural {len(neural):,} bytes")
            elif isinstance(neural, bytes):
                payload, tier = neural, Tier.LOSSY
            else:
                raise neural
            if tier is Tier.LOSSY and out.psnr is not None and out.psnr < opts.min_psnr:
                out.status, out.reason_code = ResultStatus.REJECTED, Reason.PSNR_BELOW_THRESHOLD
                out.reason = f"verified PSNR {out.psnr:.2f} dB < {opts.min_psnr:.2f} dB"
                return out
        if tier is Tier.LOSSLESS:
            out.psnr, out.ms_ssim = None, 1.0  # identical bytes: no PSNR to speak of
        out.tier = tier.value
        out.compressed_bytes = len(payload)
        out.compressed_sha256 = hashlib.sha256(payload).hexdigest()
        if out.width and out.height:
            out.bpp = len(payload) * 8 / (out.width * out.height)
        saving = 1.0 - len(payload) / max(1, len(data))
        if saving < opts.min_saving:
            out.status, out.reason_code = ResultStatus.REJECTED, Reason.INSUFFICIENT_SAVING
            out.reason = (f"saving {saving:.1%} < {opts.min_saving:.1%} ({len(data):,} -> {len(payload):,} bytes, "
                          f"{tier.value})")
            return out
        if archived_bytes is not None and len(payload) >= archived_bytes:
            out.status, out.reason_code = ResultStatus.SKIPPED, Reason.ARCHIVE_SMALLER
            out.reason = (f"the existing archive ({archived_bytes:,} bytes) is not larger than {codec.model_id}'s "
                          f"({len(payload):,} bytes, {tier.value}): kept")
            out.compressed_bytes = out.compressed_sha256 = out.tier = None
            return out
        if not opts.dry_run:
            t3 = time.perf_counter()
            k = dest_key(info.key, opts)
            source_id = Scope.of(src).source_id(info.key)

            def write_and_verify() -> None:
                _refuse_foreign(dst, k, source_id, info.etag)
                dst.put(k, payload, metadata={"sha256": out.compressed_sha256, "source-etag": info.etag or "",
                                              SOURCE_ID_META: source_id, "model-id": codec.model_id,
                                              "tier": tier.value},
                        content_type=JXL_MEDIA_TYPE if tier is Tier.LOSSLESS else "application/x-cxa")
                _verify_stored(dst, k, len(payload), out.compressed_sha256, opts.max_object_bytes,
                               rebuilds=out.original_sha256 if tier is Tier.LOSSLESS else None)

            with_retries(write_and_verify, f"writing {dst.url_for(k)}")
            out.dest_url = dst.url_for(k)
            out.timings["write"] = time.perf_counter() - t3
        out.status = ResultStatus.ACCEPTED
        return out
    except StorageError as e:  # ObjectTooLarge: it grew past the cap after it was listed
        out.status = ResultStatus.REJECTED if e.code == "too_large" else ResultStatus.FAILED
        out.reason_code, out.reason = e.code, str(e)
        return out
    except ImageRejected as e:
        out.status, out.reason_code, out.reason = ResultStatus.REJECTED, e.code, str(e)
        return out
    except ArchiverError as e:
        out.status = ResultStatus.REJECTED if e.code in REJECTING_ERRORS else ResultStatus.FAILED
        out.reason_code, out.reason = e.code, str(e)
        return out
    except Exception as e:  # a bug or an unexpected library error: record it, keep the batch going
        log.exception("unexpected error on %s", info.key)
        out.status, out.reason_code, out.reason = ResultStatus.FAILED, Reason.INTERNAL_ERROR, f"{type(e).__name__}: {e}"
        return out
    finally:
        out.timings["total"] = time.perf_counter() - t0


def _encode_neural(data: bytes, out: Outcome, codec: Codec, opts: PipelineOptions,
                   codec_lock: AbstractContextManager | None, pixels: dict[str, np.ndarray] | None,
                   hints: QualityHints | None) -> bytes:
    """Decode the original's pixels, encode them at the floor and verify the real bitstream.

    Fills ``out`` (size, PSNR, MS-SSIM, quality, timings) and returns the verified bitstream.
    A PSNR below the floor is *not* raised: the caller decides (under ``best`` the lossless
    transcode may still be kept); image refusals and an unreachable floor raise as before.
    """
    img = load_image(data, max_pixels=opts.max_pixels)
    out.width, out.height = img.width, img.height
    if pixels is not None:
        pixels["original"] = delivered(img.rgb, img.mode)
    lock = codec_lock or _NULL_LOCK
    t1 = time.perf_counter()
    with lock:
        gpu0 = codec.gpu_seconds
        target = opts.min_psnr + PSNR_MARGIN
        hint, spread = hints.get(codec.model_id, target) if hints is not None else (None, 0.0)
        enc = codec.encode_detailed(img, target_psnr=target, quality_hint=hint, hint_spread=spread,
                                    effort=opts.effort)
        if hints is not None:
            hints.add(codec.model_id, target, enc.quality)
        out.timings["encode"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        dec = codec.decode(enc.data, max_pixels=opts.max_pixels)  # the real bitstream, through the real decoder
        out.gpu_seconds = codec.gpu_seconds - gpu0 if codec.device.type == "cuda" else 0.0
    # dec.rgb is what a user gets back (gray modes as gray); img.rgb of a gray image is the
    # gray replicated to three channels, i.e. already in that form.
    out.psnr = psnr(delivered(img.rgb, img.mode), dec.rgb)
    if pixels is not None:
        pixels["decoded"] = dec.rgb
    out.ms_ssim = ms_ssim(delivered(img.rgb, img.mode), dec.rgb)
    out.timings["verify"] = time.perf_counter() - t2
    out.quality = enc.quality
    out.probes = enc.probes
    if (dec.alpha is None) != (img.alpha is None) or (
            img.alpha is not None and not np.array_equal(dec.alpha, img.alpha)):
        raise ContainerError("alpha plane did not survive the round trip", code="alpha_mismatch")
    return enc.data


class _NullLock:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


_NULL_LOCK = _NullLock()


def container_matches(dst: ObjectStore, key: str, ledger: LedgerView, opts: PipelineOptions) -> bool:
    """Is the container the ledger names present at this destination, with its recorded size and sha256?

    A cheap HEAD (size + our sha256 metadata); the full read-back happens before any delete.
    """
    dk = dest_key(key, opts)
    if ledger.dest_url != dst.url_for(dk):
        return False
    head = dst.head(dk)
    return head is not None and head.size == ledger.compressed_bytes and head.sha256 == ledger.compressed_sha256


def delete_original(session_factory: sessionmaker, src: ObjectStore, dst: ObjectStore, key: str,
                    ledger_id: int, opts: PipelineOptions, result_ids: tuple[int, ...] = ()) -> bool:
    """Delete an original whose container is recorded, after re-reading and re-hashing that container.

    Returns True when the original is gone (deleted now, or already missing); the ledger row, the
    result row that archived it and ``result_ids`` are then marked ``original_deleted``. Returns
    False when the original changed since it was archived (it is kept). Raises ``StorageError``
    when the container cannot be verified: the original is then kept.
    """
    with session_factory() as s:
        led = LedgerView.of(s.get(ArchivedObject, ledger_id))
    if led is None:
        return False
    dk = dest_key(key, opts)
    if led.dest_url != dst.url_for(dk):
        raise StorageError(f"not deleting {key}: its container is recorded at {led.dest_url}, not at "
                           f"{dst.url_for(dk)}", code="dest_mismatch")
    if led.tier == Tier.LOSSLESS and not led.original_sha256:
        raise StorageError(f"not deleting {key}: its lossless archive has no recorded original sha256 to check",
                           code="lossless_unverifiable")
    # a lossless archive is deleted against only once the JPEG it rebuilds is the original, byte for byte
    with_retries(lambda: _verify_stored(dst, dk, led.compressed_bytes, led.compressed_sha256, opts.max_object_bytes,
                                        rebuilds=led.original_sha256 if led.tier == Tier.LOSSLESS else None),
                 f"re-verifying {dst.url_for(dk)}")
    current = with_retries(lambda: src.head(key), f"checking {key}")
    if current is not None:
        if current.etag != led.etag:
            log.warning("not deleting %s: it changed since it was archived", key)
            return False
        with_retries(lambda: src.delete(key), f"deleting {key}")
    with session_factory() as s:
        mark_original_deleted(s, s.get(ArchivedObject, ledger_id), {led.result_id, *result_ids})
        s.commit()
    return True


# ---- the job loop ----------------------------------------------------------------------------

@dataclass
class JobSummary:
    job_id: int
    seen: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # rejected and failed together
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    failed_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, out: Outcome) -> None:
        self.seen += 1
        setattr(self, str(out.status), getattr(self, str(out.status)) + 1)
        if out.status == ResultStatus.ACCEPTED:
            self.bytes_before += out.original_bytes
            self.bytes_after += out.compressed_bytes or 0
        if out.reason_code and out.status in NOT_ARCHIVED:
            self.reasons[out.reason_code] = self.reasons.get(out.reason_code, 0) + 1
            per = self.rejected_reasons if out.status == ResultStatus.REJECTED else self.failed_reasons
            per[out.reason_code] = per.get(out.reason_code, 0) + 1

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after


def iter_source(src: ObjectStore, opts: PipelineOptions, limit: int | None = None) -> Iterator[ObjectInfo]:
    """Stream the listing, leaving out our own containers and write probes; entries the store
    cannot serve come too (``ObjectInfo.refused``), so that each gets its ``rejected`` row."""
    n = 0
    for info in src.list(include_refused=True):
        if info.key.endswith(opts.suffix) or info.key.rsplit("/", 1)[-1].startswith(PROBE_PREFIX):
            continue
        yield info
        n += 1
        if limit is not None and n >= limit:
            return


def find_resumable_job(session: Session, source: str, dest: str | None, opts: PipelineOptions, model_id: str) -> Job | None:
    """An unfinished job with the same source, destination and settings: a rerun continues it.

    "Unfinished" includes ``failed`` (interrupted by an exception or Ctrl-C), not ``finished``
    (a rerun after a finished job is a new job, whose already-archived objects are ``skipped``)
    nor ``cancelled``.
    """
    for job in session.execute(
        select(Job).where(Job.source == source, Job.status.in_(RESUMABLE_JOBS), Job.kind == JobKind.RECOMPRESS)
        .order_by(Job.id.desc())
    ).scalars():
        if (job.settings or {}).get("via") == "workers":
            continue  # a distributed job (archiver submit): its batches belong to the Celery workers
        saved = (job.settings or {}).get("options")
        if (job.dest == dest and job.model_id == model_id and isinstance(saved, dict)
                and PipelineOptions.from_dict(saved) == opts):
            return job
    return None


def refusal_of(info: ObjectInfo, scope: Scope, opts: PipelineOptions) -> tuple[str, str] | None:
    """``(reason_code, message)`` when ``info`` must be rejected before it is even fetched."""
    if info.refused is not None:
        return info.refused
    why = unrestorable_reason(scope.key(info.key), opts.suffix)
    if why is not None:
        return Reason.UNSAFE_KEY, (f"{why}: an archive of it could not be restored to a directory under this name, "
                              "so it is not archived (and its original never deleted); rename it to archive it")
    return None


def handle_object(info: ObjectInfo, *, job_id: int, src: ObjectStore, dst: ObjectStore, codec: Codec,
                  opts: PipelineOptions, session_factory: sessionmaker, codec_lock: AbstractContextManager | None = None,
                  worker: str | None = None, pixels: dict[str, np.ndarray] | None = None,
                  hints: QualityHints | None = None) -> Outcome:
    """The full per-object step shared by the CLI loop and the Celery task: skip-or-process,
    record, then (with replace) delete the original.

    * This job already has a final row for this version of the object: return it (a resumed job
      re-does nothing), unless its original is still to be deleted.
    * The ledger has this version with this model (any model unless ``opts.upgrade``) and its
      container is still at the destination with the recorded size and sha256: ``skipped``
      (``already_archived``, the row names the archive's model), no re-encoding.
      A ledger entry whose container is gone or differs is not trusted: the object is recompressed.
    * Otherwise process, and record the outcome (and the ledger row) in one transaction.
    * Only then, with ``replace``, delete the original (after re-verifying the container).
    * Before all that, an entry the listing could not serve (:attr:`ObjectInfo.refused`) or an
      object whose key could not be restored to a directory (``unsafe_key``) is recorded
      ``rejected`` and left alone: never encoded, never deleted, whatever the ledger says.

    The choice among these is :func:`archiver.decision.decide` (pure, tested case by case); this
    function gathers its facts and does the I/O it asks for.

    ``pixels`` and ``hints`` are passed to :func:`process_object` (``pixels`` is filled only
    when the object is processed).

    Raises only for database errors; storage and image problems become the outcome.
    """
    scope = Scope.of(src)
    refusal = refusal_of(info, scope, opts)
    if refusal is not None:
        code, why = refusal
        out = Outcome.of_listing(info, ResultStatus.REJECTED, code, why, device=codec.device_name)
        record(session_factory, job_id, scope, codec.model_id, out, worker)
        return out
    with session_factory() as s:
        done = result_row(s, job_id, scope, info.key)
        prior = outcome_from_row(done, scope) if done is not None and done.etag == info.etag else None
        prior_id = done.id if prior is not None else None
        found = None if opts.dry_run else LedgerView.of(
            already_archived(s, scope, info, codec.model_id, any_model=True))
    facts = Facts(recorded=Recorded(prior.status, prior.original_deleted) if prior is not None else None,
                  archive_model=found.model_id if found is not None else None, model_id=codec.model_id,
                  upgrade=opts.upgrade, replace=opts.replace, dry_run=opts.dry_run)
    decision = decide(facts)
    if decision.step is Step.CHECK_CONTAINER:
        try:
            ok = with_retries(lambda: container_matches(dst, info.key, found, opts),
                              f"checking the container of {info.key}")
            decision = decide(facts.checked(Container.MATCHES if ok else Container.MISSING))
        except StorageError as e:
            decision = decide(facts.checked(Container.UNCHECKABLE))
            if decision.step is Step.KEEP_RECORDED:
                # only this job's pending delete was left: keep its row as it is, keep the original
                log.warning("kept the original of %s: cannot check its container: %s", info.key, e)
            else:
                out = Outcome.of_listing(info, ResultStatus.FAILED, e.code,
                                         f"cannot check the archived container: {e}", device=codec.device_name)
                record(session_factory, job_id, scope, codec.model_id, out, worker)
                return out
        else:
            if not ok:
                log.warning("%s is in the ledger as archived at %s, but that container is missing or differs at "
                            "%s: recompressing", info.key, found.dest_url, dst.url_for(dest_key(info.key, opts)))

    led: LedgerView | None = None  # the ledger entry whose container the delete re-reads
    if decision.step is Step.KEEP_RECORDED:
        return prior
    if decision.step is Step.DELETE_ONLY:
        out, led = prior, found  # recorded by this job before an interruption; only the delete is left
    elif decision.step is Step.SKIP:
        led = found
        out = Outcome(key=info.key, status=ResultStatus.SKIPPED, original_bytes=info.size, etag=info.etag,
                      version_id=info.version_id, reason_code=Reason.ALREADY_ARCHIVED,
                      reason=f"unchanged since archived with {led.model_id}", dest_url=led.dest_url,
                      compressed_sha256=led.compressed_sha256, device=codec.device_name, tier=led.tier)
        prior_id = record(session_factory, job_id, scope, led.model_id, out, worker).row_id
    else:
        older = _intact(found, info, dst, opts) if decision.upgrade_over_archive else None
        out = process_object(info, src, dst, codec, opts, codec_lock,
                             archived_bytes=older.compressed_bytes if older else None, pixels=pixels, hints=hints)
        if out.reason_code == Reason.ARCHIVE_SMALLER and older is not None:
            out.dest_url, out.compressed_sha256, led = older.dest_url, older.compressed_sha256, older
        kept = record(session_factory, job_id, scope, led.model_id if led else codec.model_id, out, worker)
        if kept.outcome is not out:  # another delivery archived it meanwhile: its row stands, and its delete
            return kept.outcome
        prior_id = kept.row_id
        if out.status == ResultStatus.ACCEPTED and not opts.dry_run:
            with session_factory() as s:
                led = LedgerView.of(already_archived(s, scope, info, codec.model_id))

    if deletes_original(decision, out.status, led is not None):
        try:
            if delete_original(session_factory, src, dst, info.key, led.id, opts,
                               result_ids=(prior_id,) if prior_id else ()):
                out.original_deleted = True
        except StorageError as e:
            log.warning("kept the original of %s: %s", info.key, e)
            out.reason = f"original kept: {e}"
            with session_factory() as s:
                row = s.get(Result, prior_id) if prior_id else None
                if row is not None:
                    row.reason = out.reason
                    s.commit()
    return out


def _intact(led: LedgerView, info: ObjectInfo, dst: ObjectStore, opts: PipelineOptions) -> LedgerView | None:
    """For an upgrade: the older model's archive if its container is still the recorded one."""
    try:
        ok = with_retries(lambda: container_matches(dst, info.key, led, opts), f"checking the container of {info.key}")
    except StorageError as e:
        log.warning("cannot check the older archive of %s (%s): upgrading without comparing sizes", info.key, e)
        return None
    return led if ok else None


def reconcile_deleted(session_factory: sessionmaker, job_id: int, src: ObjectStore) -> int:
    """Mark ``original_deleted`` on this job's archived rows whose original is gone.

    A kill between deleting an original and committing that fact leaves the row saying the
    original exists; the object is no longer listed, so no later run would look at it again.
    Only rows of this job that are archived (``accepted``/``skipped`` with a verified container
    in the ledger) and not yet marked are checked, one HEAD each: after a clean run that is the
    handful whose delete failed. Returns how many rows were corrected.
    """
    scope = Scope.of(src)
    with session_factory() as s:
        todo = [(r.id, scope.relative(r.key), r.etag, r.model_id) for r in s.execute(
            select(Result).where(Result.job_id == job_id, Result.bucket == scope.bucket,
                                 Result.status.in_(ARCHIVED), Result.original_deleted.is_(False))
        ).scalars()]
    fixed = 0
    for rid, key, etag, model_id in todo:  # a skipped row names the model of the archive it found
        try:
            gone = with_retries(lambda k=key: src.head(k), f"checking {key}") is None
        except StorageError as e:
            log.warning("cannot check whether the original of %s still exists: %s", key, e)
            continue
        if not gone:
            continue
        with session_factory() as s:
            led = ledger_row(s, scope, key, etag, model_id)
            if led is None:  # never archived (e.g. a dry run): nothing says a container exists
                continue
            mark_original_deleted(s, led, {rid})
            s.commit()
            fixed += 1
    if fixed:
        log.info("job %s: %d original(s) were already deleted; rows corrected", job_id, fixed)
    return fixed


def run_job(*, src: ObjectStore, dst: ObjectStore, source_url: str, dest_url: str | None, codec: Codec,
            opts: PipelineOptions, session_factory: sessionmaker, limit: int | None = None, workers: int = 1,
            on_outcome: Callable[[Outcome, JobSummary], None] | None = None, new_job: bool = False,
            codec_slots: int = 1, hints: QualityHints | None = None) -> JobSummary:
    """Run (or resume) a recompression job in this process.

    ``workers`` threads overlap downloads, image decoding, uploads and database writes with the
    codec, which holds at most ``codec_slots`` images at once (1: it already uses every core or
    the GPU; 2 on a GPU lets one image's CPU-side work overlap another's GPU work). ``hints``:
    the front door's quality hints (a fresh set, shared by this job's objects, when not given).
    """
    hints = hints if hints is not None else QualityHints()
    with session_factory() as s:
        job = None if new_job else find_resumable_job(s, source_url, dest_url, opts, codec.model_id)
        if job is None:
            job = add_job_row(s, kind=JobKind.RECOMPRESS, source=source_url, dest=dest_url,
                              model_id=codec.model_id, options=opts.as_dict())
            s.commit()
        else:
            log.info("resuming job %s", job.id)
            job.status, job.error, job.finished_at = JobStatus.RUNNING, None, None
            job.started_at = job.started_at or utcnow()
            s.commit()
        job_id = job.id
    summary = JobSummary(job_id=job_id)
    t0 = time.perf_counter()
    lock = threading.BoundedSemaphore(max(1, codec_slots))
    bytes_listed = 0

    def one(info: ObjectInfo) -> Outcome:
        with log_context(job_id, info.key):
            return handle_object(info, job_id=job_id, src=src, dst=dst, codec=codec, opts=opts,
                                 session_factory=session_factory, codec_lock=lock, hints=hints)

    try:
        if not opts.dry_run:
            prepare_destination(dst)  # a wrong --dest fails here, before the first encode
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: set[Future] = set()
            for info in iter_source(src, opts, limit):
                bytes_listed += info.size
                pending.add(pool.submit(one, info))
                if len(pending) >= 2 * max(1, workers):
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        _collect(f, summary, on_outcome)
            for f in pending:
                _collect(f, summary, on_outcome)
        if opts.replace and not opts.dry_run:
            reconcile_deleted(session_factory, job_id, src)
        with session_factory() as s:
            job = s.get(Job, job_id)
            job.objects_listed = summary.seen
            job.bytes_listed = bytes_listed
            s.commit()
        finish_job(session_factory, job_id)
    except BaseException as e:
        finish_job(session_factory, job_id, JobStatus.FAILED, f"{type(e).__name__}: {e}")
        raise
    summary.seconds = time.perf_counter() - t0
    return summary


def _collect(f: Future, summary: JobSummary, on_outcome) -> None:
    out = f.result()
    summary.add(out)
    if out.original_deleted:
        summary.deleted += 1
    if on_outcome:
        on_outcome(out, summary)
