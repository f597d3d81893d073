"""The bit-exact tier for JPEG originals (issue 26), on real JPEG files made from Kodak photos.

* :mod:`archiver.lossless` alone: every kind of JPEG either transcodes to a JPEG XL file that
  rebuilds it byte for byte, or is refused with its own reason code;
* the pipeline under ``--policy lossless --replace``: originals deleted only against a verified
  archive, restored byte for byte, the ledger's saving >= 10 %; bad JPEGs kept with their reason;
* ``--policy best``: per object no more bytes than the smaller of the two tiers;
* the pilot's JSON (a ``lossless`` row, ``tiers``, ``by_format``), the report's breakdowns, the
  CLI's ``decode`` / ``info`` / ``restore``, the retrieve task's function and migration 0004.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import MetaData, Table, insert, select

from archiver.cli import main
from archiver.db import session_factory, upgrade
from archiver.db.models import ArchivedObject, Result, utcnow
from archiver.lossless import (JXL_CONTAINER_SIGNATURE, LosslessRefused, Refusal, is_jpegxl, probe_jpeg, reconstruct,
                               transcode)
from archiver.pipeline import PipelineOptions, _verify_stored, run_job
from archiver.errors import StorageError
from archiver.restore import restore_all, restore_image
from archiver.storage.local import LocalStore
from runtimes import shared_codec
from shared_paths import KODAK

MODEL = "compact-v6"
CROP = (0, 0, 384, 256)  # the demo samples' size: big enough that JPEG XL's fixed overhead does not dominate


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def photo(n: int, mode: str = "RGB", crop: tuple[int, int, int, int] | None = CROP) -> Image.Image:
    im = Image.open(KODAK / f"kodim{n:02d}.png").convert(mode)
    return im.crop(crop) if crop else im


def jpeg(im: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def good_jpegs() -> dict[str, bytes]:
    """q75 and q90 photos, 4:2:0 as cameras and the web save them."""
    return {"q75/k01.jpg": jpeg(photo(1), quality=75), "q75/k03.jpg": jpeg(photo(3), quality=75),
            "q90/k02.jpg": jpeg(photo(2), quality=90), "q90/k04.jpg": jpeg(photo(4), quality=90)}


def bad_jpegs() -> dict[str, tuple[bytes, str | None]]:
    """The awkward kinds: (bytes, expected refusal or None when it must transcode bit-exactly)."""
    base = jpeg(photo(5), quality=80)
    sof = base.index(b"\xff\xc0")
    arith = base[:sof] + b"\xff\xc9" + base[sof + 2:]  # the frame says arithmetic coding (SOF9)
    return {
        "progressive.jpg": (jpeg(photo(6), quality=85, progressive=True), None),
        "restart.jpg": (jpeg(photo(7), quality=85, restart_marker_blocks=4), None),
        "gray.jpg": (jpeg(photo(8, "L"), quality=85), None),
        "trailing.jpg": (base + b"\x00TRAILING GARBAGE" * 8, None),  # kept byte for byte by libjxl
        "cmyk.jpg": (jpeg(photo(9, "CMYK"), quality=85), Refusal.COMPONENTS),
        "arithmetic.jpg": (arith, Refusal.ARITHMETIC),
        "truncated.jpg": (base[: len(base) // 2], Refusal.TRUNCATED),
    }


# ---- the library -------------------------------------------------------------------------------

def test_good_jpegs_transcode_bit_exactly_and_smaller() -> None:
    for name, data in {**good_jpegs(), "full-q75.jpg": jpeg(photo(1, crop=None), quality=75)}.items():
        t = transcode(data)
        assert t.data.startswith(JXL_CONTAINER_SIGNATURE) and is_jpegxl(t.data), name
        assert sha(reconstruct(t.data)) == sha(data) == t.original_sha256, name
        assert len(t.data) < 0.92 * len(data), (name, len(t.data), len(data))  # 13-15 % on these (BENCHMARKS)


@pytest.mark.parametrize("name", sorted(bad_jpegs()))
def test_awkward_jpegs_transcode_bit_exactly_or_are_refused_with_their_reason(name: str) -> None:
    data, refusal = bad_jpegs()[name]
    if refusal is None:
        assert sha(reconstruct(transcode(data).data)) == sha(data)
    else:
        with pytest.raises(LosslessRefused) as e:
            transcode(data)
        assert e.value.code == refusal


def test_probe_reads_the_markers() -> None:
    prog = probe_jpeg(bad_jpegs()["progressive.jpg"][0])
    assert (prog.width, prog.height, prog.components, prog.progressive) == (384, 256, 3, True)
    assert probe_jpeg(bad_jpegs()["restart.jpg"][0]).restart_interval == 4
    assert probe_jpeg(bad_jpegs()["trailing.jpg"][0]).trailing_bytes == len(b"\x00TRAILING GARBAGE" * 8)
    assert probe_jpeg(bad_jpegs()["gray.jpg"][0]).components == 1
    with pytest.raises(LosslessRefused) as e:
        probe_jpeg(b"\x89PNG\r\n\x1a\n")
    assert e.value.code == Refusal.NOT_JPEG
    assert not is_jpegxl(b"\x89CXA" + b"\x00" * 12) and is_jpegxl(b"\xff\x0a" + b"\x00" * 10)


def test_a_stored_copy_that_does_not_rebuild_the_original_is_refused(tmp_path: Path) -> None:
    """The check before any delete: the stored JPEG XL must rebuild the original's sha256."""
    st = LocalStore(tmp_path / "s", create=True)
    a, b = good_jpegs()["q75/k01.jpg"], good_jpegs()["q75/k03.jpg"]
    jxl = transcode(a).data
    st.put("k.jpg.cxa", jxl, metadata={}, content_type="image/jxl")
    _verify_stored(st, "k.jpg.cxa", len(jxl), sha(jxl), 1 << 20, rebuilds=sha(a))
    with pytest.raises(StorageError) as e:
        _verify_stored(st, "k.jpg.cxa", len(jxl), sha(jxl), 1 << 20, rebuilds=sha(b))
    assert e.value.code == "lossless_mismatch"


# ---- the pipeline --------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sf(tmp_path: Path) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    factory = session_factory(url)
    yield factory
    factory.kw["bind"].dispose()


def populate(st: LocalStore, objects: dict[str, bytes]) -> None:
    for k, v in objects.items():
        st.put(k, v, metadata={}, content_type="application/octet-stream")


def rows(sf: Any, job_id: int) -> dict[str, Result]:
    with sf() as s:
        return {r.key: r for r in s.execute(select(Result).where(Result.job_id == job_id)).scalars()}


def test_lossless_replace_then_restore_gives_back_every_original_byte_for_byte(tmp_path: Path, sf: Any) -> None:
    """The issue's first done-when, through the library: q75 + q90 JPEGs with --policy lossless
    --replace; the awkward ones in the same folder either go the same way or are kept with their
    reason; a PNG is `not_jpeg`; restore --format original gives back every sha256; ledger >= 10 %."""
    good = good_jpegs()
    bad = {f"bad/{k}": v for k, v in bad_jpegs().items()}
    png = io.BytesIO()
    photo(10).save(png, "PNG")
    originals = {**good, **{k: v for k, (v, _) in bad.items()}, "other/k10.png": png.getvalue()}
    st = LocalStore(tmp_path / "bucket", create=True)
    populate(st, originals)
    codec = shared_codec(MODEL, "cpu")
    s = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, session_factory=sf,
                opts=PipelineOptions(policy="lossless", replace=True, min_saving=0.0, max_pixels=10_000_000))
    got = rows(sf, s.job_id)
    for k in originals:
        r = got[k]
        refusal = bad[k][1] if k in bad else ("not_jpeg" if k.endswith(".png") else None)
        if refusal is None:
            assert (r.status, r.tier, r.original_deleted) == ("accepted", "lossless", True), (k, r.reason)
            assert r.psnr is None and r.ms_ssim == 1.0
            assert st.head(k) is None and is_jpegxl(st.get(k + ".cxa", max_bytes=1 << 24))
        else:
            assert (r.status, r.reason_code, r.original_deleted) == ("rejected", refusal, False), (k, r.reason)
            assert st.get(k, max_bytes=1 << 24) == originals[k]  # never deleted, never touched
            assert st.head(k + ".cxa") is None
    with sf() as ss:
        led = list(ss.execute(select(ArchivedObject)).scalars())
    assert {a.tier for a in led} == {"lossless"} and all(a.original_sha256 for a in led)
    jpeg_led = [a for a in led if a.key in good]
    saving = 1 - sum(a.compressed_bytes for a in jpeg_led) / sum(a.original_bytes for a in jpeg_led)
    assert len(jpeg_led) == 4 and saving >= 0.10, saving

    out = LocalStore(tmp_path / "restored", create=True)
    items = list(restore_all(st, out, codecs=None, fmt="original"))  # no neural codec is needed for these
    assert all(i.ok for i in items), [i.error for i in items if not i.ok]
    for a in led:
        assert sha(out.get(a.key, max_bytes=1 << 24)) == sha(originals[a.key]) == a.original_sha256


def test_best_stores_no_more_than_the_smaller_tier_per_object(tmp_path: Path, sf: Any) -> None:
    """The issue's second done-when: per object, what `best` stores is no larger than the lossless
    transcode and no larger than the neural stream that `lossy` verifies at the same floor."""
    codec = shared_codec(MODEL, "cpu")
    originals = good_jpegs()
    st = LocalStore(tmp_path / "b", create=True)
    populate(st, originals)
    opts = dict(min_psnr=40.0, min_saving=0.0, max_pixels=10_000_000, dry_run=True)
    lossy = rows(sf, run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, session_factory=sf,
                             opts=PipelineOptions(policy="lossy", **opts)).job_id)
    best = rows(sf, run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, session_factory=sf,
                            opts=PipelineOptions(policy="best", **opts), new_job=True).job_id)
    tiers = set()
    for k, data in originals.items():
        lossless = len(transcode(data).data)
        neural = lossy[k].compressed_bytes if lossy[k].status == "accepted" else None
        b = best[k]
        assert b.status == "accepted" and b.compressed_bytes <= min(x for x in (lossless, neural) if x), (k, b.reason)
        assert b.compressed_bytes == (lossless if b.tier == "lossless" else neural)
        tiers.add(b.tier)
    assert tiers == {"lossless", "lossy"}  # q75 goes lossless, q90 neural at this floor (BENCHMARKS)


def test_best_margin_keeps_the_exact_copy_when_it_is_close(tmp_path: Path, sf: Any) -> None:
    """With a margin the lossless tier wins while within it of the neural stream; at 0 it only
    wins when it is the smaller one (checked above)."""
    codec = shared_codec(MODEL, "cpu")
    data = good_jpegs()["q90/k02.jpg"]
    st = LocalStore(tmp_path / "m", create=True)
    populate(st, {"k.jpg": data})
    base = dict(min_psnr=40.0, min_saving=0.0, max_pixels=10_000_000, dry_run=True, policy="best")
    r0 = rows(sf, run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, session_factory=sf,
                          opts=PipelineOptions(**base)).job_id)["k.jpg"]
    assert r0.tier == "lossy"  # a q90 JPEG: the neural stream is clearly smaller at 40 dB
    r1 = rows(sf, run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, session_factory=sf,
                          opts=PipelineOptions(**base, lossless_margin=0.99), new_job=True).job_id)["k.jpg"]
    assert r1.tier == "lossless" and r1.compressed_bytes == len(transcode(data).data) > r0.compressed_bytes


def test_pilot_json_has_a_lossless_row_tiers_and_a_breakdown_by_format(tmp_path: Path, sf: Any) -> None:
    from archiver.report import Pricing, run_pilot

    codec = shared_codec(MODEL, "cpu")
    st = LocalStore(tmp_path / "p", create=True)
    png = io.BytesIO()
    photo(10).save(png, "PNG")
    objs = {"a.jpg": good_jpegs()["q75/k01.jpg"], "b.jpg": bad_jpegs()["cmyk.jpg"][0], "c.png": png.getvalue()}
    populate(st, objs)
    p = run_pilot(src=st, source_url=st.url, codec=codec, session_factory=sf, sample=10, pricing=Pricing(),
                  opts=PipelineOptions(min_psnr=36.0, min_saving=0.05, max_pixels=10_000_000, policy="best"))
    assert p["policy"] == "best"
    row = p["lossless"]
    assert (row["images"], row["jpeg_images"], row["reached"], row["accepted"]) == (3, 2, 1, 1)
    assert row["bytes_before"] == sum(len(v) for v in objs.values())
    assert row["saved_bytes"] == len(objs["a.jpg"]) - len(transcode(objs["a.jpg"]).data)
    assert row["refusals"] == {"jpeg_components": 1}
    fmts = {f["format"]: f for f in p["by_format"]}
    assert set(fmts) == {"JPEG", "PNG"} and fmts["JPEG"]["objects"] == 2 and fmts["PNG"]["objects"] == 1
    assert fmts["JPEG"]["bytes_before"] == len(objs["a.jpg"]) + len(objs["b.jpg"])
    assert sum(t["objects"] for t in p["tiers"].values()) == sum(f["accepted"] for f in fmts.values())
    assert json.loads(json.dumps(p)) == p  # the JSON form
    from archiver.report import render

    html = render(p, "html", pilot=True)
    assert 'id="chart-savings-by-format"' in html and 'id="table-by-format"' in html and "Lossless JPEG" in html


def test_cli_recompress_lossless_report_info_decode_and_retrieve(tmp_path: Path, monkeypatch: Any) -> None:
    """The front doors: `recompress --policy lossless --replace`, `report --format json`
    (by_format, by_tier), `info` (the tier), `decode` (the original bytes for a .jpg name, the
    pixels for .png), `restore`, and the restore function the retrieve task calls."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    originals = good_jpegs()
    for k, v in originals.items():
        (src / k.replace("/", "_")).write_bytes(v)
    db = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    runner = CliRunner()
    r = runner.invoke(main, ["recompress", str(src), "--policy", "lossless", "--replace", "--db", db])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in src.iterdir()) == sorted(k.replace("/", "_") + ".cxa" for k in originals)
    r = runner.invoke(main, ["report", "--db", db, "--format", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    (fmt,) = rep["by_format"]
    (tier,) = rep["by_tier"]
    assert fmt["format"] == "JPEG" and fmt["accepted"] == 4 and tier["tier"] == "lossless"
    assert tier["saved_pct"] >= 10.0
    one = src / "q75_k01.jpg.cxa"
    r = runner.invoke(main, ["info", str(one), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["tier"] == "lossless" and info["original_sha256"] == sha(originals["q75/k01.jpg"])
    assert (info["width"], info["height"]) == (384, 256)
    r = runner.invoke(main, ["decode", str(one), str(tmp_path / "back.jpg")])
    assert r.exit_code == 0, r.output
    assert sha((tmp_path / "back.jpg").read_bytes()) == sha(originals["q75/k01.jpg"])
    r = runner.invoke(main, ["decode", str(one), str(tmp_path / "back.png")])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png").convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(originals["q75/k01.jpg"])).convert("RGB")))
    r = runner.invoke(main, ["restore", str(src), "--to", str(tmp_path / "out"), "--format", "original"])
    assert r.exit_code == 0, r.output
    for k, v in originals.items():
        assert sha((tmp_path / "out" / k.replace("/", "_")).read_bytes()) == sha(v)
    body, used = restore_image(one.read_bytes(), None, "jpeg")  # what workers.tasks.retrieve calls
    assert used == "jpeg" and body == originals["q75/k01.jpg"]


def test_migration_0004_marks_earlier_archives_lossy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url, "0003")
    factory = session_factory(url)
    engine = factory.kw["bind"]
    md = MetaData()
    jobs, results, ledger = (Table(n, md, autoload_with=engine) for n in ("jobs", "results", "archived_objects"))
    now = utcnow()
    with engine.begin() as c:
        j = c.execute(insert(jobs).values(kind="recompress", source="s3://b", model_id="m", status="finished",
                                          settings={}, created_at=now, objects_listed=0, bytes_listed=0,
                                          objects_enqueued=0)).inserted_primary_key[0]
        ids = [c.execute(insert(results).values(job_id=j, bucket="b", key=k, model_id="m", original_bytes=10,
                                                compressed_bytes=5 if st == "accepted" else None,
                                                compressed_sha256="0" * 64 if st == "accepted" else None,
                                                status=st, original_deleted=False, attempts=1, created_at=now,
                                                updated_at=now)).inserted_primary_key[0]
               for k, st in (("a.jpg", "accepted"), ("b.jpg", "rejected"))]
        c.execute(insert(ledger).values(bucket="b", key="a.jpg", etag="e", model_id="m", result_id=ids[0],
                                        dest_url="s3://b/a.jpg.cxa", compressed_sha256="0" * 64, compressed_bytes=5,
                                        original_bytes=10, original_deleted=False, archived_at=now))
    upgrade(url)
    with factory() as s:
        assert {r.key: r.tier for r in s.execute(select(Result)).scalars()} == {"a.jpg": "lossy", "b.jpg": None}
        (a,) = s.execute(select(ArchivedObject)).scalars()
        assert a.tier == "lossy" and a.original_sha256 is None
    engine.dispose()
