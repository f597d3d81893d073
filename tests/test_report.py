"""ROI report and pilot, checked against a REAL pipeline run over a moto S3 bucket.

The bucket holds small Kodak crops (PNG under ``photos/a/`` and ``photos/b/``, JPEG under
``misc/``) plus a few objects that must be refused (text named ``.png``, a truncated PNG) and a
tiny flat PNG. ``run_job`` recompresses it for real (encode, decode the real bitstream, verify,
write containers back to the bucket, record rows). Every expected number in these tests is then
recomputed independently from the ``results`` rows and the bucket's objects, never hard-coded:
the model weights are still being trained, so sizes and PSNRs change from one build to the next.

The acceptance threshold is deliberately tiny (``MIN_PSNR``): the tests are about the report's
arithmetic, not the codec's quality, and every model state — including an untrained one — must
yield accepted objects, so that savings, percentiles and money are non-trivial.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import datetime as dt
import io
import json
import math
import re
import shutil
import subprocess
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageStat
from sqlalchemy import select

from archiver.codec.default import DEFAULT_MODEL
from archiver.report.core import ReasonCount, Report, Threshold
from shared_paths import KODAK  # noqa: E402

MIN_PSNR = 1.0
MIN_SAVING = 0.0
MODEL = DEFAULT_MODEL
CHART_IDS = ("chart-savings-by-prefix", "chart-psnr-histogram", "chart-bytes-by-content-type", "chart-savings-by-format",
             "chart-cumulative-savings")
KPI_IDS = ("kpi-bytes-saved", "kpi-saved-pct", "kpi-per-year", "kpi-payback")
TABLE_IDS = ("table-outcomes", "table-money", "table-content-types", "table-formats", "table-tiers", "table-prefixes",
             "table-distributions", "table-jobs")
N_PHOTOS, PILOT_SAMPLE, PILOT_SEED = 12, 8, 0
CHROMIUM = "/usr/bin/chromium"


def _kodak(i: int) -> Image.Image:
    path = KODAK / f"kodim{i:02d}.png"
    if not path.is_file():
        pytest.fail(f"test data missing: {path}")
    return Image.open(path).convert("RGB")


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo_groups() -> list[int]:
    """Which of the 4 distinct photos each of the 12 ``photos/`` keys holds (by listing position).

    The pilot samples 8 of the 12 with reservoir sampling and a fixed seed. Whatever the model,
    the interval must contain the real saving, so the bucket is built to make that hold by
    design rather than by luck: 4 distinct crops, 3 byte-identical copies each, placed so that
    the seeded sample holds exactly 2 copies of every crop. The sample's saved/original ratio is
    then the population's ratio, so the projection equals the real saving (up to float rounding)
    while the interval still has a real width (the 4 crops compress differently).
    """
    from archiver.report import reservoir_sample

    chosen, _, _ = reservoir_sample(range(N_PHOTOS), PILOT_SAMPLE, seed=PILOT_SEED, size=lambda _i: 0)
    picked, left = sorted(chosen), sorted(set(range(N_PHOTOS)) - set(chosen))
    group = [0] * N_PHOTOS
    for g in range(N_PHOTOS // 3):
        for pos in (picked[2 * g], picked[2 * g + 1], left[g]):
            group[pos] = g
    return group


def _photo_key(pos: int) -> str:
    # listing order = key order = position order; two sub-prefixes for the depth-2 grouping
    return f"photos/{'a' if pos < N_PHOTOS // 2 else 'b'}/img{pos:02d}.png"


def _corpus_objects() -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, declared content type). Crops are 64-96 px to keep the CPU codec quick."""
    objs: dict[str, tuple[bytes, str]] = {}
    crops = []
    for n, (img, s) in enumerate(((1, 64), (5, 96), (8, 80), (12, 72))):
        x, y = 60 + 50 * n, 40 + 30 * n
        crops.append(_encode(_kodak(img).crop((x, y, x + s, y + s)), "PNG"))
    for pos, g in enumerate(_photo_groups()):
        objs[_photo_key(pos)] = (crops[g], "image/png")
    for n in (13, 14):
        crop = _kodak(n).crop((100, 100, 180, 180))
        objs[f"misc/kodim{n}.jpg"] = (_encode(crop, "JPEG", quality=92), "image/jpeg")
    objs["misc/flat.png"] = (_encode(Image.new("RGB", (64, 64), (120, 130, 140)), "PNG"), "image/png")
    objs["misc/not-an-image.png"] = (b"this is a text file that pretends to be a PNG\n" * 20, "image/png")
    full = _encode(_kodak(15).crop((0, 0, 80, 80)), "PNG")
    objs["misc/truncated.png"] = (full[: len(full) // 2], "image/png")
    return objs


@pytest.fixture(scope="module")
def corpus(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Upload the corpus to a fresh bucket and run the real pipeline over it once."""
    from archiver.db import session_factory, upgrade
    from runtimes import shared_codec
    from archiver.pipeline import PipelineOptions, run_job
    from archiver.settings import Settings
    from archiver.storage import open_store
    from archiver.storage.s3 import make_client

    settings = Settings(s3={"endpoint_url": s3_server, "path_style": True, "max_attempts": 2,
                            "access_key_id": "testing", "secret_access_key": "testing"})
    client = make_client(settings.s3)
    bucket = f"report-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    objects = _corpus_objects()
    for key, (data, ctype) in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=ctype)
    db_url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'archiver.sqlite'}"
    upgrade(db_url)
    factory = session_factory(db_url)
    codec = shared_codec(MODEL, "cpu")
    src = open_store(f"s3://{bucket}", settings)
    opts = PipelineOptions(min_psnr=MIN_PSNR, min_saving=MIN_SAVING)
    summary = run_job(src=src, dst=src, source_url=f"s3://{bucket}", dest_url=None, codec=codec, opts=opts,
                      session_factory=factory, workers=2, new_job=True)
    ns = SimpleNamespace(settings=settings, client=client, bucket=bucket, objects=objects, db_url=db_url,
                         factory=factory, job_id=summary.job_id, summary=summary, codec=codec)
    yield ns
    client.close()


def _rows(corpus: Any, job_id: int | None = None) -> list[Any]:
    from archiver.db import Result

    with corpus.factory() as s:
        return list(s.execute(select(Result).where(Result.job_id == (job_id or corpus.job_id))).scalars())


def _report(corpus: Any, **kw: Any) -> Report:
    from archiver.report import Pricing, ReportFilters, build_report

    pricing = kw.pop("pricing", Pricing(0.023, 2.5))
    depth = kw.pop("prefix_depth", 1)
    kw.setdefault("job_ids", [corpus.job_id])
    with corpus.factory() as s:
        return build_report(s, ReportFilters(**kw), pricing, prefix_depth=depth)


def _listing(corpus: Any, prefix: str = "") -> dict[str, tuple[int, str]]:
    out = {}
    for page in corpus.client.get_paginator("list_objects_v2").paginate(Bucket=corpus.bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["Size"], o["ETag"])
    return out


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def _approx(a: Any, b: Any, path: str = "") -> None:
    """Recursive equality with float tolerance (sums may be added in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            _approx(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _approx(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _strip_volatile(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "generated_at"}


# ---------------------------------------------------------------------------------- the report
def test_report_numbers_match_rows_and_bucket(corpus: Any) -> None:
    rows = _rows(corpus)
    assert len(rows) == len(corpus.objects)
    rep = _report(corpus)

    # outcomes, straight from the rows
    status = Counter(r.status for r in rows)
    assert status["accepted"] >= 1, "the corpus must produce accepted objects (PNG crops, tiny PSNR floor)"
    assert status["rejected"] >= 2  # the text file and the truncated PNG can never be archived
    for st in ("accepted", "rejected", "failed", "skipped"):
        assert getattr(rep.counts, st) == status[st], st
    assert rep.counts.seen == len(rows)
    reasons = Counter((r.status, r.reason_code) for r in rows if r.status in ("rejected", "failed"))
    assert {(x.status, x.reason_code): x.count for x in rep.reasons} == dict(reasons)
    codes = {r.key: r.reason_code for r in rows}
    assert codes["misc/not-an-image.png"] == "not_an_image"

    # bytes: rows, and the bucket's own objects (originals and the containers written beside them)
    acc = [r for r in rows if r.status == "accepted"]
    before = sum(r.original_bytes for r in acc)
    after = sum(r.compressed_bytes for r in acc)
    listing = _listing(corpus)
    originals = {k: v for k, v in listing.items() if not k.endswith(".cxa")}
    assert set(originals) == set(corpus.objects)
    for r in rows:
        assert r.original_bytes == originals[r.key][0] == len(corpus.objects[r.key][0])
        if r.status == "accepted":
            assert listing[r.key + ".cxa"][0] == r.compressed_bytes
        else:
            assert r.key + ".cxa" not in listing
    assert rep.bytes.seen == sum(size for size, _ in originals.values())
    assert rep.bytes.before == before == sum(listing[r.key][0] for r in acc)
    assert rep.bytes.after == after == sum(listing[r.key + ".cxa"][0] for r in acc)
    assert rep.bytes.saved == before - after
    assert rep.bytes.saved_pct == pytest.approx(100.0 * (before - after) / before)
    assert rep.bytes.saved_pct_of_seen == pytest.approx(100.0 * (before - after) / rep.bytes.seen)

    # per content type and per prefix
    def groups(keyfn) -> dict[str, dict[str, Any]]:
        g: dict[str, dict[str, Any]] = defaultdict(lambda: Counter())
        for r in rows:
            c = g[keyfn(r)]
            c["objects"] += 1
            c["bytes_seen"] += r.original_bytes
            if r.status == "accepted":
                c["accepted"] += 1
                c["bytes_before"] += r.original_bytes
                c["bytes_after"] += r.compressed_bytes
        return g

    for name, keyfn in (("by_content_type", lambda r: r.content_type or "(unknown)"),
                        ("by_prefix", lambda r: r.key.split("/")[0] + "/")):
        expected = groups(keyfn)
        got = {g.name: g for g in getattr(rep, name)}
        assert set(got) == set(expected), name
        for k, e in expected.items():
            g = got[k]
            for f in ("objects", "accepted", "bytes_seen", "bytes_before", "bytes_after"):
                assert getattr(g, f) == e[f], (name, k, f)
            assert g.saved == e["bytes_before"] - e["bytes_after"]
            if e["bytes_before"]:
                assert g.saved_pct == pytest.approx(100.0 * g.saved / e["bytes_before"])
            else:
                assert g.saved_pct is None
    plain = rep.as_dict()  # in the JSON each group is named by its own key
    assert {"image/png", "image/jpeg"} <= {g["content_type"] for g in plain["by_content_type"]}
    assert {g["prefix"] for g in plain["by_prefix"]} == {"photos/", "misc/"}
    deep = _report(corpus, prefix_depth=2)
    assert {g.name for g in deep.by_prefix} == {"photos/a/", "photos/b/", "misc/"}
    assert {g.name: g.objects for g in deep.by_prefix}["photos/a/"] == sum(
        1 for r in rows if r.key.startswith("photos/a/"))

    # distributions over accepted objects
    for metric in ("psnr", "bpp"):
        values = np.array([getattr(r, metric) for r in acc], dtype=float)
        d = getattr(rep, metric)
        assert d.count == len(values)
        assert d.min == pytest.approx(values.min()) and d.max == pytest.approx(values.max())
        assert d.mean == pytest.approx(values.mean())
        for p in (5, 25, 50, 75, 95):
            assert getattr(d.percentiles, f"p{p}") == pytest.approx(np.percentile(values, p))
        assert sum(d.histogram.counts) == len(values)
        assert len(d.histogram.edges) == len(d.histogram.counts) + 1
        assert d.histogram.edges[0] <= values.min() and d.histogram.edges[-1] >= values.max()
    for r in acc:
        assert r.psnr >= MIN_PSNR
        assert r.bpp == pytest.approx(r.compressed_bytes * 8 / (r.width * r.height))

    # money: GB = 10^9 bytes; CPU-only run, so compute time = t_total of every processed row
    processed = [r for r in rows if r.status in ("accepted", "rejected", "failed")]
    assert all(r.device == "cpu" for r in processed)
    compute_s = sum(r.t_total for r in processed)
    assert compute_s > 0
    for price_gb, price_cpu in ((0.023, 0.10), (0.0125, 0.4)):
        from archiver.report import Pricing

        rp = rep if price_gb == 0.023 else _report(corpus, pricing=Pricing(price_gb, 99.0, price_cpu))
        per_month = (before - after) / 1e9 * price_gb
        cost = compute_s / 3600 * price_cpu  # a CPU-only run is priced by the CPU hour, never the GPU's
        m = rp.money
        assert m.saved_gb == pytest.approx((before - after) / 1e9)
        assert m.storage_saving_per_month == pytest.approx(per_month)
        assert m.storage_saving_per_year == pytest.approx(12 * per_month)
        assert m.compute_cost == pytest.approx(cost) == rp.compute.cost
        assert m.net_saving_first_year == pytest.approx(12 * per_month - cost)
        assert m.payback_months == pytest.approx(cost / per_month)
        assert rp.compute.basis == "t_total"
        assert rp.compute.cpu_seconds == pytest.approx(compute_s)
        assert rp.compute.gpu_seconds == 0
        assert rp.assumptions.gb_bytes == 10**9
        assert any("10^9" in n for n in rp.assumptions.notes)
        assert any("t_total" in n for n in rp.assumptions.notes)

    # models and thresholds come from jobs.settings
    assert rep.models == [MODEL]
    assert rep.thresholds == [Threshold(model_id=MODEL, min_psnr=MIN_PSNR, min_saving=MIN_SAVING)]
    assert [j.id for j in rep.jobs] == [corpus.job_id]

    # the timeline ends at the total saving and never decreases
    pts = [p.saved_cumulative for p in rep.timeline.points]
    assert pts[-1] == before - after and pts == sorted(pts)


def test_report_filters(corpus: Any) -> None:
    from archiver.report import parse_when

    rows = _rows(corpus)
    photos = [r for r in rows if r.key.startswith("photos/")]
    rep = _report(corpus, prefix="photos/")
    assert rep.counts.seen == len(photos)
    assert rep.bytes.before == sum(r.original_bytes for r in photos if r.status == "accepted")
    assert _report(corpus, prefix="photos%").counts.seen == 0  # LIKE wildcards are escaped
    assert _report(corpus, bucket=corpus.bucket).counts.seen == len(rows)
    assert _report(corpus, bucket="another-bucket").counts.seen == 0
    assert _report(corpus, model=MODEL).counts.seen == len(rows)
    assert _report(corpus, model="no-such-model").counts.seen == 0
    today = dt.datetime.now(dt.timezone.utc).date()
    yesterday, tomorrow = (today - dt.timedelta(days=1)).isoformat(), (today + dt.timedelta(days=1)).isoformat()
    assert _report(corpus, since=parse_when(tomorrow)).counts.seen == 0
    assert _report(corpus, until=parse_when(yesterday, end=True)).counts.seen == 0
    both = _report(corpus, since=parse_when(today.isoformat()), until=parse_when(today.isoformat(), end=True))
    assert both.counts.seen == len(rows)  # --until DATE includes that whole day
    empty = _report(corpus, model="no-such-model")
    assert empty.bytes.saved_pct is None and empty.money.payback_months == 0.0
    assert empty.psnr.count == 0 and empty.timeline.points == []
    with pytest.raises(Exception, match="no such job"):
        _report(corpus, job_ids=[987654])


def test_report_cli_formats(corpus: Any, tmp_path: Path) -> None:
    from archiver.cli.report_cmds import report
    from archiver.report import Pricing, render
    from archiver.settings import load_settings

    runner = CliRunner()
    base = ["--job", str(corpus.job_id), "--db", corpus.db_url]
    res = runner.invoke(report, [*base, "--format", "json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    st = load_settings()
    expected = _report(corpus, pricing=Pricing.from_settings(st))
    _approx(_strip_volatile(got), json.loads(json.dumps(_strip_volatile(expected.as_dict()))))
    # the JSON is a public format: the CLI prints exactly Report.as_dict(), keys in this order
    assert json.dumps(_strip_volatile(got)) == json.dumps(_strip_volatile(json.loads(render(expected, "json"))))
    assert list(got) == ["generated_at", "filters", "excluded_jobs", "assumptions", "jobs", "models", "thresholds",
                         "counts", "reasons", "bytes", "by_content_type", "by_prefix", "prefix_depth", "psnr", "bpp",
                         "timeline", "compute", "money", "by_format", "by_tier"]

    out = tmp_path / "r.csv"
    res = runner.invoke(report, [*base, "--format", "csv", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(out.open()))
    cell = {(r["section"], r["item"], r["metric"]): r["value"] for r in table}
    assert int(cell[("bytes", "", "saved")]) == expected.bytes.saved
    assert int(cell[("counts", "", "accepted")]) == expected.counts.accepted
    per_year = expected.money.storage_saving_per_year
    assert float(cell[("money", "", "storage_saving_per_year")]) == pytest.approx(per_year)
    photos_saved = next(g.saved for g in expected.by_prefix if g.name == "photos/")
    assert int(cell[("by_prefix", "photos/", "saved")]) == photos_saved
    assert float(cell[("psnr", "percentiles", "p50")]) == pytest.approx(expected.psnr.percentiles.p50)

    res = runner.invoke(report, [*base, "--price-per-gb-month", "1", "--gpu-price-per-hour", "0", "--format", "table"])
    assert res.exit_code == 0, res.output
    for text in ("Outcomes", "Savings and cost", "By content type", "By prefix", "payback", "10^9", "t_total"):
        assert text in res.output
    res = runner.invoke(report, [*base, "--format", "html"])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(report, ["--db", corpus.db_url, "--since", "not-a-date"])
    assert res.exit_code != 0


def test_report_on_postgresql_matches_sqlite(corpus: Any, pg_database: Any) -> None:
    """The SQL aggregates give the same report on PostgreSQL as on SQLite (rows copied over)."""
    from sqlalchemy import insert

    from archiver.db import Job, Result, session_factory, upgrade

    pg = pg_database()
    upgrade(pg)
    pg_factory = session_factory(pg)
    with corpus.factory() as src, pg_factory() as dst:
        for model in (Job, Result):
            cols = [c.name for c in model.__table__.columns]
            data = [dict(zip(cols, row)) for row in src.execute(select(*model.__table__.columns))]
            dst.execute(insert(model.__table__), data)
        dst.commit()
    from archiver.report import Pricing, ReportFilters, build_report

    for filters in (ReportFilters(job_ids=[corpus.job_id]), ReportFilters(prefix="photos/b/"), ReportFilters()):
        with corpus.factory() as s:
            a = build_report(s, filters, Pricing(), prefix_depth=2)
        with pg_factory() as s:
            b = build_report(s, filters, Pricing(), prefix_depth=2)
        _approx(_strip_volatile(a.as_dict()), _strip_volatile(b.as_dict()))
    pg_factory.kw["bind"].dispose()


def test_compute_basis_gpu_and_mixed(tmp_path: Path) -> None:
    """GPU rows are priced by their gpu_seconds, CPU rows by t_total, skipped rows not at all.

    (The pipeline run above is CPU-only; these rows stand in for a GPU worker's.)"""
    from archiver.db import Job, Result, session_factory, upgrade
    from archiver.report import Pricing, ReportFilters, build_report

    url = f"sqlite:///{tmp_path / 'gpu.sqlite'}"
    upgrade(url)
    factory = session_factory(url)
    gpu = "cuda:0 (NVIDIA H100 80GB HBM3)"
    spec = [("a.png", "accepted", gpu, 0.5, 9.0, 1000, 200), ("b.png", "rejected", gpu, 0.25, 9.0, 500, None),
            ("c.png", "skipped", gpu, None, 0.1, 700, None), ("d.png", "accepted", "cpu", 0.0, 4.0, 800, 100)]
    with factory() as s:
        job = Job(kind="recompress", source="s3://b", model_id=MODEL, status="finished",
                  settings={"options": {"min_psnr": 40.0, "min_saving": 0.1}})
        s.add(job)
        s.flush()
        for key, st, dev, gs, tt, ob, cb in spec:
            s.add(Result(job_id=job.id, bucket="b", key=key, model_id=MODEL, status=st, device=dev, gpu_seconds=gs,
                         t_total=tt, original_bytes=ob, compressed_bytes=cb, psnr=41.0 if cb else None))
        s.commit()
        only_gpu = build_report(s, ReportFilters(model=MODEL, prefix="a"), Pricing(0.023, 3.6, 0.2))
        everything = build_report(s, ReportFilters(), Pricing(0.023, 3.6, 0.2))
    assert only_gpu.compute.basis == "gpu_seconds"
    assert only_gpu.compute.cost == pytest.approx(0.5 / 3600 * 3.6)
    c = everything.compute
    assert c.basis == "mixed" and c.gpu_objects == 2 and c.cpu_objects == 1
    assert c.gpu_seconds == pytest.approx(0.75) and c.cpu_seconds == pytest.approx(4.0)
    assert c.cost == pytest.approx(0.75 / 3600 * 3.6 + 4.0 / 3600 * 0.2)
    from archiver.report import render

    assert "compute (mixed)  @ $3.6/GPU-h, $0.2/CPU-h" in render(everything, "table")
    assert everything.bytes.saved == (1000 - 200) + (800 - 100)
    assert everything.counts.skipped == 1
    assert everything.money.payback_months == pytest.approx(c.cost / (1500 / 1e9 * 0.023))
    factory.kw["bind"].dispose()


def test_an_object_archived_again_counts_once(db_url: str) -> None:
    """An original that changed and was archived again (or re-archived by a new model) is one
    object: only its latest accepted row is in the savings; the earlier one is "superseded" but
    its compute still counts. Dry runs and pilots never supersede. SQLite and PostgreSQL."""
    from archiver.db import Job, Result, session_factory, upgrade
    from archiver.report import Pricing, ReportFilters, build_report, render

    upgrade(db_url)
    factory = session_factory(db_url)
    with factory() as s:
        jobs = [Job(kind=kind, source="s3://b", model_id=MODEL, status="finished",
                    settings={"options": {"min_psnr": 40.0, "min_saving": 0.1, "dry_run": dry}})
                for kind, dry in (("recompress", False), ("scheduled", False), ("recompress", True), ("pilot", False))]
        s.add_all(jobs)
        s.flush()
        rows = [(0, "a.png", 1000, 200, 2.0), (0, "b.png", 500, 100, 1.0),  # first archive run
                (1, "a.png", 1100, 300, 3.0),  # a.png changed, archived again by the scheduled job
                (2, "b.png", 500, 50, 1.0), (3, "a.png", 1100, 10, 1.0)]  # a dry run and a pilot, later
        for j, key, ob, cb, tt in rows:
            s.add(Result(job_id=jobs[j].id, bucket="b", key=key, model_id=MODEL, status="accepted", device="cpu",
                         t_total=tt, original_bytes=ob, compressed_bytes=cb, psnr=41.0))
            s.flush()
        s.commit()
        everything = build_report(s, ReportFilters(), Pricing(0.023, 3.6))
        first_job = build_report(s, ReportFilters(job_ids=[jobs[0].id]), Pricing(0.023, 3.6))
    assert everything.bytes.saved == (1100 - 300) + (500 - 100)
    assert everything.bytes.seen == 1100 + 500
    c = everything.counts
    assert (c.seen, c.accepted, c.superseded) == (2, 2, 1)
    assert everything.psnr.count == 2 and everything.timeline.points[-1].saved_cumulative == 1200
    assert everything.compute.cpu_seconds == pytest.approx(2.0 + 1.0 + 3.0)  # spent, even if superseded
    assert first_job.bytes.saved == 400 and first_job.counts.superseded == 1
    assert "superseded (archived again later" in render(everything, "table")
    assert "superseded <b>1</b>" in render(everything, "html")
    factory.kw["bind"].dispose()


def test_outcomes_count_objects_not_the_jobs_that_met_them(db_url: str) -> None:
    """A scheduled run retries every object it could not archive, and a rerun skips what is
    archived: each object counts once, by the row that stands for it (its archive if it has one,
    else its latest row), while compute counts every row. A pilot's rows are its own snapshot."""
    from archiver.db import Job, Result, session_factory, upgrade
    from archiver.report import Pricing, ReportFilters, build_report, render

    upgrade(db_url)
    factory = session_factory(db_url)
    with factory() as s:
        jobs = [Job(kind=kind, source="s3://b", model_id=MODEL, status="finished",
                    settings={"options": {"min_psnr": 40.0, "min_saving": 0.1}})
                for kind in ("pilot", "recompress", "scheduled", "recompress")]
        s.add_all(jobs)
        s.flush()
        rows = [(0, "c.png", "rejected", "psnr_unreachable", 700, None),  # the pilot, first
                (1, "a.png", "rejected", "psnr_unreachable", 1000, None), (1, "b.png", "rejected", "psnr_unreachable", 500, None),
                (1, "c.png", "accepted", None, 700, 100),
                (2, "a.png", "rejected", "psnr_unreachable", 1000, None), (2, "b.png", "accepted", None, 500, 50),
                (3, "c.png", "skipped", "already_archived", 700, None), (3, "a.png", "failed", "storage_error", 1000, None)]
        for j, key, status, reason, ob, cb in rows:
            s.add(Result(job_id=jobs[j].id, bucket="b", key=key, model_id=MODEL, status=status, reason_code=reason,
                         device="cpu", t_total=1.0, original_bytes=ob, compressed_bytes=cb,
                         psnr=41.0 if status == "accepted" else None))
            s.flush()
        s.commit()
        everything = build_report(s, ReportFilters(), Pricing(0.023, 3.6))
        pilot = build_report(s, ReportFilters(job_ids=[jobs[0].id]), Pricing(0.023, 3.6))
    c = everything.counts
    assert (c.seen, c.accepted, c.rejected, c.failed, c.skipped, c.retried) == (3, 2, 0, 1, 0, 4)
    assert everything.reasons == [ReasonCount(status="failed", reason_code="storage_error", count=1)]
    assert everything.bytes.seen == 1000 + 500 + 700
    assert everything.bytes.saved == (500 - 50) + (700 - 100)
    assert everything.bytes.saved_pct_of_seen == pytest.approx(100 * 1050 / 2200)
    assert sum(g.objects for g in everything.by_prefix) == 3
    assert sum(g.objects for g in everything.by_content_type) == 3
    assert everything.compute.cpu_seconds == pytest.approx(6.0)  # every processed row was paid for
    assert "retried (met again later" in render(everything, "table")
    assert "retried <b>4</b>" in render(everything, "html")
    assert (pilot.counts.seen, pilot.counts.rejected, pilot.as_dict()["counts"].get("retried")) == (1, 1, None)
    factory.kw["bind"].dispose()


# ---------------------------------------------------------------------------------- HTML + Chromium
def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if exe is None:
        pytest.fail("chromium is not installed: apt-get update && apt-get install -y chromium (./test does this)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _data_png(html_text: str, ident: str) -> Image.Image:
    m = re.search(rf'<img id="{ident}"[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert m, f"no embedded PNG for #{ident}"
    img = Image.open(io.BytesIO(base64.b64decode(m.group(1))))
    img.load()
    return img.convert("RGB")


def _not_blank(img: Image.Image, min_std: float = 5.0) -> bool:
    return max(ImageStat.Stat(img.convert("RGB")).stddev) > min_std


def _no_external_refs(text: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I), "external URL in src/href"
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", text, re.I), "external URL in CSS"
    assert "<script" not in text.lower() and "<link" not in text.lower()


def test_html_report_renders_in_headless_chromium(corpus: Any, tmp_path: Path) -> None:
    from archiver.cli.report_cmds import report

    out = tmp_path / "report.html"
    res = CliRunner().invoke(report, ["--db", corpus.db_url, "--job", str(corpus.job_id), "--format", "html",
                                      "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    _no_external_refs(text)
    for ident in CHART_IDS:
        img = _data_png(text, ident)
        assert img.width >= 300 and img.height >= 150
        assert _not_blank(img), f"chart {ident} is blank"
        # each chart actually drew data: the bar/line colours are present, not just axes and text
        px = np.asarray(img).reshape(-1, 3).astype(int)
        blue = np.all(np.abs(px - (37, 99, 235)) < 30, axis=1).sum()
        green = np.all(np.abs(px - (22, 163, 74)) < 30, axis=1).sum()
        assert blue + green > 200, f"chart {ident} has no plotted data"

    # the DOM Chromium built: all ids present, still no external references
    dom = _chromium("--dump-dom", out.resolve().as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for ident in (*CHART_IDS, *KPI_IDS, *TABLE_IDS, "assumptions", "counts"):
        assert f'id="{ident}"' in dom.stdout, ident
    assert len(re.findall(r"<img\b", dom.stdout)) == len(CHART_IDS)
    _no_external_refs(dom.stdout)

    # the rendered page: a full-page screenshot with content, and the charts' colours in it
    shot = tmp_path / "report.png"
    res2 = _chromium(f"--screenshot={shot}", "--window-size=1280,3000", out.resolve().as_uri(),
                     profile=tmp_path / "profile-shot")
    assert res2.returncode == 0 and shot.is_file(), res2.stderr[-2000:]
    page = Image.open(shot).convert("RGB")
    assert page.size == (1280, 3000)
    assert _not_blank(page, 10.0)
    px = np.asarray(page).reshape(-1, 3).astype(int)
    assert np.all(np.abs(px - (37, 99, 235)) < 30, axis=1).sum() > 1000, "charts did not render in the page"
    top = page.crop((0, 0, 1280, 400))  # the KPI cards
    assert _not_blank(top, 10.0)


# ---------------------------------------------------------------------------------- pilot
def test_reservoir_sample_is_streaming_uniform_and_seeded() -> None:
    from archiver.report import reservoir_sample

    def stream(n: int):
        for i in range(n):
            yield SimpleNamespace(key=f"k{i:05d}", size=i + 1)

    sample, count, total = reservoir_sample(stream(10_000), 50, seed=7)
    assert count == 10_000 and total == 10_000 * 10_001 // 2 and len(sample) == 50
    assert len({o.key for o in sample}) == 50
    again, _, _ = reservoir_sample(stream(10_000), 50, seed=7)
    assert [o.key for o in again] == [o.key for o in sample]
    other, _, _ = reservoir_sample(stream(10_000), 50, seed=8)
    assert [o.key for o in other] != [o.key for o in sample]
    small, count, _ = reservoir_sample(stream(3), 10, seed=0)
    assert count == 3 and len(small) == 3  # fewer objects than asked: all of them
    # uniform: each of 20 items is picked with probability 5/20
    hits = Counter()
    for seed in range(2000):
        s, _, _ = reservoir_sample(stream(20), 5, seed=seed)
        hits.update(o.key for o in s)
    assert all(0.20 < hits[f"k{i:05d}"] / 2000 < 0.30 for i in range(20)), hits


def test_ratio_projection_math() -> None:
    from scipy.stats import t

    from archiver.report import ratio_projection

    x, y = [100, 200, 300, 400], [50, 120, 150, 260]
    N, X = 10, 2600
    p = ratio_projection(x, y, N, X)
    r = sum(y) / sum(x)
    d = [yi - r * xi for xi, yi in zip(x, y)]
    se = N * math.sqrt((1 - 4 / N) / 4 * sum(v * v for v in d) / 3)
    assert p["ratio"] == pytest.approx(r) and p["projected_saved"] == pytest.approx(r * X)
    assert p["standard_error"] == pytest.approx(se)
    assert p["ci_low"] == pytest.approx(r * X - t.ppf(0.975, 3) * se)
    assert p["ci_high"] == pytest.approx(r * X + t.ppf(0.975, 3) * se)
    census = ratio_projection(x, y, 4, sum(x))
    assert census["ci_low"] == census["ci_high"] == pytest.approx(sum(y))
    one = ratio_projection([100], [40], 10, 1000)
    assert one["ci_low"] == 0 and one["ci_high"] == 1000


def test_pilot_projection_contains_the_real_saving(corpus: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeded pilot of 8 of the 12 photos brackets what the full run really saved on them
    (the bucket is laid out so that this holds for any model: see ``_photo_groups``)."""
    from archiver.cli.report_cmds import pilot
    from archiver.db import Job, Result
    from archiver.report import Pricing, build_report, load_pilot, reservoir_sample
    from archiver.settings import load_settings

    monkeypatch.setenv("ARCHIVER_S3__ENDPOINT_URL", corpus.settings.s3.endpoint_url)
    monkeypatch.setenv("ARCHIVER_S3__PATH_STYLE", "true")
    before_listing = _listing(corpus)
    out = tmp_path / "pilot.json"
    res = CliRunner().invoke(pilot, [f"s3://{corpus.bucket}/photos", "--sample", str(PILOT_SAMPLE), "--seed",
                                     str(PILOT_SEED), "--min-psnr", str(MIN_PSNR), "--min-saving", str(MIN_SAVING),
                                     "--device", "cpu", "--model", MODEL, "--db", corpus.db_url, "--workers", "2",
                                     "--format", "json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    p = json.loads(out.read_text())

    # nothing written to or deleted from storage
    assert _listing(corpus) == before_listing

    # the population came from the same listing pass
    photos = {k: v for k, v in before_listing.items() if k.startswith("photos/") and not k.endswith(".cxa")}
    assert len(photos) == N_PHOTOS
    assert p["population_objects"] == N_PHOTOS
    assert p["population_bytes"] == sum(size for size, _ in photos.values())
    with corpus.factory() as s:
        job = s.get(Job, p["job_id"])
        assert (job.kind, job.sample_size, job.seed, job.status) == ("pilot", PILOT_SAMPLE, PILOT_SEED, "finished")
        assert job.objects_listed == N_PHOTOS and job.bytes_listed == p["population_bytes"]
        assert job.settings["options"]["dry_run"] is True
        prow = list(s.execute(select(Result).where(Result.job_id == job.id)).scalars())
    assert len(prow) == PILOT_SAMPLE and sorted(r.key for r in prow) == sorted(p["sample_keys"])
    assert all(r.dest_url is None for r in prow)

    # the in-memory verification is the real one: same bitstream sizes as the full run
    full = {r.key: r for r in _rows(corpus)}
    for r in prow:
        f = full[r.key]  # rows name objects by full key, whatever prefix the pilot listed
        assert (r.status, r.original_bytes, r.compressed_bytes, r.compressed_sha256) == (
            f.status, f.original_bytes, f.compressed_bytes, f.compressed_sha256)

    # the projection, recomputed here from the pilot rows
    x = [r.original_bytes for r in prow]
    y = [r.original_bytes - r.compressed_bytes if r.status == "accepted" else 0 for r in prow]
    ratio = sum(y) / sum(x)
    assert p["projected_saved"] == pytest.approx(ratio * p["population_bytes"])
    assert p["projected_saved_pct"] == pytest.approx(100 * ratio)
    real = sum(r.original_bytes - r.compressed_bytes for k, r in full.items()
               if k.startswith("photos/") and r.status == "accepted")
    assert real > 0
    assert p["ci_low"] < p["ci_high"]
    assert p["ci_low"] <= real <= p["ci_high"], (p["ci_low"], real, p["ci_high"])
    assert p["projected_saved"] == pytest.approx(real)  # balanced sample: see _photo_groups
    chosen, _, _ = reservoir_sample(range(N_PHOTOS), PILOT_SAMPLE, PILOT_SEED, size=lambda _i: 0)
    assert sorted(p["sample_keys"]) == sorted(_photo_key(i) for i in chosen)
    st = load_settings()
    pm = p["projected_money"]
    assert pm["storage_saving_per_month"] == pytest.approx(p["projected_saved"] / 1e9 * st.price_per_gb_month, rel=1e-6)
    assert pm["storage_saving_per_year"] == pytest.approx(12 * pm["storage_saving_per_month"])
    per_year = [m["storage_saving_per_year"] for m in (p["money_low"], pm, p["money_high"])]
    assert per_year == sorted(per_year)
    assert p["compute_basis"] == "t_total"  # a CPU pilot: its hours are priced as CPU hours
    assert pm["compute_cost"] == pytest.approx(p["projected_compute_seconds"] / 3600 * st.cpu_price_per_hour)

    # recorded, reproducible, and kept out of the default ROI report
    with corpus.factory() as s:
        again = load_pilot(s, p["job_id"], Pricing.from_settings(st))
        default = build_report(s)
    _approx(_strip_volatile(p), json.loads(json.dumps(_strip_volatile(again))))
    assert p["job_id"] in default.excluded_jobs
    assert default.counts.seen == len(full)

    # re-render the recorded pilot as HTML: self-contained, charts embedded
    html_out = tmp_path / "pilot.html"
    res = CliRunner().invoke(pilot, ["--job", str(p["job_id"]), "--db", corpus.db_url, "--format", "html",
                                     "--out", str(html_out)])
    assert res.exit_code == 0, res.output
    text = html_out.read_text()
    _no_external_refs(text)
    for ident in ("chart-pilot-projection", "chart-pilot-savings"):
        assert _not_blank(_data_png(text, ident))
    for ident in ("kpi-projected-saved", "kpi-projected-pct", "kpi-per-year", "kpi-payback", "table-pilot"):
        assert f'id="{ident}"' in text


# ---------------------------------------------------------------------------------- pilot: classical baselines
BASELINE_FLOOR = 36.0  # a real floor: every codec must search its quality to meet it
BASELINE_KEYS = ("reached", "bytes_after", "saved_bytes", "saving_pct", "seconds")
PILOT_KEYS_WITHOUT_BASELINES = {
    "generated_at", "job_id", "source", "model_id", "min_psnr", "min_saving", "seed", "sample_requested", "sample_size",
    "population_objects", "population_bytes", "sample_bytes", "sample_saved", "ratio", "projected_saved",
    "standard_error", "ci_low", "ci_high", "confidence", "projected_saved_pct", "ci_low_pct", "ci_high_pct", "method",
    "sample_counts", "sample_reasons", "sample_keys", "compute_basis", "sample_compute_seconds",
    "projected_compute_seconds", "projected_money", "money_low", "money_high", "psnr", "saving_pct_distribution",
    "assumptions",
    # the storage tiers (issue 26): the policy, the lossless row, the tiers stored and savings by format
    "policy", "lossless", "tiers", "by_format"}


def _run_pilot(corpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, *args: str,
               fmt: str = "json") -> dict[str, Any]:
    from archiver.cli.report_cmds import pilot

    monkeypatch.setenv("ARCHIVER_S3__ENDPOINT_URL", corpus.settings.s3.endpoint_url)
    monkeypatch.setenv("ARCHIVER_S3__PATH_STYLE", "true")
    out = tmp_path / f"pilot-{uuid.uuid4().hex[:6]}.json"
    res = CliRunner().invoke(pilot, [f"s3://{corpus.bucket}/{prefix}", "--device", "cpu", "--model", MODEL,
                                     "--db", corpus.db_url, "--workers", "2", "--min-saving", str(MIN_SAVING),
                                     *args, "--format", fmt, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_pilot_baselines_side_by_side(corpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The classical codecs on the 8 sampled photos: every chosen file is real (the library makes
    exactly those bytes at the recorded setting and decodes them at or above the floor), the
    totals and projections follow from the per-image results, the projection of every codec is
    what that codec really saves on all 12 photos (balanced sample, see ``_photo_groups``), and
    the task check's values are the function's on the real decodes. Then the HTML renders."""
    from archiver.baselines import CODEC_NAMES, baseline_codecs, smallest_at_floor
    from archiver.metrics import psnr
    from archiver.report import ratio_projection
    from task_checks import edge_f1

    p = _run_pilot(corpus, tmp_path, monkeypatch, "photos", "--sample", str(PILOT_SAMPLE), "--seed", str(PILOT_SEED),
                   "--min-psnr", str(BASELINE_FLOOR), "--baselines", "fast", "--task-check", "task_checks:edge_f1")
    assert set(p["baselines"]) == set(CODEC_NAMES)
    for name in CODEC_NAMES:
        for k in BASELINE_KEYS:
            assert k in p["baselines"][name], (name, k)
    assert p["baseline_run"]["mode"] == "fast" and p["baseline_run"]["versions"]["pillow"]
    assert p["baseline_run"]["versions"]["libjxl"] and "aom" in p["baseline_run"]["versions"]["avif_codecs"]
    assert p["baseline_run"]["codecs"]["avif"]["settings"]["subsampling"] == "4:4:4"
    assert p["baseline_run"]["codecs"]["jpeg"]["settings"]["subsampling"] == "4:4:4"

    codecs = {c.name: c for c in baseline_codecs("fast")}
    stored = {}
    with corpus.factory() as s:
        from archiver.db import Job

        stored = s.get(Job, p["job_id"]).settings["pilot"]["comparison"]["images"]
    assert sorted(stored) == sorted(p["sample_keys"])
    by_key = {i["key"]: i for i in p["per_image"]}
    for key in p["sample_keys"]:
        original = _pixels(corpus.objects[key][0])
        item = by_key[key]
        for name, codec in codecs.items():
            rec = stored[key]["codecs"][name]
            assert rec["reached"], (key, name, rec)  # small photo crops: every codec reaches 36 dB
            data = codec.encode(original, rec["quality"])
            assert len(data) == rec["bytes"] == item["bytes"][name]
            assert hashlib.sha256(data).hexdigest() == rec["sha256"]
            decoded = codec.decode(data)
            assert psnr(original, decoded) == pytest.approx(rec["psnr"]) and rec["psnr"] >= BASELINE_FLOOR
            assert item["saved"][name] == len(corpus.objects[key][0]) - len(data)  # min saving 0: every one counts
            assert item["task"][name] == pytest.approx(edge_f1(original, decoded))
        best = max(CODEC_NAMES, key=lambda n: item["saved"][n])
        assert item["saved"][best] == max(item["saved"][n] for n in CODEC_NAMES)
        assert item["advantage_bytes"] == item["saved"]["ours"] - item["saved"][best]

    # totals, projections and the advantage follow from the per-image results
    x = [i["original_bytes"] for i in p["per_image"]]
    assert sum(x) == p["sample_bytes"]
    ys: dict[str, list[int]] = {}
    for name in ("ours", *CODEC_NAMES):
        c = p["ours"] if name == "ours" else p["baselines"][name]
        y = ys[name] = [i["saved"][name] for i in p["per_image"]]
        assert c["saved_bytes"] == sum(y) and c["bytes_after"] == sum(x) - sum(y) and c["bytes_before"] == sum(x)
        assert c["saving_pct"] == pytest.approx(100 * sum(y) / sum(x))
        proj = ratio_projection(x, y, p["population_objects"], p["population_bytes"])
        assert (c["projected_saved"], c["ci_low"], c["ci_high"]) == pytest.approx(
            (proj["projected_saved"], proj["ci_low"], proj["ci_high"]))
        assert c["ci_low"] < c["ci_high"]
        assert c["seconds"] > 0 and c["projected_compute_cost"] > 0
    assert p["ours"]["saved_bytes"] == p["sample_saved"] and p["ours"]["ci_low"] == pytest.approx(p["ci_low"])
    best_codec = max(CODEC_NAMES, key=lambda n: sum(ys[n]))
    adv = p["advantage"]["vs_best_codec"]
    assert adv["versus"] == best_codec
    assert adv["saved_bytes"] == sum(ys["ours"]) - sum(ys[best_codec])
    assert adv["ci_low"] <= adv["projected"] <= adv["ci_high"]
    per_image_best = sum(max(ys[n][i] for n in CODEC_NAMES) for i in range(len(x)))
    assert p["advantage"]["vs_best_per_image"]["saved_bytes"] == sum(ys["ours"]) - per_image_best

    # every classical projection is what that codec really saves on all 12 photos (inside its interval)
    crops = {corpus.objects[_photo_key(pos)][0] for pos in range(N_PHOTOS)}
    assert len(crops) == N_PHOTOS // 3
    for name, codec in codecs.items():
        real = 0
        for pos in range(N_PHOTOS):
            data = corpus.objects[_photo_key(pos)][0]
            r = smallest_at_floor(codec, _pixels(data), BASELINE_FLOOR)
            real += len(data) - r.bytes
        c = p["baselines"][name]
        assert c["ci_low"] <= real <= c["ci_high"], (name, c["ci_low"], real, c["ci_high"])
        assert c["projected_saved"] == pytest.approx(real)

    # the task check's distribution per codec
    tc = p["task_check"]
    assert tc["function"] == "task_checks:edge_f1" and not tc["errors"]
    for name in ("ours", *CODEC_NAMES):
        vals = [i["task"][name] for i in p["per_image"] if i["task"][name] is not None]
        assert tc["by_codec"][name]["count"] == len(vals) == PILOT_SAMPLE
        assert tc["by_codec"][name]["mean"] == pytest.approx(float(np.mean(vals)))
        assert tc["by_codec"][name]["median"] == pytest.approx(float(np.median(vals)))
        assert 0.0 <= tc["by_codec"][name]["min"] <= tc["by_codec"][name]["max"] <= 1.0

    # the same comparison in every format (re-rendered from the recorded job)
    from archiver.cli.report_cmds import pilot

    table = CliRunner().invoke(pilot, ["--job", str(p["job_id"]), "--db", corpus.db_url, "--format", "table",
                                       "--out", str(tmp_path / "pilot.txt")])
    assert table.exit_code == 0, table.output
    text = (tmp_path / "pilot.txt").read_text()
    for label in ("ConvNeXt-ChARM", "AVIF", "JPEG XL", "WebP", "JPEG", "advantage", "Task check"):
        assert label in text, label
    res = CliRunner().invoke(pilot, ["--job", str(p["job_id"]), "--db", corpus.db_url, "--format", "csv",
                                     "--out", str(tmp_path / "pilot.csv")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "pilot.csv").open()))
    got = {(r["section"], r["item"], r["metric"]): r["value"] for r in rows}
    for name in CODEC_NAMES:
        assert int(got[("baselines", name, "saved_bytes")]) == p["baselines"][name]["saved_bytes"]
        assert float(got[("baselines", name, "ci_high")]) == pytest.approx(p["baselines"][name]["ci_high"])
    assert float(got[("advantage", "vs_best_codec", "projected")]) == pytest.approx(adv["projected"])

    html_out = tmp_path / "pilot.html"
    res = CliRunner().invoke(pilot, ["--job", str(p["job_id"]), "--db", corpus.db_url, "--format", "html",
                                     "--out", str(html_out)])
    assert res.exit_code == 0, res.output
    page_text = html_out.read_text()
    _no_external_refs(page_text)
    ids = ("chart-pilot-projection", "chart-pilot-savings", "chart-savings-by-format", "chart-codec-savings",
           "chart-rd-points")
    for ident in ids:
        img = _data_png(page_text, ident)
        assert _not_blank(img), ident
    for ident in ("chart-codec-savings", "chart-rd-points"):  # ours' blue and AVIF's orange are plotted
        px = np.asarray(_data_png(page_text, ident)).reshape(-1, 3).astype(int)
        assert np.all(np.abs(px - (37, 99, 235)) < 30, axis=1).sum() > 30, ident
        assert np.all(np.abs(px - (217, 119, 6)) < 30, axis=1).sum() > 30, ident
    dom = _chromium("--dump-dom", html_out.resolve().as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for ident in (*ids, "table-codecs", "table-advantage", "table-per-image", "table-task-check", "table-by-format",
                  "table-tiers"):
        assert f'id="{ident}"' in dom.stdout, ident
    shot = tmp_path / "pilot.png"
    res2 = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", html_out.resolve().as_uri(),
                     profile=tmp_path / "profile-shot")
    assert res2.returncode == 0 and shot.is_file(), res2.stderr[-2000:]
    page = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert np.all(np.abs(page - (217, 119, 6)) < 30, axis=1).sum() > 100, "the codec charts did not render"


def test_pilot_baselines_corrupt_objects_and_a_failing_task_check(corpus: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """misc/ holds two JPEGs, a flat PNG, a text file named .png and a truncated PNG. The bad
    objects end as rejected rows that no codec reaches; the flat image reaches the floor for
    every codec; a task check that raises on it is recorded as errors, and the pilot finishes."""
    from archiver.baselines import CODEC_NAMES

    p = _run_pilot(corpus, tmp_path, monkeypatch, "misc", "--sample", "50", "--min-psnr", str(BASELINE_FLOOR),
                   "--baselines", "fast", "--task-check", "task_checks:edge_f1_strict")
    misc = sorted(k for k in corpus.objects if k.startswith("misc/"))
    assert sorted(p["sample_keys"]) == misc and p["sample_size"] == len(misc)
    items = {i["key"]: i for i in p["per_image"]}
    for bad in ("misc/not-an-image.png", "misc/truncated.png"):
        assert items[bad]["status"] == "rejected"
        assert all(items[bad]["bytes"][n] is None and items[bad]["saved"][n] == 0 for n in ("ours", *CODEC_NAMES))
    assert p["sample_counts"]["rejected"] >= 2
    for name in CODEC_NAMES:
        assert p["baselines"][name]["reached"] == len(misc) - 2, name  # 2 JPEGs and the flat PNG
    errors = p["task_check"]["errors"]
    assert errors and {e["key"] for e in errors} == {"misc/flat.png"}
    assert {e["codec"] for e in errors} == {"ours", *CODEC_NAMES}
    assert all("no edges" in e["error"] for e in errors)
    for name in ("ours", *CODEC_NAMES):
        assert p["task_check"]["by_codec"][name]["errors"] == 1
        assert p["task_check"]["by_codec"][name]["count"] == 2  # the two JPEG photos


def test_pilot_baselines_none_adds_nothing(corpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from archiver.db import Job

    p = _run_pilot(corpus, tmp_path, monkeypatch, "photos", "--sample", "2", "--min-psnr", str(MIN_PSNR),
                   "--baselines", "none")
    assert set(p) == PILOT_KEYS_WITHOUT_BASELINES
    with corpus.factory() as s:
        assert "comparison" not in s.get(Job, p["job_id"]).settings["pilot"]


def test_task_check_loading_and_errors() -> None:
    from archiver.report import ReportError
    from archiver.report.compare import TaskCheck

    check = TaskCheck.load("task_checks:edge_f1")
    img = np.asarray(_kodak(3).crop((0, 0, 64, 64)))
    assert check(img, img) == {"value": 1.0}
    bad = TaskCheck("x:y", lambda a, b: 1 / 0)
    assert bad(img, img)["error"].startswith("ZeroDivisionError")
    assert "non-finite" in TaskCheck("x:nan", lambda a, b: float("nan"))(img, img)["error"]
    for spec in ("no_colon", "task_checks:missing", "no_such_module_xyz:f"):
        with pytest.raises(ReportError):
            TaskCheck.load(spec)
