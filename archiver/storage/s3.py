"""S3 and S3-compatible object storage through boto3.

Why these choices:

* ``request_checksum_calculation`` / ``response_checksum_validation`` default to
  ``when_required``: botocore >= 1.36 otherwise adds CRC trailers that several S3-compatible
  services reject. Integrity does not depend on them: our sha256 travels as user metadata
  ``sha256`` and the pipeline verifies it on read-back.
* ``adaptive`` retries: client-side rate limiting that backs off on ``SlowDown``/throttling,
  which is what a batch job hammering one bucket runs into.
* Listing streams pages from the ``list_objects_v2`` paginator; we never hold all keys.
* ``get`` checks ``Content-Length`` from the response headers and refuses an object over the cap
  before reading its body (and stops reading at the cap in case the header lied).
* ``put`` goes through ``upload_fileobj`` so objects above the threshold use multipart upload.
  A multipart ETag is not an MD5 of the content, hence our own sha256 in the metadata.
* Every botocore/boto3 failure becomes a :class:`~archiver.errors.StorageError` whose
  ``transient`` flag says whether retrying later may help (throttling, 5xx, connection errors).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from ..errors import StorageError
from .base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    PreconditionFailed,
    checked_metadata,
    read_all,
)

if TYPE_CHECKING:
    from ..settings import S3Settings

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_PERMANENT_CODES = {
    "NoSuchBucket": "no_such_bucket",
    "AccessDenied": "access_denied",
    "InvalidAccessKeyId": "access_denied",
    "SignatureDoesNotMatch": "access_denied",
    "AllAccessDisabled": "access_denied",
}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``); the prefix acts as a folder."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)", code="bad_url")
    prefix = parts.path.strip("/")
    return parts.netloc, (prefix + "/" if prefix else "")


def map_error(exc: BaseException, what: str) -> StorageError:
    """Translate a boto3/botocore exception into a StorageError with a meaningful ``transient``."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: {code or status} {err.get('Message', '')}".rstrip()
        if code in _NOT_FOUND_CODES or (status == 404 and code not in _PERMANENT_CODES):
            return ObjectNotFound(message)
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailed(message)
        if code in _PERMANENT_CODES:
            return StorageError(message, code=_PERMANENT_CODES[code])
        if status == 403:
            return StorageError(message, code="access_denied")
        transient = code in _TRANSIENT_CODES or status >= 500 or status == 429
        return StorageError(message, transient=transient)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"{what}: {exc}", code="no_credentials")
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return StorageError(f"{what}: {exc}", transient=True)
    if isinstance(exc, S3UploadFailedError):
        text = str(exc)
        for code, our_code in _PERMANENT_CODES.items():
            if code in text:
                return StorageError(f"{what}: {text}", code=our_code)
        return StorageError(f"{what}: {text}", transient=True)
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}", transient=isinstance(exc, OSError))


def _is_transient_read(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and exc.transient and not isinstance(exc, ObjectTooLarge)


def make_client(s3: S3Settings) -> Any:
    """A boto3 S3 client configured from settings (thread-safe; share it across threads)."""
    config = Config(
        region_name=s3.region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if s3.path_style else "auto"},
        retries={"mode": "adaptive", "max_attempts": s3.max_attempts},
        request_checksum_calculation=s3.checksum_mode,
        response_checksum_validation=s3.checksum_mode,
        connect_timeout=s3.connect_timeout,
        read_timeout=s3.read_timeout,
        max_pool_connections=max(10, s3.max_concurrency * 2),
    )
    session = boto3.session.Session(
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
        aws_session_token=s3.session_token.get_secret_value() if s3.session_token else None,
        region_name=s3.region,
    )
    return session.client("s3", endpoint_url=s3.endpoint_url, config=config)


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``; keys are relative to the prefix."""

    def __init__(self, url: str, s3: S3Settings | None = None, *, client: Any = None) -> None:
        if s3 is None:
            from ..settings import S3Settings

            s3 = S3Settings()
        self.settings = s3
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.client = client if client is not None else make_client(s3)
        self.transfer_config = TransferConfig(
            multipart_threshold=int(s3.multipart_threshold),
            multipart_chunksize=int(s3.multipart_chunksize),
            max_concurrency=s3.max_concurrency,
            use_threads=s3.max_concurrency > 1,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def _full(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise StorageError("empty key", code="key_refused")
        return self.prefix + key

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def list(self, prefix: str = "", *, start_after: str | None = None,
             include_refused: bool = False) -> Iterator[ObjectInfo]:
        # every listed S3 key is a servable object (``include_refused`` has nothing to add); keys
        # that could not be restored to a directory are refused by the pipeline (``unsafe_key``)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(**kwargs, PaginationConfig={"PageSize": self.settings.list_page_size})
        cut = len(self.prefix)
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    full = item["Key"]
                    if full.endswith("/"):
                        continue  # "folder" placeholder objects created by consoles
                    yield ObjectInfo(
                        key=full[cut:],
                        size=int(item["Size"]),
                        etag=str(item.get("ETag", "")).strip('"'),
                        last_modified=_aware(item["LastModified"]),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise map_error(exc, f"listing {self.url}{prefix}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except (ClientError, BotoCoreError) as exc:
            err = map_error(exc, f"head {self.url_for(key)}")
            if isinstance(err, ObjectNotFound):
                return None
            raise err from exc
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            etag=str(resp.get("ETag", "")).strip('"'),
            last_modified=_aware(resp["LastModified"]),
            version_id=resp.get("VersionId"),
            metadata={k.lower(): v for k, v in resp.get("Metadata", {}).items()},
            content_type=resp.get("ContentType"),
        )

    @retry(
        retry=retry_if_exception(_is_transient_read),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=5),
        reraise=True,
    )
    def get(self, key: str, max_bytes: int | None = None, *, if_match: str | None = None) -> bytes:
        # botocore retries requests, but not a body stream that breaks halfway; tenacity does.
        what = f"get {self.url_for(key)}"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if if_match is not None:
            kwargs["IfMatch"] = '"' + if_match.strip('"') + '"'
        try:
            resp = self.client.get_object(**kwargs)
            body = resp["Body"]
            try:
                size = int(resp.get("ContentLength", 0))
                if max_bytes is not None and size > max_bytes:
                    raise ObjectTooLarge(f"{what}: {size} bytes, more than the {max_bytes}-byte limit")
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            finally:
                body.close()
        except (ClientError, BotoCoreError, OSError) as exc:
            raise map_error(exc, what) from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(f"{what}: more than the {max_bytes}-byte limit")
        return data

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        content = read_all(data)
        meta = checked_metadata(content, metadata)
        extra: dict[str, Any] = {"Metadata": meta}
        if content_type:
            extra["ContentType"] = content_type
        what = f"put {self.url_for(key)}"
        try:
            self.client.upload_fileobj(
                io.BytesIO(content), self.bucket, self._full(key), ExtraArgs=extra, Config=self.transfer_config
            )
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise map_error(exc, what) from exc
        info = self.head(key)
        if info is None:
            raise StorageError(f"{what}: object not visible after upload", transient=True)
        return info

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (ClientError, BotoCoreError) as exc:
            err = map_error(exc, f"delete {self.url_for(key)}")
            if not isinstance(err, ObjectNotFound):
                raise err from exc

    def close(self) -> None:
        self.client.close()


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
