"""End-to-end tests of the archive pipeline (``archiver.pipeline``, ``archiver.restore`` and the
``archiver recompress`` / ``archiver restore`` commands).

Everything is real: images are Kodak crops encoded by Pillow, the codec is the shipped
``compact-v1`` on the CPU, S3 is moto's server mode spoken to over HTTP by boto3, the databases
are SQLite files and a local PostgreSQL. Nothing is mocked.

The shipped weights change while the codec is being trained, so no test depends on how good they
are: objects that must be accepted use a PSNR floor of 1 dB (any decoder output that is not an
inverted image clears it) and no saving floor against lossless PNG / JPEG q95 sources; forced
rejections use 99 dB or a 99 % saving. Everything else is asserted as a relationship between the
database rows and the real stored bytes: sizes, sha256s, and the PSNR recomputed by decoding the
stored container against the original pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from archiver import pipeline
from archiver.codec.api import Codec, delivered
from archiver.codec.default import DEFAULT_MODEL
from archiver.db import ArchivedObject, Job, Result, session_factory, upgrade
from archiver.images import load_image, sniff
from archiver.metrics import psnr
from archiver.pipeline import PipelineOptions, run_job
from archiver.restore import decode_container, restore_all
from runtimes import runtime_for, shared_codec
from archiver.settings import S3Settings
from archiver.storage import LocalStore, ObjectStore
from archiver.storage import retries
from archiver.storage.s3 import S3Store

from shared_paths import KODAK  # noqa: E402
MODEL = DEFAULT_MODEL
MAX_PIXELS = 1_000_000
ACCEPT_PSNR = 1.0  # see the module docstring: reachable with any weights, even untrained ones
ARCHIVER_BIN = Path(sys.executable).with_name("archiver")
FINAL = {"accepted", "rejected"}


# ------------------------------------------------------------------------------------ corpus
def _crop(n: int, size: int = 128, x: int = 64, y: int = 64) -> Image.Image:
    with Image.open(KODAK / f"kodim{n:02d}.png") as im:
        return im.convert("RGB").crop((x, y, x + size, y + size))


def _enc(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgba() -> bytes:
    im = _crop(4)
    yy, xx = np.mgrid[0:128, 0:128]
    alpha = np.clip(255 - np.hypot(yy - 64, xx - 64) * 3, 0, 255).astype(np.uint8)  # a real, varying alpha
    im.putalpha(Image.fromarray(alpha))
    return _enc(im, "PNG")


def _animated_gif() -> bytes:
    frames = [_crop(8, 64).convert("P"), _crop(9, 64).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def good_objects() -> dict[str, bytes]:
    """Images that must be archived: RGB PNG, JPEG q95, gray, RGBA with alpha, palette."""
    return {
        "alpha/k04-rgba.png": _rgba(),
        "gray/k03-gray.png": _enc(_crop(3).convert("L"), "PNG"),
        "palette/k05-p.png": _enc(_crop(5).quantize(64), "PNG"),
        "photos/k01.png": _enc(_crop(1), "PNG"),
        "photos/k02.jpg": _enc(_crop(2), "JPEG", quality=95),
    }


def bad_objects() -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, the reason_code archiver.images gives them)."""
    jpeg = _enc(_crop(6), "JPEG", quality=95)
    deep = Image.fromarray((np.arange(128 * 128).reshape(128, 128) * 3).astype(np.uint16))  # 16-bit gray PNG
    return {
        "bad/anim.gif": (_animated_gif(), "animated"),
        "bad/bomb.png": (_enc(Image.new("L", (2000, 2000)), "PNG"), "decompression_bomb"),
        "bad/cmyk.jpg": (_enc(_crop(7).convert("CMYK"), "JPEG", quality=90), "unsupported_mode"),
        "bad/deep16.png": (_enc(deep, "PNG"), "unsupported_depth"),
        "bad/empty.jpg": (b"", "empty"),
        "bad/notes.jpg": (b"these are not the pixels you are looking for\n", "not_an_image"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
    }


GOOD = good_objects()
BAD = bad_objects()
ALL = {**GOOD, **{k: v for k, (v, _) in BAD.items()}}


def accept_opts(**kw: Any) -> PipelineOptions:
    return PipelineOptions(min_psnr=ACCEPT_PSNR, min_saving=0.0, max_pixels=MAX_PIXELS, **kw)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """This machine's cores are shared with a training run: one intra-op thread is ~10x faster
    than two contending ones (and subprocesses get OMP_NUM_THREADS=1 for the same reason)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return shared_codec(MODEL, "cpu")


@pytest.fixture
def sf(db_url: str) -> Iterator[Any]:
    """A migrated database (SQLite and PostgreSQL, via conftest's ``db_url``)."""
    upgrade(db_url)
    factory = session_factory(db_url)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def sqlite_sf(tmp_path: Path) -> Iterator[Any]:
    """For tests whose subject is not the database: one SQLite file."""
    url = f"sqlite:///{tmp_path / 'one.sqlite'}"
    upgrade(url)
    factory = session_factory(url)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """An empty source store: a local directory, or a fresh bucket on the moto S3 server."""
    if request.param == "local":
        st: ObjectStore = LocalStore(tmp_path / "bucket", create=True)
    else:
        settings = request.getfixturevalue("s3_settings")
        st = S3Store(request.getfixturevalue("s3_bucket"), settings.s3)
    yield st
    st.close()


def populate(st: ObjectStore, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        st.put(key, data, content_type="application/octet-stream")


def listing(st: ObjectStore) -> dict[str, str]:
    """key -> etag of everything in the store."""
    return {o.key: o.etag for o in st.list()}


def results(factory: Any, job_id: int | None = None) -> list[Result]:
    with factory() as s:
        q = select(Result).order_by(Result.id)
        if job_id is not None:
            q = q.where(Result.job_id == job_id)
        return list(s.execute(q).scalars())


def ledger(factory: Any) -> list[ArchivedObject]:
    with factory() as s:
        return list(s.execute(select(ArchivedObject).order_by(ArchivedObject.id)).scalars())


def jobs(factory: Any) -> list[Job]:
    with factory() as s:
        return list(s.execute(select(Job).order_by(Job.id)).scalars())


def by_key(rows: list[Result]) -> dict[str, Result]:
    out = {r.key: r for r in rows}
    assert len(out) == len(rows), "more than one row for a key in one job"
    return out


def check_container(row: Result, original: bytes, dst: ObjectStore, opts: PipelineOptions) -> None:
    """The stored container is the recorded one and decodes to the recorded PSNR."""
    ckey = row.key + opts.suffix
    data = dst.get(ckey)
    assert len(data) == row.compressed_bytes
    assert hashlib.sha256(data).hexdigest() == row.compressed_sha256
    assert row.dest_url == dst.url_for(ckey)
    head = dst.head(ckey)
    assert head is not None and head.sha256 == row.compressed_sha256
    dec = decode_container(data, runtime_for(), "cpu")
    img = load_image(original, max_pixels=MAX_PIXELS)
    measured = psnr(delivered(img.rgb, img.mode), dec.rgb)
    assert measured == pytest.approx(row.psnr, abs=1e-6)
    assert row.psnr >= opts.min_psnr
    assert row.compressed_bytes <= (1 - opts.min_saving) * row.original_bytes
    assert row.original_bytes == len(original)
    assert (row.width, row.height) == (img.width, img.height) == (dec.meta.width, dec.meta.height)
    assert dec.meta.original_sha256 == hashlib.sha256(original).hexdigest()
    assert dec.meta.original_bytes == len(original)
    assert dec.meta.mode == img.mode
    assert row.content_type == sniff(original) == dec.meta.content_type
    if img.alpha is None:
        assert dec.alpha is None
    else:
        assert dec.alpha is not None and np.array_equal(dec.alpha, img.alpha)  # alpha is lossless


def check_bad_rows(rows: dict[str, Result]) -> None:
    for key, (_, code) in BAD.items():
        r = rows[key]
        assert r.status == "rejected", (key, r.status, r.reason)
        assert r.reason_code == code, (key, r.reason_code, r.reason)
        assert r.reason, key
        assert r.compressed_bytes is None and r.dest_url is None


# ------------------------------------------------------------------- 1. the job loop in-process
def test_run_job_archives_images_and_records_every_object(store: ObjectStore, sf: Any, codec: Codec) -> None:
    populate(store, ALL)
    before = listing(store)
    opts = accept_opts()
    summary = run_job(src=store, dst=store, source_url=store.url, dest_url=None, codec=codec, opts=opts,
                      session_factory=sf)

    # the job
    (job,) = jobs(sf)
    assert job.id == summary.job_id and job.status == "finished" and job.finished_at is not None
    assert job.objects_listed == len(ALL) and job.model_id == MODEL
    assert job.settings["options"] == opts.as_dict()
    assert (summary.accepted, summary.rejected, summary.failed, summary.skipped) == (len(GOOD), len(BAD), 0, 0)
    assert summary.reasons == {code: 1 for _, code in BAD.values()}

    # one row per object; bad ones rejected with the specific reason; good ones verifiably archived
    rows = by_key(results(sf))
    assert set(rows) == set(ALL)
    check_bad_rows(rows)
    for key, data in GOOD.items():
        r = rows[key]
        assert r.status == "accepted" and r.reason_code is None, (key, r.reason)
        assert r.etag == before[key] and r.attempts == 1 and r.model_id == MODEL
        assert r.t_encode is not None and r.t_total >= r.t_encode
        check_container(r, data, store, opts)
    assert summary.bytes_after == sum(rows[k].compressed_bytes for k in GOOD)

    # the ledger: exactly one row per accepted object, pointing at its result
    led = {a.key: a for a in ledger(sf)}
    assert set(led) == set(GOOD) and len(ledger(sf)) == len(GOOD)
    for key, a in led.items():
        r = rows[key]
        assert (a.etag, a.result_id, a.compressed_sha256, a.compressed_bytes, a.dest_url) == (
            r.etag, r.id, r.compressed_sha256, r.compressed_bytes, r.dest_url)
        assert a.bucket == store.bucket and not a.original_deleted

    # without --replace nothing is deleted; containers exist for the accepted objects only
    after = listing(store)
    assert {k: v for k, v in after.items() if not k.endswith(".cxa")} == before
    assert {k for k in after if k.endswith(".cxa")} == {k + ".cxa" for k in GOOD}
    containers = {k: v for k, v in after.items() if k.endswith(".cxa")}

    # rerun after the job finished: a new job; unchanged archived objects are skipped, not re-encoded
    s2 = run_job(src=store, dst=store, source_url=store.url, dest_url=None, codec=codec, opts=opts,
                 session_factory=sf)
    assert s2.job_id != summary.job_id
    assert (s2.skipped, s2.rejected, s2.accepted, s2.failed) == (len(GOOD), len(BAD), 0, 0)
    rows2 = by_key(results(sf, s2.job_id))
    assert set(rows2) == set(ALL)
    check_bad_rows(rows2)
    for key in GOOD:
        r = rows2[key]
        assert (r.status, r.reason_code, r.attempts) == ("skipped", "already_archived", 1)
        assert r.t_encode is None and r.psnr is None  # not re-encoded
        assert r.dest_url == rows[key].dest_url and not r.original_deleted
    assert len(results(sf)) == 2 * len(ALL)
    assert [(a.id, a.compressed_sha256, a.result_id) for a in ledger(sf)] == [
        (a.id, a.compressed_sha256, a.result_id) for a in led.values()]
    assert {k: v for k, v in listing(store).items() if k.endswith(".cxa")} == containers  # not rewritten

    # replace: originals of archived objects are deleted (after re-verification), and only those
    s3 = run_job(src=store, dst=store, source_url=store.url, dest_url=None, codec=codec,
                 opts=accept_opts(replace=True), session_factory=sf)
    assert s3.deleted == len(GOOD) and s3.skipped == len(GOOD) and s3.rejected == len(BAD)
    final = listing(store)
    assert set(final) == set(BAD) | {k + ".cxa" for k in GOOD}
    assert all(final[k] == before[k] for k in BAD)  # rejected originals untouched
    rows3 = by_key(results(sf, s3.job_id))
    assert all(rows3[k].original_deleted for k in GOOD)
    assert not any(rows3[k].original_deleted for k in BAD)
    assert all(a.original_deleted for a in ledger(sf))
    assert all(r.original_deleted for r in by_key(results(sf, summary.job_id)).values() if r.key in GOOD)
    for key, data in GOOD.items():  # what is left is the verified bitstream and its row
        check_container(rows[key], data, store, accept_opts())


def test_replace_in_first_pass_to_another_store(request: pytest.FixtureRequest, tmp_path: Path, store: ObjectStore,
                                                sqlite_sf: Any, codec: Codec) -> None:
    """--dest: containers go to another bucket under a prefix (or another directory); with
    replace the archived originals are removed from the source, the rejected ones stay."""
    if isinstance(store, S3Store):
        name = f"archive-{uuid.uuid4().hex[:12]}"
        request.getfixturevalue("s3_client").create_bucket(Bucket=name)
        other = S3Store(f"s3://{name}/archive/v1", request.getfixturevalue("s3_settings").s3)
    else:
        other = LocalStore(tmp_path / "archive" / "v1", create=True)
    objects = {**{k: GOOD[k] for k in ("photos/k01.png", "alpha/k04-rgba.png")}, "bad/notes.jpg": ALL["bad/notes.jpg"]}
    populate(store, objects)
    before = listing(store)
    opts = accept_opts(replace=True)
    summary = run_job(src=store, dst=other, source_url=store.url, dest_url=other.url, codec=codec, opts=opts,
                      session_factory=sqlite_sf)
    assert (summary.accepted, summary.rejected, summary.deleted) == (2, 1, 2)
    assert listing(store) == {"bad/notes.jpg": before["bad/notes.jpg"]}
    assert set(listing(other)) == {"photos/k01.png.cxa", "alpha/k04-rgba.png.cxa"}
    rows = by_key(results(sqlite_sf))
    for key in ("photos/k01.png", "alpha/k04-rgba.png"):
        assert rows[key].status == "accepted" and rows[key].original_deleted
        assert rows[key].dest_url == other.url_for(key + ".cxa")
        check_container(rows[key], objects[key], other, opts)
    if isinstance(other, S3Store):
        assert rows["photos/k01.png"].dest_url == f"s3://{other.bucket}/archive/v1/photos/k01.png.cxa"
        assert other.bucket != store.bucket
    assert rows["bad/notes.jpg"].reason_code == "not_an_image" and not rows["bad/notes.jpg"].original_deleted
    other.close()


def test_dry_run_writes_nothing_but_records_rows(tmp_path: Path, sf: Any, codec: Codec) -> None:
    st = LocalStore(tmp_path / "bucket", create=True)
    populate(st, ALL)
    before = listing(st)
    opts = accept_opts(dry_run=True, replace=True)  # replace is ignored by a dry run
    summary = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts, session_factory=sf)
    assert listing(st) == before
    assert not any(p.name.startswith(".archiver-tmp") for p in (tmp_path / "bucket").rglob("*"))
    assert summary.accepted == len(GOOD) and summary.deleted == 0
    rows = by_key(results(sf))
    assert set(rows) == set(ALL)
    check_bad_rows(rows)
    for key in GOOD:
        r = rows[key]
        assert r.status == "accepted" and r.dest_url is None and not r.original_deleted
        assert r.psnr >= opts.min_psnr and 0 < r.compressed_bytes <= r.original_bytes and r.compressed_sha256
    assert ledger(sf) == []
    (job,) = jobs(sf)
    assert job.status == "finished" and job.settings["options"]["dry_run"] is True

    # a real run afterwards is not fooled by the dry run: everything is encoded and written
    real = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(),
                   session_factory=sf)
    assert real.job_id != summary.job_id and real.accepted == len(GOOD) and real.skipped == 0
    assert len(ledger(sf)) == len(GOOD)


class Interrupt(Exception):
    pass


def test_interrupted_job_resumes_without_redoing_work(tmp_path: Path, sf: Any, codec: Codec) -> None:
    st = LocalStore(tmp_path / "bucket", create=True)
    populate(st, ALL)
    opts = accept_opts()

    def stop_after_first_accept(out: pipeline.Outcome, _s: pipeline.JobSummary) -> None:
        if out.status == "accepted":
            raise Interrupt

    with pytest.raises(Interrupt):
        run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts, session_factory=sf,
                on_outcome=stop_after_first_accept)
    (job,) = jobs(sf)
    assert job.status == "failed" and "Interrupt" in (job.error or "")
    first = {r.key: (r.attempts, r.t_encode, r.t_total, r.compressed_sha256) for r in results(sf)}
    assert 1 <= sum(1 for r in results(sf) if r.status == "accepted") < len(GOOD)

    # the same command again continues that job: no duplicate rows, nothing recorded is redone
    summary = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts, session_factory=sf)
    assert summary.job_id == job.id and len(jobs(sf)) == 1
    (job,) = jobs(sf)
    assert job.status == "finished" and job.error is None
    rows = results(sf)
    assert len(rows) == len(ALL) == len(by_key(rows))
    with sf() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == len(ALL)
    for r in rows:
        if r.key in first:
            assert (r.attempts, r.t_encode, r.t_total, r.compressed_sha256) == first[r.key], r.key
        assert r.status in FINAL
    assert summary.accepted == len(GOOD) and summary.rejected == len(BAD)
    assert len(ledger(sf)) == len(GOOD)

    # --new-job: a new job, in which every archived object is skipped as already archived
    again = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts, session_factory=sf,
                    new_job=True)
    assert again.job_id != job.id and again.skipped == len(GOOD) and again.accepted == 0
    for key, r in by_key(results(sf, again.job_id)).items():
        if key in GOOD:
            assert (r.status, r.reason_code, r.t_encode) == ("skipped", "already_archived", None)


def test_changed_object_and_lost_container_are_processed_again(tmp_path: Path, sqlite_sf: Any, codec: Codec) -> None:
    st = LocalStore(tmp_path / "bucket", create=True)
    objects = {k: GOOD[k] for k in ("photos/k01.png", "photos/k02.jpg", "gray/k03-gray.png")}
    populate(st, objects)
    opts = accept_opts()
    first = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts,
                    session_factory=sqlite_sf)
    assert first.accepted == 3
    old = by_key(results(sqlite_sf, first.job_id))

    changed = _enc(_crop(10), "PNG")  # new content under the same key: a new etag
    st.put("photos/k01.png", changed)
    st.delete("gray/k03-gray.png.cxa")  # a container lost behind the ledger's back
    second = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts,
                     session_factory=sqlite_sf)
    rows = by_key(results(sqlite_sf, second.job_id))
    assert rows["photos/k02.jpg"].status == "skipped"
    for key, data in (("photos/k01.png", changed), ("gray/k03-gray.png", objects["gray/k03-gray.png"])):
        r = rows[key]
        assert r.status == "accepted" and r.t_encode is not None, key
        check_container(r, data, st, opts)
    assert rows["photos/k01.png"].etag != old["photos/k01.png"].etag
    assert rows["photos/k01.png"].compressed_sha256 != old["photos/k01.png"].compressed_sha256
    led = ledger(sqlite_sf)
    assert sorted(a.key for a in led) == ["gray/k03-gray.png", "photos/k01.png", "photos/k01.png", "photos/k02.jpg"]
    current = [a for a in led if a.key == "photos/k01.png" and a.etag == rows["photos/k01.png"].etag]
    assert len(current) == 1 and current[0].result_id == rows["photos/k01.png"].id
    gray = [a for a in led if a.key == "gray/k03-gray.png"]
    assert len(gray) == 1 and gray[0].result_id == rows["gray/k03-gray.png"].id  # re-pointed, not duplicated


def test_new_model_leaves_older_archives_alone_unless_the_job_upgrades(tmp_path: Path, sqlite_sf: Any,
                                                                          codec: Codec) -> None:
    """Shipping a new default model must not turn the next run into a re-encode of the archive:
    versions archived with an older model are skipped; ``upgrade`` re-encodes them in place."""
    st = LocalStore(tmp_path / "bucket", create=True)
    objects = {k: GOOD[k] for k in ("photos/k01.png", "photos/k02.jpg")}
    populate(st, objects)
    older = Codec.load("compact-v1", "cpu")
    assert older.model_id != codec.model_id
    first = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=older, opts=accept_opts(),
                    session_factory=sqlite_sf)
    assert first.accepted == 2
    v1 = {k: st.get(k + ".cxa") for k in objects}

    second = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(),
                     session_factory=sqlite_sf)
    rows = by_key(results(sqlite_sf, second.job_id))
    for key in objects:
        r = rows[key]
        assert (r.status, r.reason_code, r.model_id, r.t_encode) == ("skipped", "already_archived", "compact-v1", None)
        assert "compact-v1" in r.reason
        assert st.get(key + ".cxa") == v1[key]  # untouched

    # an upgrade replaces an older archive only with a smaller one (see the next test); at this
    # test's 1 dB floor both models sit at quality 0, so make the older archives look larger
    with sqlite_sf() as s:
        for led in s.execute(select(ArchivedObject)).scalars():
            padded = v1[led.key] + bytes(1 << 16)
            meta = {**(st.head(led.key + ".cxa").metadata or {}), "sha256": hashlib.sha256(padded).hexdigest()}
            st.put(led.key + ".cxa", padded, metadata=meta)
            led.compressed_bytes, led.compressed_sha256 = len(padded), hashlib.sha256(padded).hexdigest()
        s.commit()
    third = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(upgrade=True),
                    session_factory=sqlite_sf)
    assert third.job_id != second.job_id and third.accepted == 2
    rows = by_key(results(sqlite_sf, third.job_id))
    for key, data in objects.items():
        assert rows[key].model_id == codec.model_id
        check_container(rows[key], data, st, accept_opts())
        assert decode_container(st.get(key + ".cxa"), runtime_for(), "cpu").meta.model_id == codec.model_id
    assert sorted((a.key, a.model_id) for a in ledger(sqlite_sf)) == sorted(
        (k, m) for k in objects for m in ("compact-v1", codec.model_id))

    # a later replace run (no upgrade) trusts the newest archive, the one at the destination
    fourth = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(replace=True),
                     session_factory=sqlite_sf)
    rows = by_key(results(sqlite_sf, fourth.job_id))
    for key in objects:
        assert (rows[key].status, rows[key].model_id, rows[key].original_deleted) == ("skipped", codec.model_id, True)
        assert st.head(key) is None and st.head(key + ".cxa") is not None


def test_upgrade_keeps_an_older_archive_that_is_smaller(tmp_path: Path, sqlite_sf: Any, codec: Codec) -> None:
    """An upgrade never grows the archive: when the new model's container would not be smaller
    than the verified older one, the older one stays (``skipped``, ``archive_smaller``), and a
    replace run deletes the original against it."""
    st = LocalStore(tmp_path / "bucket", create=True)
    key = "photos/k02.jpg"
    populate(st, {key: GOOD[key]})
    older = Codec.load("compact-v1", "cpu")
    first = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=older, opts=accept_opts(),
                    session_factory=sqlite_sf)
    assert first.accepted == 1
    v1 = st.get(key + ".cxa")
    # make the recorded v1 archive look tiny: any new container is larger than it
    with sqlite_sf() as s:
        led = s.execute(select(ArchivedObject)).scalar_one()
        small = v1[: 64]
        meta = {**(st.head(key + ".cxa").metadata or {}), "sha256": hashlib.sha256(small).hexdigest()}
        st.put(key + ".cxa", small, metadata=meta)
        led.compressed_bytes, led.compressed_sha256 = len(small), hashlib.sha256(small).hexdigest()
        s.commit()
    up = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec,
                 opts=accept_opts(upgrade=True, replace=True), session_factory=sqlite_sf)
    r = by_key(results(sqlite_sf, up.job_id))[key]
    assert (r.status, r.reason_code, r.model_id) == ("skipped", "archive_smaller", "compact-v1"), r.reason
    assert r.compressed_bytes is None and r.t_encode is not None  # the encode ran, nothing was written
    assert st.get(key + ".cxa") == small  # the older archive stays
    assert r.original_deleted and st.head(key) is None  # replace verified it and deleted the original
    assert [a.model_id for a in ledger(sqlite_sf)] == ["compact-v1"]


def test_forced_rejections_record_the_verified_numbers(tmp_path: Path, sqlite_sf: Any, codec: Codec) -> None:
    st = LocalStore(tmp_path / "bucket", create=True)
    populate(st, {"photos/k01.png": GOOD["photos/k01.png"], "photos/k02.jpg": GOOD["photos/k02.jpg"]})
    before = listing(st)
    s1 = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, session_factory=sqlite_sf,
                 opts=PipelineOptions(min_psnr=99, min_saving=0.0, max_pixels=MAX_PIXELS, replace=True))
    for r in results(sqlite_sf, s1.job_id):
        assert (r.status, r.reason_code) == ("rejected", "psnr_unreachable") and "99" in r.reason
        assert r.dest_url is None and not r.original_deleted
    # a 99 % saving cannot be met by a 128 px JPEG of ~8 KB: the container's fixed header alone is larger
    st2 = LocalStore(tmp_path / "jpeg", create=True)
    populate(st2, {"photos/k02.jpg": GOOD["photos/k02.jpg"]})
    s2 = run_job(src=st2, dst=st2, source_url=st2.url, dest_url=None, codec=codec, session_factory=sqlite_sf,
                 opts=PipelineOptions(min_psnr=ACCEPT_PSNR, min_saving=0.99, max_pixels=MAX_PIXELS, replace=True))
    (r,) = results(sqlite_sf, s2.job_id)
    assert (r.status, r.reason_code) == ("rejected", "insufficient_saving")
    assert r.compressed_bytes > 0.01 * r.original_bytes and r.psnr >= ACCEPT_PSNR and r.dest_url is None
    assert listing(st) == before and set(listing(st2)) == {"photos/k02.jpg"}
    assert ledger(sqlite_sf) == []


def _dead_endpoint() -> str:
    with socket.socket() as s:  # bound, never listening: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_destination_fails_objects_after_bounded_retries(
        tmp_path: Path, sqlite_sf: Any, codec: Codec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retries, "RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(retries, "RETRY_WAIT_MULTIPLIER", 0.01)
    st = LocalStore(tmp_path / "bucket", create=True)
    objects = {"photos/k01.png": GOOD["photos/k01.png"], "gray/k03-gray.png": GOOD["gray/k03-gray.png"],
               "bad/notes.jpg": ALL["bad/notes.jpg"]}
    populate(st, objects)
    before = listing(st)
    dead = S3Store("s3://archive/cxa", S3Settings(endpoint_url=_dead_endpoint(), path_style=True, max_attempts=1,
                                                  connect_timeout=1, read_timeout=1, access_key_id="x",
                                                  secret_access_key="y"))
    t0 = time.monotonic()
    summary = run_job(src=st, dst=dead, source_url=st.url, dest_url=dead.url, codec=codec,
                      opts=accept_opts(replace=True), session_factory=sqlite_sf)
    assert time.monotonic() - t0 < 120
    assert (summary.failed, summary.rejected, summary.accepted, summary.deleted) == (2, 1, 0, 0)
    (job,) = jobs(sqlite_sf)
    assert job.status == "finished"
    rows = by_key(results(sqlite_sf))
    for key in ("photos/k01.png", "gray/k03-gray.png"):
        r = rows[key]
        assert r.status == "failed" and r.reason_code == "storage_error", (r.reason_code, r.reason)
        assert "gave up after 2 attempts" in r.reason and r.dest_url is None
        assert r.t_encode is not None  # encoded once; only the write was retried
    assert rows["bad/notes.jpg"].reason_code == "not_an_image"
    assert ledger(sqlite_sf) == [] and listing(st) == before  # nothing deleted, nothing written

    # failed objects are not in the ledger: a run to a working destination archives them
    good_dst = LocalStore(tmp_path / "dest", create=True)
    again = run_job(src=st, dst=good_dst, source_url=st.url, dest_url=good_dst.url, codec=codec,
                    opts=accept_opts(replace=True), session_factory=sqlite_sf)
    assert again.job_id != summary.job_id
    assert (again.accepted, again.deleted, again.rejected) == (2, 2, 1)
    dead.close()


def test_replace_keeps_original_whose_container_does_not_verify(
        s3_settings: Any, s3_bucket: str, s3_client: Any, sqlite_sf: Any, codec: Codec,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A container altered behind our back (same size, same sha256 metadata, other bytes) passes
    the cheap HEAD check, but the full read-back before a delete catches it: the original stays."""
    monkeypatch.setattr(retries, "RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(retries, "RETRY_WAIT_MULTIPLIER", 0.01)
    st = S3Store(s3_bucket, s3_settings.s3)
    objects = {k: GOOD[k] for k in ("photos/k01.png", "photos/k02.jpg")}
    populate(st, objects)
    first = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(),
                    session_factory=sqlite_sf)
    assert first.accepted == 2
    row = by_key(results(sqlite_sf))["photos/k01.png"]
    data = bytearray(st.get("photos/k01.png.cxa"))
    data[len(data) // 2] ^= 0xFF
    s3_client.put_object(Bucket=st.bucket, Key="photos/k01.png.cxa", Body=bytes(data),
                         Metadata={"sha256": row.compressed_sha256})

    second = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(replace=True),
                     session_factory=sqlite_sf)
    assert (second.skipped, second.deleted) == (2, 1)
    (job2,) = [j for j in jobs(sqlite_sf) if j.id == second.job_id]
    assert job2.status == "finished"
    rows = by_key(results(sqlite_sf, second.job_id))
    assert not rows["photos/k01.png"].original_deleted
    assert rows["photos/k01.png"].reason.startswith("original kept")
    assert "does not match" in rows["photos/k01.png"].reason
    assert rows["photos/k02.jpg"].original_deleted
    assert set(listing(st)) == {"photos/k01.png", "photos/k01.png.cxa", "photos/k02.jpg.cxa"}
    assert st.get("photos/k01.png") == objects["photos/k01.png"]
    st.close()


def test_object_overwritten_after_listing_is_not_archived_under_the_old_etag(
        store: ObjectStore, sqlite_sf: Any, codec: Codec) -> None:
    populate(store, {"photos/k01.png": GOOD["photos/k01.png"]})
    (stale,) = list(store.list())
    store.put("photos/k01.png", GOOD["photos/k02.jpg"])  # overwritten between listing and fetching
    out = pipeline.process_object(stale, store, store, codec, accept_opts())
    assert (out.status, out.reason_code) == ("failed", "changed")
    assert store.head("photos/k01.png.cxa") is None
    # the next listing has the new etag, and that version is archived
    summary = run_job(src=store, dst=store, source_url=store.url, dest_url=None, codec=codec, opts=accept_opts(),
                      session_factory=sqlite_sf)
    assert summary.accepted == 1
    (row,) = results(sqlite_sf)
    check_container(row, GOOD["photos/k02.jpg"], store, accept_opts())


def test_rerun_corrects_rows_of_originals_deleted_just_before_a_crash(
        tmp_path: Path, sqlite_sf: Any, codec: Codec) -> None:
    """The crash window between deleting an original and committing that fact: simulated by
    un-marking the rows of a finished job and marking it running again, as a kill would leave it."""
    st = LocalStore(tmp_path / "bucket", create=True)
    populate(st, {k: GOOD[k] for k in ("photos/k01.png", "photos/k02.jpg")})
    opts = accept_opts(replace=True)
    first = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts,
                    session_factory=sqlite_sf)
    assert first.deleted == 2
    with sqlite_sf() as s:
        s.get(Job, first.job_id).status = "running"
        for r in s.execute(select(Result)).scalars():
            r.original_deleted = False
        for a in s.execute(select(ArchivedObject)).scalars():
            a.original_deleted = False
        s.commit()
    again = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts,
                    session_factory=sqlite_sf)
    assert again.job_id == first.job_id and again.seen == 0
    assert all(r.original_deleted for r in results(sqlite_sf))
    assert all(a.original_deleted for a in ledger(sqlite_sf))


def test_rows_name_objects_by_full_key_whatever_prefix_the_job_listed(
        s3_settings: Any, s3_bucket: str, sqlite_sf: Any, codec: Codec) -> None:
    """A job on s3://b/photos/ and a later one on s3://b/ name an object the same way: the second
    recognises what the first archived (skipped, no re-encoding), and rows carry the full key."""
    root = S3Store(s3_bucket, s3_settings.s3)
    populate(root, {k: GOOD[k] for k in ("photos/k01.png", "photos/k02.jpg")} | {"gray/k03-gray.png": GOOD["gray/k03-gray.png"]})
    sub = S3Store(f"{s3_bucket}/photos", s3_settings.s3)
    first = run_job(src=sub, dst=sub, source_url=sub.url, dest_url=None, codec=codec, opts=accept_opts(),
                    session_factory=sqlite_sf)
    assert first.accepted == 2
    rows = by_key(results(sqlite_sf, first.job_id))
    assert set(rows) == {"photos/k01.png", "photos/k02.jpg"}
    assert {a.key for a in ledger(sqlite_sf)} == {"photos/k01.png", "photos/k02.jpg"}
    assert rows["photos/k01.png"].dest_url == f"{s3_bucket}/photos/k01.png.cxa"
    second = run_job(src=root, dst=root, source_url=root.url, dest_url=None, codec=codec, opts=accept_opts(),
                     session_factory=sqlite_sf)
    rows2 = by_key(results(sqlite_sf, second.job_id))
    assert (second.skipped, second.accepted) == (2, 1)
    assert {k: r.status for k, r in rows2.items()} == {
        "photos/k01.png": "skipped", "photos/k02.jpg": "skipped", "gray/k03-gray.png": "accepted"}
    assert len(ledger(sqlite_sf)) == 3
    root.close()
    sub.close()


def test_a_container_of_another_original_is_never_overwritten(
        s3_settings: Any, s3_client: Any, sqlite_sf: Any, codec: Codec) -> None:
    """Two source buckets with the same key archived into one destination: the second job must
    not overwrite (and so destroy) the first one's archive, whose original is already deleted."""
    names = [f"src-{uuid.uuid4().hex[:12]}" for _ in range(2)] + [f"arch-{uuid.uuid4().hex[:12]}"]
    for n in names:
        s3_client.create_bucket(Bucket=n)
    a, b, dst = (S3Store(f"s3://{n}", s3_settings.s3) for n in names)
    populate(a, {"x/shot.png": GOOD["photos/k01.png"]})
    populate(b, {"x/shot.png": GOOD["photos/k02.jpg"]})
    opts = accept_opts(replace=True)
    first = run_job(src=a, dst=dst, source_url=a.url, dest_url=dst.url, codec=codec, opts=opts,
                    session_factory=sqlite_sf)
    assert (first.accepted, first.deleted) == (1, 1) and listing(a) == {}
    archived = dst.get("x/shot.png.cxa")
    second = run_job(src=b, dst=dst, source_url=b.url, dest_url=dst.url, codec=codec, opts=opts,
                     session_factory=sqlite_sf)
    assert (second.failed, second.deleted) == (1, 0)
    (row,) = results(sqlite_sf, second.job_id)
    assert row.reason_code == "dest_conflict" and "another original" in row.reason
    assert dst.get("x/shot.png.cxa") == archived  # the first archive is intact ...
    check_container(results(sqlite_sf, first.job_id)[0], GOOD["photos/k01.png"], dst, opts)
    assert b.get("x/shot.png") == GOOD["photos/k02.jpg"]  # ... and the second original was kept
    # a rerun of the first source's object (same original) may still replace its own container
    populate(a, {"x/shot.png": GOOD["photos/k01.png"]})
    s = a.head("x/shot.png")
    out = pipeline.process_object(s, a, dst, codec, accept_opts())
    assert out.status == "accepted", (out.reason_code, out.reason)
    # and anything this system did not write is never overwritten either
    dst.put("y/other.png.cxa", b"somebody else's file")
    populate(a, {"y/other.png": GOOD["photos/k01.png"]})
    out = pipeline.process_object(a.head("y/other.png"), a, dst, codec, accept_opts())
    assert (out.status, out.reason_code) == ("failed", "dest_conflict")
    assert dst.get("y/other.png.cxa") == b"somebody else's file"
    for st in (a, b, dst):
        st.close()


# --------------------------------------------------------------------- 2. crash and rerun (CLI)
def cli_env(s3_endpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    if s3_endpoint:
        env.update(ARCHIVER_S3__ENDPOINT_URL=s3_endpoint, ARCHIVER_S3__PATH_STYLE="true",
                   ARCHIVER_S3__ACCESS_KEY_ID="testing", ARCHIVER_S3__SECRET_ACCESS_KEY="testing",
                   ARCHIVER_S3__MAX_ATTEMPTS="2")
    return env


def crash_corpus() -> dict[str, bytes]:
    objs = {f"shots/{i:02d}-k{n:02d}.png": _enc(_crop(n, 160), "PNG") for i, n in enumerate((11, 12, 13, 14, 15, 16, 17, 18))}
    objs["shots/03b-notes.jpg"] = ALL["bad/notes.jpg"]
    objs["shots/05b-cmyk.jpg"] = ALL["bad/cmyk.jpg"]
    objs["shots/07b-empty.jpg"] = b""
    return objs


def test_sigkill_mid_job_then_rerun_loses_nothing(s3_server: str, s3_settings: Any, s3_bucket: str, db_url: str,
                                                  tmp_path: Path) -> None:
    objects = crash_corpus()
    st = S3Store(s3_bucket, s3_settings.s3)
    populate(st, objects)
    upgrade(db_url)
    factory = session_factory(db_url)
    cmd = [str(ARCHIVER_BIN), "recompress", s3_bucket, "--db", db_url, "--replace", "--min-psnr", str(ACCEPT_PSNR),
           "--min-saving", "0", "--device", "cpu", "--workers", "2"]
    env = cli_env(s3_server)
    env["ARCHIVER_MAX_PIXELS"] = str(MAX_PIXELS)
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while True:
                with factory() as s:
                    n = s.scalar(select(func.count()).select_from(Result).where(Result.status == "accepted"))
                if n:
                    break
                assert proc.poll() is None, f"CLI ended before it was killed:\n{(tmp_path / 'first.log').read_text()}"
                assert time.monotonic() < deadline, "no accepted row within the deadline"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL

    def invariant() -> None:
        """For every original: the original, or a verified container recorded in the ledger."""
        present = listing(st)
        led = {a.key: a for a in ledger(factory)}
        for key in objects:
            if key in present:
                continue
            a = led[key]
            data = st.get(key + ".cxa")
            assert hashlib.sha256(data).hexdigest() == a.compressed_sha256 and len(data) == a.compressed_bytes

    invariant()
    (killed,) = jobs(factory)
    assert killed.status == "running"  # nobody got to mark it
    done_before = {r.key: (r.attempts, r.t_encode) for r in results(factory) if r.status == "accepted"}
    assert 1 <= len(done_before) < 8

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "summary" in rerun.stdout
    invariant()

    (job,) = jobs(factory)  # the rerun continued the killed job
    assert job.id == killed.id and job.status == "finished"
    rows = results(factory)
    rows_by_key = by_key(rows)
    assert set(rows_by_key) == set(objects) and len(rows) == len(objects)
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(ArchivedObject)) == 8
    led = {a.key: a for a in ledger(factory)}
    present = listing(st)
    for key, data in objects.items():
        r = rows_by_key[key]
        assert r.status in FINAL, (key, r.status, r.reason)
        if r.status == "rejected":
            assert r.reason_code and r.reason and key in present and not r.original_deleted
            continue
        assert key not in present and r.original_deleted and led[key].original_deleted
        check_container(r, data, st, accept_opts())
        assert led[key].compressed_sha256 == r.compressed_sha256
        if key in done_before:
            assert (r.attempts, r.t_encode) == done_before[key]  # not re-encoded
    assert {rows_by_key[k].reason_code for k in ("shots/03b-notes.jpg", "shots/05b-cmyk.jpg", "shots/07b-empty.jpg")} \
        == {"not_an_image", "unsupported_mode", "empty"}
    factory.kw["bind"].dispose()
    st.close()


# ----------------------------------------------------------------------------------- 3. restore
def test_restore_decodes_every_container_and_reports_bad_ones(tmp_path: Path, sqlite_sf: Any, codec: Codec) -> None:
    st = LocalStore(tmp_path / "bucket", create=True)
    populate(st, GOOD)
    opts = accept_opts()
    run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=opts, session_factory=sqlite_sf)
    good_cxa = st.get("photos/k01.png.cxa")
    st.put("broken/truncated.png.cxa", good_cxa[: len(good_cxa) // 2])
    st.put("broken/text.jpg.cxa", b"not a container at all")
    decoded = {k: decode_container(st.get(k + ".cxa"), runtime_for(), "cpu") for k in GOOD}

    out = LocalStore(tmp_path / "restored", create=True)
    items = list(restore_all(st, out, codecs=runtime_for(), fmt="png", device="cpu"))
    assert len(items) == len(GOOD) + 2
    bad = {i.key: i for i in items if not i.ok}
    assert set(bad) == {"broken/truncated.png.cxa", "broken/text.jpg.cxa"}
    assert all(i.error and i.out_key is None for i in bad.values())
    for key in GOOD:
        stem = key.rsplit(".", 1)[0]
        with Image.open(io.BytesIO(out.get(stem + ".png"))) as im:
            im.load()
            dec = decoded[key]
            assert im.format == "PNG" and im.size == (dec.meta.width, dec.meta.height)
            arr = np.asarray(im.convert("RGB"))
            assert np.array_equal(arr, dec.rgb)
            if dec.alpha is not None:
                assert np.array_equal(np.asarray(im)[:, :, 3], dec.alpha)

    # the command: --format original keeps the original names and formats; failures -> exit 1
    to = tmp_path / "cli-restored"
    proc = subprocess.run([str(ARCHIVER_BIN), "restore", str(tmp_path / "bucket"), "--to", str(to),
                           "--format", "original", "--device", "cpu"],
                          cwd=tmp_path, env=cli_env(), check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "broken/truncated.png.cxa" in text and "broken/text.jpg.cxa" in text
    assert f"restored {len(GOOD)} image(s)" in text and "2 failed" in text
    for key in GOOD:
        data = (to / key).read_bytes()
        assert sniff(data) == sniff(GOOD[key])
        assert Image.open(io.BytesIO(data)).size == (decoded[key].meta.width, decoded[key].meta.height)

    # restoring into the archive's own bucket, where the originals still exist: nothing is
    # replaced by a lossy decode unless asked; a second run into --to skips what is there
    again = list(restore_all(st, st, codecs=runtime_for(), fmt="original", device="cpu"))
    assert {i.key for i in again if i.skipped} == {k + ".cxa" for k in GOOD}
    assert all(st.get(k) == v for k, v in GOOD.items())
    first_png = out.get("photos/k01.png")
    out.put("photos/k01.png", b"a file that was there before")
    items = {i.key: i for i in restore_all(st, out, codecs=runtime_for(), fmt="png", device="cpu")}
    assert items["photos/k01.png.cxa"].skipped and out.get("photos/k01.png") == b"a file that was there before"
    items = {i.key: i for i in restore_all(st, out, codecs=runtime_for(), fmt="png", device="cpu", overwrite=True)}
    assert not items["photos/k01.png.cxa"].skipped and out.get("photos/k01.png") == first_png


# --------------------------------------------------------------------------------- 4. the demo
def test_recompress_without_argument_runs_the_demo(tmp_path: Path) -> None:
    env = {**cli_env(), "ARCHIVER_LOG_PROGRESS_EVERY": "0.000001"}  # a plain progress line per object
    env.pop("COLUMNS")  # as under cron: no terminal and no width given
    proc = subprocess.run([str(ARCHIVER_BIN), "recompress", "--device", "cpu"], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary" in proc.stdout and "objects seen" in proc.stdout
    # stderr is a pipe, as under cron or systemd: the bar does not animate, plain lines say how far
    assert "recompress: 7 objects | ok " in proc.stderr and " obj/s | " in proc.stderr, proc.stderr
    assert re.search(r"7/\? ok \d+ rej \d+ .* obj/s \d+:\d\d:\d\d", proc.stderr), proc.stderr  # the bar's last frame, whole
    # A newcomer's first run: no third-party warnings, and messages stay on one line in a log
    # (rich would otherwise break this one, with its long temporary path, at 80 columns).
    assert "Warning" not in proc.stderr, proc.stderr
    assert f"running on the shipped samples in {tmp_path / 'archive-demo' / 'source'}" in proc.stderr, proc.stderr
    samples = sorted(p.name for p in (Path(pipeline.__file__).parent / "samples").iterdir())
    src = tmp_path / "archive-demo" / "source"
    assert src.is_dir()
    db = tmp_path / "archiver.sqlite"
    assert db.is_file()
    factory = session_factory(f"sqlite:///{db}")
    rows = by_key(results(factory))
    assert set(rows) == set(samples)
    assert (rows["not-an-image.jpg"].status, rows["not-an-image.jpg"].reason_code) == ("rejected", "not_an_image")
    for r in rows.values():
        assert r.status in FINAL and (r.status == "accepted" or r.reason_code)
        if r.status == "accepted":  # if it is accepted it must be real
            assert (src / (r.key + ".cxa")).is_file()
    # The shipped default earns its place at the default 40 dB floor: every shipped photo is
    # archived, and the archive is less than half the originals' size (compact-v5: 452 KiB ->
    # 101 KiB on the four photos before the JPEGs; compact-v4 accepted none of them). Under the
    # default policy `best` a photo is either verified at >= 40 dB (lossy) or stored as a JPEG XL
    # that rebuilds the original JPEG byte for byte (lossless), whichever is smaller: for each JPEG
    # the lossless size is computed here and the stored tier must be the smaller one (the q75 JPEG
    # went lossless until compact-v15 and container version 4: lossy is 214 bytes smaller with compact-v18).
    photos = [r for k, r in rows.items() if k != "not-an-image.jpg"]
    assert [r.status for r in photos] == ["accepted"] * 6, [(r.key, r.status, r.reason_code) for r in photos]
    assert all(r.psnr >= 40.0 for r in photos if r.tier == "lossy")
    assert all(r.psnr is None and r.content_type == "image/jpeg" for r in photos if r.tier == "lossless")
    from archiver.lossless import transcode

    for r in photos:
        if r.content_type == "image/jpeg":
            jxl = len(transcode((src / r.key).read_bytes()).data)
            assert r.compressed_bytes == jxl if r.tier == "lossless" else r.compressed_bytes < jxl, (r.key, r.tier, jxl)
    assert {r.tier for r in photos if r.content_type == "image/png"} == {"lossy"}
    assert sum(r.compressed_bytes for r in photos) < 0.5 * sum(r.original_bytes for r in photos)
    assert "saved" in proc.stdout
    factory.kw["bind"].dispose()


def test_recompress_exits_1_when_objects_fail_but_0_for_rejections(tmp_path: Path) -> None:
    """Schedulers go by the exit status: rejected objects are policy verdicts (0), failed ones
    (here: a foreign file where a container would go) need attention (1)."""
    src = tmp_path / "src"
    populate(LocalStore(src, create=True), {"a.png": GOOD["photos/k01.png"], "notes.jpg": ALL["bad/notes.jpg"]})
    env = {**cli_env(), "ARCHIVER_TORCH_THREADS": "1"}
    args = [str(ARCHIVER_BIN), "recompress", str(src), "--dest", str(tmp_path / "dst"), "--device", "cpu",
            "--min-psnr", "1", "--min-saving", "0", "--db", f"sqlite:///{tmp_path / 'a.sqlite'}"]
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "a.png.cxa").write_bytes(b"not ours")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 object(s) failed" in proc.stdout + proc.stderr
    assert (tmp_path / "dst" / "a.png.cxa").read_bytes() == b"not ours"
    (tmp_path / "dst" / "a.png.cxa").unlink()
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # accepted + one rejected non-image
    assert (tmp_path / "dst" / "a.png.cxa").read_bytes()[:4] != b"not "


def test_two_codec_slots_archive_the_same_as_one(tmp_path: Path, sqlite_sf: Any, codec: Codec) -> None:
    """``workers.codec_slots = 2`` (two images in the codec at once, for GPUs) gives the same
    containers as one at a time: same bytes, same verified PSNR."""
    objects = {k: GOOD[k] for k in ("photos/k01.png", "photos/k02.jpg", "gray/k03-gray.png", "alpha/k04-rgba.png")}
    sizes = {}
    for slots in (1, 2):
        st = LocalStore(tmp_path / f"slots{slots}", create=True)
        populate(st, objects)
        summary = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(),
                          session_factory=sqlite_sf, workers=4, codec_slots=slots)
        assert summary.accepted == len(objects)
        rows = by_key(results(sqlite_sf, summary.job_id))
        for key, data in objects.items():
            check_container(rows[key], data, st, accept_opts())
        sizes[slots] = {k: (r.compressed_sha256, r.psnr) for k, r in rows.items()}
    assert sizes[1] == sizes[2]
