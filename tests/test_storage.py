"""Storage contract tests: the same expectations against LocalStore and S3Store (moto over HTTP)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from archiver.errors import KeyRefused, StorageError
from archiver.settings import Settings
from archiver.storage import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    PreconditionFailed,
    open_store,
)
from archiver.storage.s3 import S3Store, map_error, parse_s3_url

MiB = 1024 * 1024


def _s3_store(s3_bucket: str, s3_settings: Settings, **s3_overrides: Any) -> S3Store:
    s3 = s3_settings.s3.model_copy(update=s3_overrides)
    return S3Store(s3_bucket + "/some/prefix", s3)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root", create=True)
    s3_bucket = request.getfixturevalue("s3_bucket")
    s3_settings = request.getfixturevalue("s3_settings")
    return _s3_store(s3_bucket, s3_settings, list_page_size=7)


# ------------------------------------------------------------------------ contract (both)
def test_round_trip_with_sha256_metadata(store: ObjectStore) -> None:
    data = b"hello archive" * 100
    info = store.put("dir/sub/a.cxa", data, metadata={"source-etag": "abc"}, content_type="application/x-cxa")
    sha = hashlib.sha256(data).hexdigest()
    assert info.key == "dir/sub/a.cxa"
    assert info.size == len(data)
    assert info.sha256 == sha
    assert info.etag == hashlib.md5(data).hexdigest()  # single-part upload: md5 on both stores
    assert info.last_modified.tzinfo is not None
    assert store.get("dir/sub/a.cxa") == data

    head = store.head("dir/sub/a.cxa")
    assert head is not None
    assert head.size == len(data) and head.etag == info.etag
    assert head.metadata is not None
    assert head.metadata["sha256"] == sha
    assert head.metadata["source-etag"] == "abc"
    assert head.content_type == "application/x-cxa"

    store.delete("dir/sub/a.cxa")
    assert store.head("dir/sub/a.cxa") is None
    store.delete("dir/sub/a.cxa")  # idempotent


def test_overwrite_changes_etag(store: ObjectStore) -> None:
    first = store.put("k.bin", b"A" * 64)
    second = store.put("k.bin", b"B" * 64)  # same size, new content
    assert first.etag != second.etag
    assert store.get("k.bin") == b"B" * 64


def test_missing_key(store: ObjectStore) -> None:
    assert store.head("nope/missing.jpg") is None
    with pytest.raises(StorageError) as exc:
        store.get("nope/missing.jpg")
    assert isinstance(exc.value, ObjectNotFound)
    assert exc.value.code == "not_found"
    assert not exc.value.transient


def test_size_cap_refuses_before_download(store: ObjectStore) -> None:
    store.put("big.bin", b"x" * 5000)
    with pytest.raises(ObjectTooLarge) as exc:
        store.get("big.bin", max_bytes=4999)
    assert exc.value.code == "too_large"
    assert store.get("big.bin", max_bytes=5000) == b"x" * 5000


def test_if_match(store: ObjectStore) -> None:
    info = store.put("m.bin", b"one")
    assert store.get("m.bin", if_match=info.etag) == b"one"
    store.put("m.bin", b"two")
    with pytest.raises(PreconditionFailed):
        store.get("m.bin", if_match=info.etag)


def test_contradicting_sha256_refused(store: ObjectStore) -> None:
    with pytest.raises(StorageError) as exc:
        store.put("bad.bin", b"data", metadata={"sha256": "0" * 64})
    assert exc.value.code == "checksum_mismatch"
    assert store.head("bad.bin") is None


def test_list_order_prefix_and_start_after(store: ObjectStore) -> None:
    keys = ["b", "a/c/d", "a-c", "a/b", "ab", "a/b2"]
    for k in keys:
        store.put(k, k.encode())
    listed = [o.key for o in store.list()]
    assert listed == sorted(keys, key=lambda k: k.encode())
    assert [o.key for o in store.list("a/")] == ["a/b", "a/b2", "a/c/d"]
    assert [o.key for o in store.list("a/b")] == ["a/b", "a/b2"]
    assert [o.key for o in store.list(start_after="a/b")] == ["a/b2", "a/c/d", "ab", "b"]
    assert [o.key for o in store.list("zzz")] == []
    for o in store.list():
        assert o.size == len(o.key)
        assert o.etag == hashlib.md5(o.key.encode()).hexdigest()


def test_list_many_keys_paginates(store: ObjectStore) -> None:
    keys = [f"img/{i:03d}.jpg" for i in range(20)]
    for k in keys:
        store.put(k, b"j")
    calls: list[dict[str, Any]] = []
    if isinstance(store, S3Store):
        store.client.meta.events.register("before-parameter-build.s3.ListObjectsV2",
                                          lambda params, **kw: calls.append(dict(params)))
    it = store.list("img/")
    first = next(it)
    assert first.key == "img/000.jpg"
    if isinstance(store, S3Store):
        assert len(calls) == 1  # streaming: only the first page has been fetched
    rest = [o.key for o in it]
    assert [first.key, *rest] == keys
    if isinstance(store, S3Store):
        assert len(calls) == 3  # 20 keys in pages of 7
        assert all(c.get("MaxKeys") == 7 for c in calls)


def test_multipart_upload(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    if isinstance(store, S3Store):
        store = _s3_store(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_settings"),
                          multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    data = os.urandom(6 * MiB)
    info = store.put("large/photo.cxa", data)
    assert store.get("large/photo.cxa", max_bytes=7 * MiB) == data
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.size == len(data)
    if isinstance(store, S3Store):
        assert info.etag.endswith("-2")  # two parts: a multipart ETag, not an MD5
        assert info.etag != hashlib.md5(data).hexdigest()
    else:
        assert info.etag == hashlib.md5(data).hexdigest()


def test_url_for_and_open_store_round_trip(store: ObjectStore, s3_settings: Settings) -> None:
    store.put("x/y.jpg", b"1")
    reopened = open_store(store.url, s3_settings)
    assert reopened.bucket == store.bucket
    assert reopened.get("x/y.jpg") == b"1"
    url = store.url_for("x/y.jpg")
    assert url.startswith("s3://" if isinstance(store, S3Store) else "file://")
    assert url.endswith("/x/y.jpg")


# ------------------------------------------------------------------------ S3 specifics
def test_s3_url_parsing() -> None:
    assert parse_s3_url("s3://bkt") == ("bkt", "")
    assert parse_s3_url("s3://bkt/a/b/") == ("bkt", "a/b/")
    assert parse_s3_url("s3://bkt/a/b") == ("bkt", "a/b/")
    with pytest.raises(StorageError):
        parse_s3_url("s3:///nobucket")


def test_s3_prefix_isolation_and_bucket(s3_bucket: str, s3_settings: Settings, s3_client: Any) -> None:
    store = _s3_store(s3_bucket, s3_settings)
    store.put("k.jpg", b"1")
    bucket = s3_bucket.removeprefix("s3://")
    assert store.bucket == bucket
    assert s3_client.head_object(Bucket=bucket, Key="some/prefix/k.jpg")["Metadata"]["sha256"]
    s3_client.put_object(Bucket=bucket, Key="other/z.jpg", Body=b"2")
    s3_client.put_object(Bucket=bucket, Key="some/prefix/folder/", Body=b"")  # console "folder"
    assert [o.key for o in store.list()] == ["k.jpg"]


def test_s3_client_config(s3_settings: Settings) -> None:
    store = S3Store("s3://whatever", s3_settings.s3)
    cfg = store.client.meta.config
    assert cfg.request_checksum_calculation == "when_required"
    assert cfg.response_checksum_validation == "when_required"
    assert cfg.retries["mode"] == "adaptive"
    assert cfg.s3["addressing_style"] == "path"


def test_s3_missing_bucket_is_permanent(s3_settings: Settings) -> None:
    store = S3Store("s3://no-such-bucket-here", s3_settings.s3)
    with pytest.raises(StorageError) as exc:
        list(store.list())
    assert exc.value.code == "no_such_bucket"
    assert not exc.value.transient


def test_s3_unreachable_endpoint_is_transient(s3_settings: Settings) -> None:
    s3 = s3_settings.s3.model_copy(update={"endpoint_url": "http://127.0.0.1:9", "max_attempts": 1,
                                           "connect_timeout": 1.0})
    store = S3Store("s3://bkt", s3)
    with pytest.raises(StorageError) as exc:
        store.head("k")
    assert exc.value.transient


@pytest.mark.parametrize(
    ("code", "status", "transient", "our_code"),
    [
        ("SlowDown", 503, True, "storage_error"),
        ("InternalError", 500, True, "storage_error"),
        ("RequestTimeout", 400, True, "storage_error"),
        ("AccessDenied", 403, False, "access_denied"),
        ("NoSuchBucket", 404, False, "no_such_bucket"),
        ("NoSuchKey", 404, False, "not_found"),
        ("PreconditionFailed", 412, False, "changed"),
        ("InvalidArgument", 400, False, "storage_error"),
    ],
)
def test_error_mapping(code: str, status: int, transient: bool, our_code: str) -> None:
    exc = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")
    mapped = map_error(exc, "op")
    assert mapped.transient is transient
    assert mapped.code == our_code


def test_connection_error_mapping() -> None:
    assert map_error(EndpointConnectionError(endpoint_url="http://x"), "op").transient


# ------------------------------------------------------------------------ local specifics
@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../escape", "/etc/passwd", "a/./b", "a//b", "", "a\x00b", "..", "a/.."],
)
def test_local_refuses_escaping_keys(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root", create=True)
    for op in (lambda: store.get(key), lambda: store.head(key), lambda: store.put(key, b"x"),
               lambda: store.delete(key)):
        with pytest.raises(KeyRefused) as exc:
            op()
        assert exc.value.code == "key_refused"
    assert list(tmp_path.iterdir()) == [tmp_path / "root"]


def test_local_refuses_symlinks_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalStore(root, create=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "inside.txt").write_bytes(b"ok")
    (root / "good-link.txt").symlink_to(root / "inside.txt")

    with pytest.raises(KeyRefused):
        store.get("link.txt")
    with pytest.raises(KeyRefused):
        store.head("link.txt")
    with pytest.raises(KeyRefused):
        store.get("dirlink/secret.txt")
    with pytest.raises(KeyRefused):
        store.put("dirlink/new.txt", b"x")
    with pytest.raises(KeyRefused):
        store.delete("dirlink/secret.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"

    # a link that stays inside can be read; listing never follows links out, and lists a link
    # inside as refused (its target is the object, listed once: issue 27)
    assert store.get("good-link.txt") == b"ok"
    assert [o.key for o in store.list()] == ["inside.txt"]
    refused = {o.key: o.refused for o in store.list(include_refused=True) if o.refused}
    assert refused["good-link.txt"][0] == "not_a_regular_file" and "inside.txt" in refused["good-link.txt"][1]
    with pytest.raises(KeyRefused):
        store.list("../")


def test_local_atomic_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root", create=True)
    store.put("a/b.cxa", b"1" * 100)
    store.put("a/b.cxa", b"2" * 100)
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["b.cxa"]
    assert oct((tmp_path / "root" / "a" / "b.cxa").stat().st_mode & 0o777) == oct(0o644)


def test_local_etag_follows_content_not_cache(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root", create=True)
    first = store.put("f.bin", b"aaaa")
    path = tmp_path / "root" / "f.bin"
    with open(path, "r+b") as fh:  # edited in place by someone else: same inode, same size
        fh.write(b"bbbb")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    head = store.head("f.bin")
    assert head is not None
    assert head.etag == hashlib.md5(b"bbbb").hexdigest() != first.etag
    assert head.sha256 == hashlib.sha256(b"bbbb").hexdigest()
    # a file written by other tools (no xattrs) still gets md5 etag and sha256
    (tmp_path / "root" / "plain.jpg").write_bytes(b"jpeg")
    plain = store.head("plain.jpg")
    assert plain is not None and plain.sha256 == hashlib.sha256(b"jpeg").hexdigest()
    assert plain.last_modified <= dt.datetime.now(dt.timezone.utc)


def test_local_skips_special_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root", create=True)
    os.mkfifo(tmp_path / "root" / "pipe")
    (tmp_path / "root" / "real.jpg").write_bytes(b"x")
    assert [o.key for o in store.list()] == ["real.jpg"]
    assert store.head("pipe") is None
    with pytest.raises(ObjectNotFound):
        store.get("pipe")


def test_open_store_urls(tmp_path: Path, s3_settings: Settings) -> None:
    a = open_store(str(tmp_path))
    b = open_store(tmp_path.as_uri())
    assert isinstance(a, LocalStore) and isinstance(b, LocalStore)
    assert a.bucket == b.bucket == str(tmp_path.resolve())
    assert isinstance(open_store("s3://bkt/p", s3_settings), S3Store)
    with pytest.raises(StorageError):
        open_store("ftp://host/x")
