"""`archiver finetune` and the model store, end to end on real photos and a real S3 server (moto
over HTTP): a short fine-tune publishes a model; a second process with an empty cache decodes a
container made with it bit-exactly; tampered or half-written store files are refused with their
own codes; ids are never reused; held-out images are never trained on (checked by content).

CPU is kept small: 64-px crops, a few seconds of training, one 64-px held-out crop."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from archiver.cli import main as cli
from archiver.codec.api import Codec
from archiver.errors import UnknownModelError, WeightsIntegrityError
from archiver.finetune import FinetuneConfig, FinetuneError, finetune, split_keys
from archiver.images import load_image
from archiver.model_store import ModelStore
from archiver.storage import open_store
from archiver.train import CropSampler

from runtimes import runtime_for
from shared_paths import SHARED

TRAIN = SHARED / "data" / "train"
PHOTOS = ["shard-00/mcmaster_0001.jpg", "shard-00/mcmaster_0003.jpg", "shard-01/mcmaster_0010.jpg",
          "shard-01/mcmaster_0011.jpg"]
REPO = Path(__file__).resolve().parents[1]


def _pixels_sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _settings(s3_settings, **update):
    return s3_settings.model_copy(update=update)


def test_split_is_by_object_seeded_and_never_empty() -> None:
    keys = [f"k{i}" for i in range(10)]
    tr, ho = split_keys(keys, 0.2, seed=3)
    assert len(ho) == 2 and sorted(tr + ho) == sorted(keys) and not set(tr) & set(ho)
    assert split_keys(list(reversed(keys)), 0.2, seed=3) == (tr, ho)  # listing order does not matter
    assert split_keys(keys, 0.2, seed=4) != (tr, ho)
    assert [len(p) for p in split_keys(["a", "b"], 0.9, 0)] == [1, 1]
    with pytest.raises(FinetuneError) as e:
        split_keys(["a"], 0.2, 0)
    assert e.value.code == "sample_too_small"


def test_finetune_publishes_to_s3_store_and_a_fresh_process_decodes(tmp_path: Path, s3_settings, s3_client,
                                                                     s3_bucket: str, monkeypatch) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    for p in PHOTOS:  # the user's storage: photos in a bucket (they never leave it)
        s3_client.put_object(Bucket=bucket, Key="photos/" + Path(p).name, Body=(TRAIN / p).read_bytes())
    s3_client.put_object(Bucket=bucket, Key="photos/readme.txt", Body=b"not an image")
    store_url = f"{s3_bucket}/models/"
    st = _settings(s3_settings, model_store=store_url, model_cache_dir=str(tmp_path / "cache-a"))

    trained: list[str] = []  # the pixels the trainer was given, by content
    real = CropSampler.from_arrays.__func__

    def spy(cls, images, crop, seed):
        trained.extend(_pixels_sha(a) for a in images.values())
        return real(cls, images, crop, seed)

    monkeypatch.setattr(CropSampler, "from_arrays", classmethod(spy))
    cfg = FinetuneConfig(source_url=f"{s3_bucket}/photos", new_id="site-a1", base_model="compact-v5", sample=10,
                         holdout=0.25, minutes=0.04, seed=1, force=True, qualities=(50.0, 90.0), eval_size=64,
                         crop=64, batch=2, warmup=1, threads=1, device="cpu")
    phases = set()
    res = finetune(cfg, st, progress=lambda phase, d, t, i: phases.add(phase.split()[0]))
    bd = res.record["measured"]["bd_rate_pct"]  # a few steps: either sign; --force registers it regardless
    assert res.registered and res.reason.startswith("better" if bd is not None and bd < 0 else "forced")
    assert {"fetching", "measuring", "training", "fitting"} <= phases

    rec = res.record
    src = rec["source"]
    assert src["url"] == f"{s3_bucket}/photos" and src["seed"] == 1 and src["sample_size"] == 4
    assert src["skipped"] == {"readme.txt": "not_an_image"}
    assert len(src["held_out"]) == 1 and len(src["train"]) == 3
    assert not set(src["held_out"]) & set(rec["training"]["trained_on"])
    assert rec["training"]["steps"] >= 1 and rec["base_model"] == "compact-v5"
    # by content: the trainer got exactly the training photos' pixels, never a held-out one's
    by_key = {Path(p).name: _pixels_sha(load_image((TRAIN / p).read_bytes(), max_pixels=10**8).rgb) for p in PHOTOS}
    assert sorted(trained) == sorted(by_key[k] for k in src["train"])
    assert by_key[src["held_out"][0]] not in trained
    m = rec["measured"]
    assert len(m["before"]["bpp"]) == 2 and m["bd_rate_pct"] is not None and m["floor_bytes_before"] > 0

    # the store holds the weights and the record; the record's sha256 is the object's
    blob = s3_client.get_object(Bucket=bucket, Key="models/site-a1.safetensors")["Body"].read()
    stored = json.loads(s3_client.get_object(Bucket=bucket, Key="models/site-a1.json")["Body"].read())
    assert stored["sha256"] == hashlib.sha256(blob).hexdigest() == rec["sha256"]
    assert stored["preset"]["context"] == "checkerboard" and stored["created"]
    # its y tables were fitted on the training part's crops (table_fit), and the record says so
    assert stored["preset"]["y_tables"] == "fitted" and rec["training"]["table_fit"]["symbols"] > 0

    # ids are never reused: not the store's, not the package's
    with pytest.raises(FinetuneError) as e:
        finetune(cfg, st)
    assert e.value.code == "model_id_taken"
    store = ModelStore.from_settings(st)
    for taken in ("site-a1", "compact-v5"):
        with pytest.raises(UnknownModelError) as e2:
            store.publish(taken, b"x", {})
        assert e2.value.code == "model_id_taken"

    # a container made with the new model (this host) ...
    codec = Codec.load("site-a1", "cpu", settings=st)
    assert codec.weights_sha256 == rec["sha256"]
    photo = Image.open(TRAIN / PHOTOS[0]).convert("RGB").crop((0, 0, 96, 80))
    cxa = tmp_path / "x.cxa"
    cxa.write_bytes(codec.encode(photo, quality=60))
    here = codec.decode(cxa.read_bytes()).rgb

    # ... decodes in another process whose cache is empty: it fetches the model from the store
    cache_b = tmp_path / "cache-b"
    env = {**os.environ, "ARCHIVER_MODEL_STORE": store_url, "ARCHIVER_MODEL_CACHE_DIR": str(cache_b),
           "ARCHIVER_S3__ENDPOINT_URL": st.s3.endpoint_url, "ARCHIVER_S3__PATH_STYLE": "true",
           "ARCHIVER_TORCH_THREADS": "1"}
    out = tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-m", "archiver", "decode", str(cxa), str(out), "--device", "cpu"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), here)
    assert [p.name for p in cache_b.iterdir()] == [f"site-a1-{rec['sha256'][:16]}.safetensors"]

    # `archiver models` lists it beside the packaged ones, re-hashed
    for k, v in env.items():
        if k.startswith("ARCHIVER_"):
            monkeypatch.setenv(k, v)
    r = CliRunner().invoke(cli, ["models", "--verify", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["model_id"]: row for row in json.loads(r.stdout)["models"]}
    assert rows["site-a1"]["origin"] == "store" and rows["site-a1"]["intact"] is True
    assert rows["compact-v5"]["origin"] == "package"

    # a flipped byte in the store's file: refused on a host without the file cached, never loaded
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    s3_client.put_object(Bucket=bucket, Key="models/site-a1.safetensors", Body=bytes(flipped))
    fresh = _settings(st, model_cache_dir=str(tmp_path / "cache-c"))
    with pytest.raises(WeightsIntegrityError) as e3:
        Codec.load("site-a1", "cpu", settings=fresh)
    assert e3.value.code == "weights_tampered"
    assert not (tmp_path / "cache-c").exists() or not any((tmp_path / "cache-c").iterdir())
    monkeypatch.setenv("ARCHIVER_MODEL_CACHE_DIR", str(tmp_path / "cache-d"))
    r = CliRunner().invoke(cli, ["decode", str(cxa), str(tmp_path / "y.png"), "--device", "cpu"])
    assert r.exit_code == 2 and "weights_tampered" in r.output and not (tmp_path / "y.png").exists()
    r = CliRunner().invoke(cli, ["models", "--verify", "--json"])
    assert r.exit_code == 1
    assert {row["model_id"]: row for row in json.loads(r.stdout)["models"]}["site-a1"]["intact"] is False

    # half-written (truncated) weights: refused the same way; a record without weights: incomplete
    s3_client.put_object(Bucket=bucket, Key="models/site-a1.safetensors", Body=blob[: len(blob) // 3])
    with pytest.raises(WeightsIntegrityError) as e4:
        Codec.load("site-a1", "cpu", settings=_settings(st, model_cache_dir=str(tmp_path / "cache-e")))
    assert e4.value.code == "weights_tampered"
    s3_client.delete_object(Bucket=bucket, Key="models/site-a1.safetensors")
    with pytest.raises(WeightsIntegrityError) as e5:
        Codec.load("site-a1", "cpu", settings=_settings(st, model_cache_dir=str(tmp_path / "cache-f")))
    assert e5.value.code == "model_incomplete"
    # the id is still taken (a half-published id is never handed out again)
    with pytest.raises(UnknownModelError):
        store.publish("site-a1", blob, {})


def test_unknown_model_without_store_and_container_sha_mismatch(tmp_path: Path) -> None:
    """No store configured: a model the package lacks is unknown. A store whose model has other
    weights than the container names is refused before loading (weights_mismatch)."""
    from archiver.settings import Settings

    with pytest.raises(UnknownModelError):
        Codec.load("never-published", "cpu", settings=Settings())
    root = tmp_path / "store"
    store = ModelStore(str(root), None, tmp_path / "cache")
    weights = (REPO / "archiver" / "codec" / "weights").glob("compact-v5*.safetensors")
    blob = next(iter(weights)).read_bytes()
    store.publish("copy-v5", blob, {"note": "same weights as compact-v5, for the test"})
    st = Settings(model_store=str(root), model_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(WeightsIntegrityError) as e:
        Codec.load("copy-v5", "cpu", settings=st, expect_sha256="0" * 64)
    assert e.value.code == "weights_mismatch"
    assert not (tmp_path / "cache").exists()
    assert open_store(str(root)).head("copy-v5.json") is not None


def test_schedules_and_submit_take_a_model(tmp_path: Path, monkeypatch) -> None:
    """A schedule's `model` and `submit --model` name the job's model; an id that is neither
    packaged nor in the model store is refused before anything is queued."""
    from archiver import jobs
    from archiver.db import session_factory
    from archiver.db.models import Job
    from archiver.schedules import Schedule
    from archiver.settings import Settings

    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_bytes((TRAIN / PHOTOS[0]).read_bytes())
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    st = Settings(database_url=db)
    sched = Schedule(name="site-a", interval_seconds=60, source=str(src), older_than_days=0, model="compact-v4")
    job_id = jobs.start_scheduled(sched, runtime=runtime_for(st), enqueue=lambda *a: None)
    with session_factory(db)() as s:
        assert s.get(Job, job_id).model_id == "compact-v4"
    with pytest.raises(Exception, match="model"):
        Schedule(name="x", interval_seconds=60, source=str(src), model="../escape")

    monkeypatch.setenv("ARCHIVER_DATABASE_URL", db)
    r = CliRunner().invoke(cli, ["submit", str(src), "--model", "never-published"])
    assert r.exit_code == 2 and "unknown_model" in r.output
    with session_factory(db)() as s:
        assert s.query(Job).count() == 1  # nothing was queued for it
