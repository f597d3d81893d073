"""The one-call GPU script (benchmarks/gpu_run.sh) in its CPU dry run: every step runs at toy size
and writes the files the GPU call brings back, in the same form (docs/MODEL.md, "GPU runbook")."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archiver.codec import registry

REPO = Path(__file__).resolve().parents[1]
FILES = {"summary.json", "gpu_run.log", "w.safetensors", "w.log.jsonl", "cross_device.json", "throughput.json",
         "refine.json"}
COUNTS = ("encodes", "latent_mismatches", "images_with_pixel_diffs", "pixels_differing", "max_abs_pixel_diff")


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The output folder of ``gpu_run.sh --dry-run`` and how long it took."""
    out = tmp_path_factory.mktemp("gpu-run-out")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_RUN_", "ARCHIVER_"))}
    env["PYTHON"] = sys.executable
    # the dry run's toy sizes keep it short (~30-70 s on dev-cpu); a wide budget keeps a slow
    # machine from skipping a step, so the outputs' form does not depend on timing
    env["GPU_RUN_TOTAL_S"] = "900"
    t = time.time()
    p = subprocess.run(["bash", str(REPO / "benchmarks/gpu_run.sh"), "--dry-run", "--out", str(out)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - t
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return out, took


def test_dry_run_writes_the_files_of_the_gpu_call(dry_run: tuple[Path, float]) -> None:
    out, _ = dry_run
    names = {p.name for p in out.iterdir()}
    assert names == FILES  # at most 8 files come back from a device call
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    assert isinstance(summary["model"], str) and summary["model"] in registry.read_registry()
    assert set(summary["files"]) == FILES
    assert list(summary["steps"]) == ["train", "cross_device", "throughput", "refine"]
    for name, step in summary["steps"].items():
        assert step["status"] == "ok", (name, step)
        assert is_number(step["seconds"]) and step["reason"] is None
    assert "done in" in (out / "gpu_run.log").read_text()


def test_training_output_loads_as_weights(dry_run: tuple[Path, float]) -> None:
    out, _ = dry_run
    records = [json.loads(line) for line in (out / "w.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(is_number(r[k]) for r in records for k in ("loss", "bpp", "psnr", "lr", "time_s"))
    train = json.loads((out / "summary.json").read_text())["steps"]["train"]
    assert train["steps"] == 3 and isinstance(train["resumed_from"], str)
    default = registry.read_registry()[registry.DEFAULT_MODEL]
    if hasattr(registry, "load_weights_file"):
        model, entry = registry.load_weights_file(out / "w.safetensors")
        assert entry.preset.design == default.preset.design == train["preset"]
        assert entry.sha256 == train["weights_sha256"]
    else:
        from safetensors import safe_open

        with safe_open(str(out / "w.safetensors"), framework="pt") as f:
            assert "preset" in (f.metadata() or {}) and len(list(f.keys())) > 10


def test_cross_device_counts(dry_run: tuple[Path, float]) -> None:
    out, _ = dry_run
    cd = json.loads((out / "cross_device.json").read_text())
    assert cd["images"] == 2 and cd["qualities"] == [50.0] and cd["complete"] is True
    assert isinstance(cd["model"], str) and isinstance(cd["machine"], str) and is_number(cd["seconds"])
    assert list(cd["results"]) == ["cpu(1 thread)->cpu(2 threads)"]  # no CUDA in a dry run
    for r in cd["results"].values():
        assert all(isinstance(r[k], int) and not isinstance(r[k], bool) for k in COUNTS), r
        assert r["encodes"] == 2 and r["latent_mismatches"] == 0 and r["complete"] is True


def test_throughput_rates_and_split(dry_run: tuple[Path, float]) -> None:
    out, _ = dry_run
    tp = json.loads((out / "throughput.json").read_text())
    assert (tp["width"], tp["height"], tp["images"], tp["skipped"]) == (192, 128, 2, [])
    assert [(r["mode"], r["batch"]) for r in tp["results"]] == [("api", 1), ("batched", 1), ("batched", 2),
                                                                ("threads", 2)]
    for r in tp["results"]:
        assert isinstance(r["images"], int) and r["images"] >= 2 and isinstance(r["passes"], int)
        assert is_number(r["images_per_s"]) and r["images_per_s"] > 0 and is_number(r["seconds"])
        if r["mode"] == "batched":
            ms = r["ms_per_image"]
            assert set(ms) == {"analysis", "entropy_encode", "synthesis", "entropy_decode", "other"}
            assert all(is_number(v) for v in ms.values()) and ms["entropy_encode"] > 0 and ms["analysis"] > 0
            assert is_number(r["gpu_networks_ms"])
            check = r["api_decode_check"]
            assert check["containers"] == r["batch"] and check["latent_mismatches"] == 0
            assert isinstance(check["max_abs_pixel_diff"], int)
        if r["mode"] != "threads":
            assert is_number(r["cpu_rans_ms"]) and r["cpu_rans_ms"] > 0 and is_number(r["to_host_ms"])


def test_refine_beats_or_not_with_real_streams(dry_run: tuple[Path, float]) -> None:
    out, _ = dry_run
    rf = json.loads((out / "refine.json").read_text())
    assert rf["qualities"] == [35.0, 80.0] and rf["crop"] == [64, 64] and rf["complete"] is True
    assert rf["params"]["iterations"] == 2 and rf["params"]["stochastic"] is True and rf["shrunk"] is None
    assert is_number(rf["probe"]["ms_per_iteration"]) and rf["probe"]["ms_per_iteration"] > 0
    assert list(rf["results"]) == ["kodim03"]
    assert rf["streams_decoded"] == 4 and rf["decode_errors"] == []  # 2 settings x 2 qualities, all decoded
    r = rf["results"]["kodim03"]
    for label in ("effort1", "refined"):
        c = r[label]
        assert len(c["bpp"]) == len(c["psnr"]) == len(c["encode_s"]) == 2
        assert all(is_number(v) and v > 0 for v in c["bpp"] + c["encode_s"])
        assert all(is_number(v) and 20 < v < 100 for v in c["psnr"])
        assert is_number(r["encode_s_per_image"][label]) and r["encode_s_per_image"][label] > 0
    assert is_number(r["bd_rate_pct"]) and math.isfinite(r["bd_rate_pct"])
    assert rf["mean_bd_rate_pct"] == pytest.approx(r["bd_rate_pct"], abs=1e-3)
    step = json.loads((out / "summary.json").read_text())["steps"]["refine"]
    assert step["iterations"] == 2 and step["images"] == 1 and step["streams_decoded"] == 4
    assert step["mean_bd_rate_pct"] == rf["mean_bd_rate_pct"]


def test_refine_plan_shrinks_iterations_then_images() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_run import refine_plan

    # 4 images x 4 qualities x (0.5 s coding + 400 x 0.02 s) = 136 s
    assert refine_plan(150, 0.5, 0.02, 4, 4, 400, 100) == (400, 4)
    assert refine_plan(100, 0.5, 0.02, 4, 4, 400, 100) == (287, 4)  # fewer iterations, all images
    assert refine_plan(30, 0.5, 0.02, 4, 4, 400, 100) == (100, 3)  # at the floor: fewer images
    assert refine_plan(9, 0.5, 0.02, 4, 4, 400, 100) == (0, 0)  # not even one image (10 s)


def test_record_appends_the_results_to_a_benchmarks_file(dry_run: tuple[Path, float], tmp_path: Path) -> None:
    out, _ = dry_run
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n")
    subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_run.py"), "--record", str(out), "--bench-file",
                    str(bench)], check=True, capture_output=True, cwd=REPO)
    text = bench.read_text()
    assert text.startswith("# Benchmarks\n") and "### One GPU call (benchmarks/gpu_run.sh)" in text
    assert "cpu(1 thread)->cpu(2 threads): 0 latent mismatches of 2 bitstreams" in text
    assert "| batched | 2 |" in text and "- training: " in text
    assert "Latent refinement: effort 1 (RDOQ) vs RefiningCodec" in text and "| kodim03 | " in text


def test_scripts_parse() -> None:
    for script in ("benchmarks/gpu_run.sh", "benchmarks/gpu_prepare.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)
