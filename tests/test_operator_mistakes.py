"""Operator mistakes that used to cost a whole run, and entries that used to vanish from the books
(issue 16, part 3): a destination that cannot be written is found before the first encode; every
entry under a local source gets a row (names that are not UTF-8, symlinks out of the root, FIFOs);
S3 keys that could not be restored to a directory are refused before archiving, so ``--replace``
never deletes their originals; stale temporary files of interrupted writes are removed; failed
reasons are printed on the "failed" line; ``LocalStore`` never follows a symlink swapped in
between a check and an open.

Real stores only: moto's S3 server over HTTP, real directories, SQLite and PostgreSQL, the real
codec on crops of the Kodak photos (through ``test_pipeline``'s helpers).
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from archiver import jobs
from archiver.cli.pipeline_cmds import summary_table
from archiver.errors import KeyRefused
from archiver.pipeline import JobSummary, run_job
from archiver.records import Outcome
from archiver.restore import restore_all, unrestorable_reason
from archiver.storage import DestinationUnwritable, LocalStore, open_store
from archiver.storage import local as local_mod
from archiver.storage.s3 import S3Store
from runtimes import runtime_for
from test_pipeline import (  # noqa: F401 - fixtures are used by name
    ALL,
    ARCHIVER_BIN,
    GOOD,
    _one_torch_thread,
    accept_opts,
    by_key,
    cli_env,
    codec,
    jobs as job_rows,
    listing,
    populate,
    results,
    sf,
    sqlite_sf,
)

IMG = GOOD["photos/k01.png"]
NOT_IMAGE = ALL["bad/notes.jpg"]


class _NoCodec:
    """Stands in where a test proves that nothing was encoded: any use fails the test."""

    model_id = "compact-v5"
    device_name = "none"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the codec was used ({name}) although the job should have stopped first")


# ------------------------------------------------------------------ 1. destination probe
def test_missing_bucket_fails_the_job_before_any_encode(tmp_path: Path, s3_settings: Any, sqlite_sf: Any) -> None:
    src = LocalStore(tmp_path / "src", create=True)
    populate(src, {"a.png": IMG, "b.png": IMG})
    dst = S3Store("s3://no-such-bucket-archiver-test/cxa/", s3_settings.s3)
    t0 = time.monotonic()
    with pytest.raises(DestinationUnwritable) as exc:
        run_job(src=src, dst=dst, source_url=src.url, dest_url=dst.url, codec=_NoCodec(), opts=accept_opts(),
                session_factory=sqlite_sf)
    assert time.monotonic() - t0 < 30
    assert exc.value.code == "dest_unwritable" and "no_such_bucket" in str(exc.value)
    (job,) = job_rows(sqlite_sf)
    assert job.status == "failed" and "no_such_bucket" in (job.error or "")
    assert results(sqlite_sf) == []
    assert sorted(listing(src)) == ["a.png", "b.png"]


def test_cli_recompress_to_a_missing_bucket_exits_2_at_once(tmp_path: Path, s3_server: str) -> None:
    src = tmp_path / "src"
    populate(LocalStore(src, create=True), {"a.png": IMG})
    proc = subprocess.run([str(ARCHIVER_BIN), "recompress", str(src), "--dest", "s3://no-such-bucket-archiver-cli/",
                           "--device", "cpu", "--replace", "--db", f"sqlite:///{tmp_path / 'a.sqlite'}"],
                          cwd=tmp_path, env=cli_env(s3_server), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error (dest_unwritable)" in proc.stderr and "no_such_bucket" in proc.stderr
    assert "summary" not in proc.stdout  # no run happened
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]
    # submit fails the same way, before anything is enqueued (no broker is even needed)
    proc = subprocess.run([str(ARCHIVER_BIN), "submit", str(src), "--dest", "s3://no-such-bucket-archiver-cli/",
                           "--db", f"sqlite:///{tmp_path / 'a.sqlite'}"],
                          cwd=tmp_path, env={**cli_env(s3_server), "ARCHIVER_BROKER_URL": "redis://127.0.0.1:1/0"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error (dest_unwritable)" in proc.stderr


def test_unwritable_local_destination_is_refused(tmp_path: Path, sqlite_sf: Any) -> None:
    src = LocalStore(tmp_path / "src", create=True)
    populate(src, {"a.png": IMG})
    dst = LocalStore(tmp_path / "dst", create=True)
    (tmp_path / "dst").rmdir()
    (tmp_path / "dst").write_bytes(b"a file where the directory was")  # (tests run as root: no chmod)
    with pytest.raises(DestinationUnwritable):
        run_job(src=src, dst=dst, source_url=src.url, dest_url=dst.url, codec=_NoCodec(), opts=accept_opts(),
                session_factory=sqlite_sf)
    with pytest.raises(DestinationUnwritable):  # and a destination that cannot even be created
        open_store(str(tmp_path / "dst" / "below-a-file"), create=True)
    # a dry run writes nothing, so it needs no writable destination
    notes = LocalStore(tmp_path / "notes", create=True)
    populate(notes, {"n.jpg": NOT_IMAGE})
    summary = run_job(src=notes, dst=dst, source_url=notes.url, dest_url=dst.url, codec=_NoCodec(),
                      opts=accept_opts(dry_run=True), session_factory=sqlite_sf)
    assert (summary.seen, summary.rejected) == (1, 1)


def test_probe_leaves_nothing_behind(tmp_path: Path, s3_settings: Any, s3_bucket: str) -> None:
    for st in (LocalStore(tmp_path / "d", create=True), S3Store(s3_bucket + "/p", s3_settings.s3)):
        st.check_writable()
        assert list(st.list(include_refused=True)) == []
    assert list((tmp_path / "d").iterdir()) == []


def test_submit_and_schedule_fail_at_once_on_a_missing_bucket(s3_settings: Any, s3_bucket: str,
                                                              migrated_db_url: str) -> None:
    src = S3Store(s3_bucket, s3_settings.s3)
    populate(src, {"a.png": IMG})
    sent: list[Any] = []
    st = s3_settings.model_copy(update={"database_url": migrated_db_url})

    def enqueue(*args: Any) -> None:
        sent.append(args)

    with pytest.raises(DestinationUnwritable):
        jobs.submit(s3_bucket, accept_opts(), dest="s3://no-such-bucket-archiver-submit/", runtime=runtime_for(st),
                    db_url=migrated_db_url, enqueue=enqueue)
    with pytest.raises(DestinationUnwritable):
        jobs.start_scheduled({"name": "nightly", "interval_seconds": 60, "source": s3_bucket,
                              "dest": "s3://no-such-bucket-archiver-submit/", "older_than_days": 0},
                             migrated_db_url, runtime=runtime_for(st), enqueue=enqueue)
    assert sent == []
    recent = jobs.recent_jobs(db_url=migrated_db_url, runtime=runtime_for(st))
    assert [j.status for j in recent] == ["failed", "failed"]
    assert all("no_such_bucket" in (j.error or "") for j in recent)
    # the same submission to a real destination goes through
    jobs.submit(s3_bucket, accept_opts(), dest=s3_bucket + "/cxa/", runtime=runtime_for(st), db_url=migrated_db_url,
                enqueue=enqueue)
    assert [len(args[3]) for args in sent] == [1]


def test_restore_to_an_unwritable_destination_fails_before_decoding(tmp_path: Path) -> None:
    src = LocalStore(tmp_path / "archive", create=True)
    src.put("x.png.cxa", b"not even a container")  # would be reported as a bad container if decoded
    to = LocalStore(tmp_path / "out", create=True)
    (tmp_path / "out").rmdir()
    (tmp_path / "out").write_bytes(b"")
    with pytest.raises(DestinationUnwritable):
        list(restore_all(src, to, codecs=runtime_for(), device="cpu"))


# ------------------------------------------------------------------ 2. one row per entry
def _odd_source(tmp_path: Path) -> tuple[LocalStore, Path]:
    root = tmp_path / "src"
    st = LocalStore(root, create=True)
    populate(st, {"good/k01.png": IMG, "good/notes.jpg": NOT_IMAGE, ".archiver-tmp-notes.jpg": NOT_IMAGE})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(IMG)
    (root / "links").mkdir()
    (root / "links" / "out.png").symlink_to(outside / "secret.png")
    (root / "links" / "dangling.png").symlink_to(root / "nowhere.png")
    (root / "links" / "in.png").symlink_to(root / "good" / "k01.png")
    (root / "links" / "dir").symlink_to(root / "good", target_is_directory=True)
    os.mkfifo(root / "good" / "pipe.png")
    os.mkdir(os.path.join(os.fsencode(root), b"caf\xe9"))
    with open(os.path.join(os.fsencode(root), b"caf\xe9", b"k.png"), "wb") as fh:
        fh.write(IMG)
    with open(os.path.join(os.fsencode(root), b"ol\xe9.png"), "wb") as fh:
        fh.write(IMG)
    (root / "good" / ".archiver-tmp-abcd1234").write_bytes(b"half a container")  # a write in progress
    return st, outside


EXPECTED_REFUSED = {
    "caf\\xe9/k.png": "name_not_utf8",
    "ol\\xe9.png": "name_not_utf8",
    "links/out.png": "symlink_outside_root",
    "links/dangling.png": "not_a_regular_file",
    "links/in.png": "not_a_regular_file",  # a link inside: its target is archived once, as good/k01.png
    "good/pipe.png": "not_a_regular_file",
}


def test_every_local_entry_gets_a_row(tmp_path: Path, sf: Any, codec: Any) -> None:
    st, outside = _odd_source(tmp_path)
    # a plain listing still shows objects only
    assert [o.key for o in st.list()] == [".archiver-tmp-notes.jpg", "good/k01.png", "good/notes.jpg"]
    summary = run_job(src=st, dst=st, source_url=st.url, dest_url=None, codec=codec, opts=accept_opts(),
                      session_factory=sf)
    rows = by_key(results(sf))
    for key, code in EXPECTED_REFUSED.items():
        r = rows[f"{st.prefix}{key}"]
        assert (r.status, r.reason_code) == ("rejected", code), (key, r.status, r.reason_code, r.reason)
        assert r.reason and r.dest_url is None and not r.original_deleted
    assert rows["good/k01.png"].status == "accepted"
    assert rows[".archiver-tmp-notes.jpg"].reason_code == "not_an_image"  # a user's file, not our temp file
    assert set(rows) == {*EXPECTED_REFUSED, "good/k01.png", "good/notes.jpg", ".archiver-tmp-notes.jpg"}
    assert summary.rejected == len(EXPECTED_REFUSED) + 2 and summary.failed == 0
    assert summary.rejected_reasons["name_not_utf8"] == 2 and summary.failed_reasons == {}
    # nothing outside the root was touched; the refused entries are all still there
    assert (outside / "secret.png").read_bytes() == IMG
    assert os.path.exists(os.path.join(os.fsencode(st.root), b"ol\xe9.png"))
    assert (st.root / "good" / "pipe.png").exists() and (st.root / "links" / "out.png").is_symlink()


def test_submit_records_refused_entries_with_their_count(tmp_path: Path, migrated_db_url: str) -> None:
    st, _ = _odd_source(tmp_path)
    from archiver.settings import Settings

    settings = Settings(database_url=migrated_db_url)
    sent: list[list[Any]] = []
    job_id = jobs.submit(st.url, accept_opts(), runtime=runtime_for(settings), db_url=migrated_db_url, chunk_size=3,
                         enqueue=lambda job, src, dst, items, opts: sent.extend(items))
    s = jobs.status(job_id, migrated_db_url, runtime=runtime_for(settings))
    assert sorted(i[0] for i in sent) == [".archiver-tmp-notes.jpg", "good/k01.png", "good/notes.jpg"]
    assert s.objects_enqueued == len(sent) + len(EXPECTED_REFUSED)
    assert s.count("rejected") == len(EXPECTED_REFUSED) and s.status == "running"
    assert {k: v for k, v in s.reasons.items()} == {"name_not_utf8": 2, "symlink_outside_root": 1,
                                                      "not_a_regular_file": 3}


# ------------------------------------------------------------------ 3. keys a directory cannot hold
UNSAFE = ["a/../up.png", "a/./here.png", "a//double.png", "/lead.png", "x/" + "n" * 252 + ".png"]


@pytest.mark.parametrize("key", UNSAFE)
def test_unrestorable_keys_are_named(key: str) -> None:
    assert unrestorable_reason(key) is not None


def test_safe_keys_pass() -> None:
    for key in ("a/b.png", "..a/b..png", "a/.hidden.png", "x/" + "n" * 246 + ".png", "sp ace/é.jpg"):
        assert unrestorable_reason(key) is None, key


def test_unsafe_s3_keys_are_never_archived_nor_deleted(tmp_path: Path, s3_settings: Any, s3_bucket: str,
                                                       s3_client: Any, sqlite_sf: Any, codec: Any) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    for key in [*UNSAFE, "ok/k01.png"]:
        s3_client.put_object(Bucket=bucket, Key=key, Body=IMG)
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert stored == {*UNSAFE, "ok/k01.png"}  # moto keeps the keys as given
    src = S3Store(s3_bucket, s3_settings.s3)
    summary = run_job(src=src, dst=src, source_url=src.url, dest_url=None, codec=codec,
                      opts=accept_opts(replace=True), session_factory=sqlite_sf)
    rows = by_key(results(sqlite_sf))
    for key in UNSAFE:
        assert (rows[key].status, rows[key].reason_code) == ("rejected", "unsafe_key"), rows[key].reason
        assert not rows[key].original_deleted
    assert rows["ok/k01.png"].status == "accepted" and rows["ok/k01.png"].original_deleted
    assert summary.deleted == 1
    left = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert left == {*UNSAFE, "ok/k01.png.cxa"}  # every unsafe original kept, no container for them
    # every archive there is restores to a directory
    restored = list(restore_all(src, LocalStore(tmp_path / "out", create=True), codecs=runtime_for(), device="cpu"))
    assert [(r.key, r.out_key, r.ok) for r in restored] == [("ok/k01.png.cxa", "ok/k01.png", True)]
    # a rerun does not try again either, and still deletes nothing
    again = run_job(src=src, dst=src, source_url=src.url, dest_url=None, codec=codec,
                    opts=accept_opts(replace=True), session_factory=sqlite_sf)
    assert again.rejected_reasons == {"unsafe_key": len(UNSAFE)} and again.deleted == 0
    assert jobs.rejection_repeats("unsafe_key", "m", {}, "other-model", accept_opts())


# ------------------------------------------------------------------ 4. stale temporary files
def test_stale_temp_files_are_removed_at_job_start_and_never_listed(tmp_path: Path, sqlite_sf: Any) -> None:
    src = LocalStore(tmp_path / "src", create=True)
    populate(src, {"notes.jpg": NOT_IMAGE})
    dst = LocalStore(tmp_path / "dst", create=True)
    (dst.root / "a").mkdir()
    old = dst.root / "a" / ".archiver-tmp-k2j_8x0q"
    young = dst.root / "a" / ".archiver-tmp-zzzzzzzz"
    user = dst.root / "a" / ".archiver-tmp-holiday.jpg"
    for p in (old, young, user):
        p.write_bytes(b"partial")
    past = time.time() - local_mod.TMP_STALE_SECONDS - 60
    os.utime(old, (past, past))
    os.utime(user, (past, past))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".archiver-tmp-aaaaaaaa").write_bytes(b"not ours to remove")
    os.utime(outside / ".archiver-tmp-aaaaaaaa", (past, past))
    (dst.root / "link").symlink_to(outside, target_is_directory=True)
    assert [o.key for o in dst.list()] == ["a/.archiver-tmp-holiday.jpg"]
    run_job(src=src, dst=dst, source_url=src.url, dest_url=dst.url, codec=_NoCodec(), opts=accept_opts(),
            session_factory=sqlite_sf)
    assert not old.exists()  # left by a writer that died: removed
    assert young.exists()  # may be a write in progress: kept
    assert user.read_bytes() == b"partial"  # a user's file with a similar name: kept
    assert (outside / ".archiver-tmp-aaaaaaaa").exists()  # never through a symlink


# ------------------------------------------------------------------ 5. the CLI summary
def test_summary_puts_failed_reasons_on_the_failed_line() -> None:
    summary = JobSummary(job_id=7)
    for _ in range(11):
        summary.add(Outcome(key="k", status="failed", reason_code="storage_error"))
    for _ in range(2):
        summary.add(Outcome(key="k", status="rejected", reason_code="not_an_image"))
    console = Console(file=io.StringIO(), width=200, no_color=True)
    console.print(summary_table(summary))
    lines = {line.split("│")[1].strip(): line for line in console.file.getvalue().splitlines() if line.count("│") >= 2}
    assert "not_an_image: 2" in lines["rejected"] and "storage_error" not in lines["rejected"]
    assert "storage_error: 11" in lines["failed"] and "not_an_image" not in lines["failed"]
    assert lines["rejected"].split("│")[2].strip().startswith("2")
    assert lines["failed"].split("│")[2].strip().startswith("11")


# ------------------------------------------------------------------ 6. symlinks swapped in
def _swap_after_resolving(monkeypatch: pytest.MonkeyPatch, victim: Path, target: Path) -> None:
    """Let LocalStore resolve and check a path, then turn ``victim`` into a symlink to ``target``
    before it opens it: the race an attacker with write access to the source would run."""
    real = local_mod._resolve

    def racing(path: Any) -> str:
        out = real(path)
        if victim.exists() and not victim.is_symlink():
            if victim.is_dir():
                victim.rename(victim.with_name(victim.name + ".moved"))
            else:
                victim.unlink()
            victim.symlink_to(target, target_is_directory=target.is_dir())
        return out

    monkeypatch.setattr(local_mod, "_resolve", racing)


def test_a_symlink_swapped_in_after_the_check_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    st = LocalStore(root, create=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    (root / "real.png").write_bytes(b"ok")
    (root / "link.png").symlink_to(root / "real.png")  # a link inside the root is served...
    assert st.get("link.png") == b"ok"
    _swap_after_resolving(monkeypatch, root / "real.png", outside / "secret.png")
    with pytest.raises(KeyRefused):  # ...but not once its target was swapped for a link out
        st.get("link.png")
    for op in (st.get, st.head):  # the swapped name itself is now a link out: refused too
        with pytest.raises(KeyRefused):
            op("real.png")


def test_a_directory_swapped_for_a_symlink_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    st = LocalStore(root, create=True)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "a.png").write_bytes(b"secret")
    st.put("sub/a.png", b"ok")
    (root / "alias").symlink_to(root / "sub", target_is_directory=True)
    assert st.get("alias/a.png") == b"ok"  # a directory link inside the root is followed, checked
    _swap_after_resolving(monkeypatch, root / "sub", outside / "sub")
    with pytest.raises(KeyRefused):
        st.get("alias/a.png")
    with pytest.raises(KeyRefused):
        st.put("alias/new.png", b"x")
    monkeypatch.undo()
    with pytest.raises(KeyRefused):  # and without a race: the swapped directory is simply refused
        st.get("sub/a.png")
    with pytest.raises(KeyRefused):
        st.delete("sub/a.png")
    assert sorted(p.name for p in (outside / "sub").iterdir()) == ["a.png"]
    assert (outside / "sub" / "a.png").read_bytes() == b"secret"


def test_worker_batches_refuse_unsafe_keys_too(s3_settings: Any, s3_bucket: str, s3_client: Any,
                                               migrated_db_url: str, codec: Any) -> None:
    """The Celery route (submit -> process_batch) goes through the same refusal as run_job."""
    bucket = s3_bucket.removeprefix("s3://")
    for key in ("a//double.png", "ok/k01.png"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=IMG)
    st = s3_settings.model_copy(update={"database_url": migrated_db_url})
    batches: list[Any] = []
    job_id = jobs.submit(s3_bucket, accept_opts(replace=True), runtime=runtime_for(st), db_url=migrated_db_url,
                         enqueue=lambda *args: batches.append(args))
    for _job, source, dest, items, options in batches:
        jobs.process_batch(job_id, source, dest, items, options, runtime=runtime_for(st), codec=codec)
    s = jobs.status(job_id, migrated_db_url, runtime=runtime_for(st))
    assert s.status == "finished" and s.reasons == {"unsafe_key": 1} and s.count("accepted") == 1
    left = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert left == {"a//double.png", "ok/k01.png.cxa"}


def test_listing_reason_codes_are_one_list_and_documented() -> None:
    """The codes recorded before any fetch are the ones ``vocabulary.LISTING_REJECTIONS`` names, and
    the README's reason-code table lists each of them."""
    from archiver.vocabulary import CONTENT_REJECTIONS, LISTING_REJECTIONS

    assert set(EXPECTED_REFUSED.values()) | {"unsafe_key"} == LISTING_REJECTIONS
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for code in (*LISTING_REJECTIONS, "dest_unwritable"):
        assert f"| `{code}` |" in readme or f"`{code}`" in readme, code
    assert "unsafe_key" in CONTENT_REJECTIONS  # a schedule does not pay to refuse it every night
