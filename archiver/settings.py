"""One validated ``Settings`` object for every front door (CLI, workers, HTTP server).

Precedence, lowest to highest:

1. the defaults embedded below (so the product runs with no configuration at all),
2. a TOML file: ``$ARCHIVER_CONFIG`` if set (it must then exist), else ``config/archiver.toml``
   under the current directory if that file exists,
3. environment variables ``ARCHIVER_<FIELD>``; nested groups use ``__``
   (``ARCHIVER_S3__ENDPOINT_URL``),
4. keyword overrides passed to :func:`load_settings` (what CLI options use).

Why validate everything up front: a batch job over millions of objects must not discover a typo
in a threshold after an hour of GPU time, so unknown keys and out-of-range values are refused at
start with a :class:`~archiver.errors.ConfigError` that names the setting, the offending value
and where it can be set.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .codec.default import DEFAULT_EFFORT, DEFAULT_MODEL, EFFORTS
from .errors import ConfigError

ENV_PREFIX = "ARCHIVER_"
CONFIG_ENV = "ARCHIVER_CONFIG"
DEFAULT_CONFIG_FILE = Path("config") / "archiver.toml"

MiB = 1024 * 1024
S3_MIN_PART = 5 * MiB  # S3 refuses multipart parts smaller than this (except the last one)

# The config file chosen by load_settings(); read by settings_customise_sources, which is a
# classmethod and therefore cannot receive it as an argument.
_config_file: ContextVar[Path | None] = ContextVar("archiver_config_file", default=None)


def find_config_file() -> Path | None:
    """The TOML file that applies now: ``$ARCHIVER_CONFIG``, else ``./config/archiver.toml`` if present."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={explicit!r}: no such configuration file")
        return path
    if DEFAULT_CONFIG_FILE.is_file():
        return DEFAULT_CONFIG_FILE
    return None


class S3Settings(BaseModel):
    """How we talk to S3-compatible storage (AWS, MinIO, Ceph RGW, R2, moto...)."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str = "us-east-1"
    # MinIO/Ceph and local test servers usually need path-style addressing (http://host/bucket/key).
    path_style: bool = False
    # "when_required" keeps botocore >= 1.36 from sending CRC checksums that many non-AWS
    # S3 implementations reject or mishandle; "when_supported" is AWS's newer default.
    checksum_mode: Literal["when_required", "when_supported"] = "when_required"
    multipart_threshold: ByteSize = Field(default=ByteSize(8 * MiB), ge=S3_MIN_PART)
    multipart_chunksize: ByteSize = Field(default=ByteSize(8 * MiB), ge=S3_MIN_PART)
    max_concurrency: int = Field(default=4, ge=1, le=64)
    # botocore "adaptive" retry mode: total attempts including the first one.
    max_attempts: int = Field(default=10, ge=1, le=100)
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    # Keys per ListObjectsV2 page (S3 caps it at 1000); smaller pages only help tests.
    list_page_size: int = Field(default=1000, ge=1, le=1000)
    # Leave unset to use boto3's usual chain (env AWS_*, ~/.aws, instance/pod roles).
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:9000")
        return v


class WorkerSettings(BaseModel):
    """Celery workers, beat and job submission (``archiver submit``, ``celery -A workers ...``)."""

    model_config = ConfigDict(extra="forbid")

    # Result backend for task results (the retrieval task returns images); unset = broker_url.
    result_backend: str | None = None
    # Seconds a delivered-but-unacknowledged task stays invisible before Redis hands it to another
    # worker: how long a crashed worker's batch waits. A running batch renews its delivery every
    # lease_heartbeat seconds, so this only has to cover a few missed renewals (and the longest
    # retry countdown, which a worker waits out while holding the message).
    visibility_timeout: int = Field(default=600, ge=5)
    # Seconds between a running batch's lease renewals on Redis; 0 = no renewal, and then
    # visibility_timeout must exceed the longest batch.
    lease_heartbeat: float = Field(default=60.0, ge=0)
    # How often (seconds) workers sweep for tasks whose visibility timeout expired.
    unacked_restore_interval: float = Field(default=10.0, gt=0)
    # Transient errors (storage throttling/outage, database down) retry the batch with exponential
    # backoff: retry_backoff * 2**n seconds, capped at retry_backoff_max, at most max_retries times.
    max_retries: int = Field(default=8, ge=0, le=100)
    retry_backoff: float = Field(default=2.0, gt=0)
    retry_backoff_max: float = Field(default=300.0, gt=0)
    # An object whose processing was started this many times without finishing (the worker died
    # on it each time) is recorded as failed ("poison_object") and skipped.
    poison_attempts: int = Field(default=3, ge=1, le=100)
    # Threads per batch that prefetch/decode the next objects while the codec works.
    io_threads: int = Field(default=2, ge=1, le=32)
    # Images inside the codec at once per process. 1 on a CPU (torch already uses every core);
    # 2 on a GPU lets one image's CPU-side work (entropy coding, PSNR) overlap another's GPU work.
    codec_slots: int = Field(default=1, ge=1, le=8)
    # Objects per task when a listing is split into batches.
    chunk_size: int = Field(default=16, ge=1, le=10_000)
    # Scheduled archive jobs for `celery -A workers beat` (relative to the current directory).
    schedules_file: str = "config/schedules.toml"
    # Queue of the schedule triggers. On "recompress" they are taken before queued batches (higher
    # priority); a separate queue needs a worker consuming it (`-Q ...,<queue>`).
    schedule_queue: str = Field(default="recompress", pattern=r"^[A-Za-z0-9._-]+$")
    # Prometheus metrics of this worker (all its prefork processes, summed through
    # PROMETHEUS_MULTIPROC_DIR) served over HTTP by the worker's parent process; 0 = off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Address the worker's metrics listen on; the endpoint has no authentication, so loopback
    # unless the scraper needs another address (and only the scraper can reach it).
    metrics_host: str = "127.0.0.1"

    # Seconds `archiver submit` (and a scheduled run) keeps retrying, with backoff, a broker that
    # is down or restarting before it gives up with "broker_unavailable" (the job stays resumable).
    submit_broker_wait: float = Field(default=120.0, ge=0)
    # A running job is shown "stalled" once it made no progress and no batch of it is queued or
    # held (a live lease) for visibility_timeout + stall_margin seconds: its queue was lost.
    stall_margin: float = Field(default=120.0, ge=0)

    @model_validator(mode="after")
    def _timeouts_fit(self) -> WorkerSettings:
        # A retried batch waits out its countdown on a worker, unacknowledged and unrenewed: a
        # countdown past the visibility timeout would hand it to a second worker as well.
        if self.visibility_timeout <= self.retry_backoff_max:
            raise ValueError(f"workers.visibility_timeout ({self.visibility_timeout} s) must exceed "
                             f"workers.retry_backoff_max ({self.retry_backoff_max:g} s)")
        if self.lease_heartbeat and self.visibility_timeout < 3 * self.lease_heartbeat:
            raise ValueError(f"workers.visibility_timeout ({self.visibility_timeout} s) must be at least 3 x "
                             f"workers.lease_heartbeat ({self.lease_heartbeat:g} s), so that one late renewal "
                             "does not hand a running batch to a second worker")
        return self


class ServerSettings(BaseModel):
    """The HTTP retrieval endpoint (``archiver serve``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Decodes running at once; further requests wait (the codec already uses every core/the GPU).
    max_concurrent_decodes: int = Field(default=2, ge=1, le=256)
    # Cache-Control max-age for decoded images (content is immutable: the ETag names the bitstream).
    cache_max_age: int = Field(default=31_536_000, ge=0)
    # Whether /health answers 503 when the Celery broker is unreachable (retrieval does not need it).
    require_broker: bool = False
    # Serve /docs, /redoc and /openapi.json (off: they describe the API to anyone who asks).
    enable_docs: bool = False
    # Seconds a request may wait for a decode slot before it is refused (503 server_busy + Retry-After).
    slot_wait_timeout_s: float = Field(default=60.0, gt=0)
    # Seconds one decode may run before the request is answered 503 decode_timeout and its slot
    # freed; unset = no limit. (The decode thread finishes in the background, in a bounded pool.)
    decode_timeout_s: float | None = Field(default=None, gt=0)
    # Requests one token may have in flight at once; more get 429 + Retry-After.
    token_max_concurrent: int = Field(default=4, ge=1, le=1024)
    # Per-token rate limit: a token bucket refilled at token_rate_per_s, holding token_burst requests.
    token_rate_per_s: float = Field(default=10.0, gt=0)
    token_burst: int = Field(default=20, ge=1, le=100_000)
    # GET /metrics (Prometheus): "token" = any active bearer token (as /objects), "open" = no token
    # (only where nobody but the scraper can reach the port), "off" = no such route.
    metrics: Literal["token", "open", "off"] = "token"


class Settings(BaseSettings):
    """Everything configurable. Field docs are in ``config/archiver.toml``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    # --- database -------------------------------------------------------------------------
    database_url: str = "sqlite:///archiver.sqlite"

    # --- codec and acceptance ---------------------------------------------------------------
    model_id: str = DEFAULT_MODEL
    device: str = "auto"
    # CPU threads for torch's intra-op pool; 0 leaves torch's default (one per core).
    torch_threads: int = Field(default=0, ge=0, le=512)
    min_psnr: float = Field(default=40.0, gt=0, lt=100)
    min_saving: float = Field(default=0.1, ge=0, lt=1)
    # Encoder effort (codec/default.py EFFORTS): 0 rounds the latents as before issue 24; 1 adds
    # rate-distortion optimised quantisation (about 4 % fewer bytes at equal PSNR, ~1.3x the
    # encoder time). The decoder is the same for every level.
    effort: int = Field(default=DEFAULT_EFFORT, ge=min(EFFORTS), le=max(EFFORTS))
    # Which tiers a job may store (archiver.lossless.Policy): lossy (the neural codec), lossless
    # (JPEG originals as bit-exact JPEG XL, everything else skipped) or best (per object the smaller
    # verified archive of the two).
    policy: Literal["lossy", "lossless", "best"] = "best"
    # Under policy best, the lossless transcode is kept when it is at most this fraction larger
    # than the neural stream (0: only on a tie, so best never stores more than the smaller tier;
    # 0.05 would keep an exact copy of the original for up to 5 % more bytes).
    best_lossless_margin: float = Field(default=0.0, ge=0, lt=1)
    # Where models made after the package shipped (`archiver finetune`) are published and every
    # decode host fetches them from: a directory or s3://bucket/prefix/ (unset: packaged models only).
    model_store: str | None = None
    # Local cache of weights fetched from model_store (unset: $XDG_CACHE_HOME/archiver/models).
    model_cache_dir: str | None = None

    # --- input guards -----------------------------------------------------------------------
    max_object_bytes: ByteSize = Field(default=ByteSize(256 * MiB), gt=0)
    max_pixels: int = Field(default=120_000_000, gt=0)

    # --- where results go -------------------------------------------------------------------
    dest_mode: Literal["beside", "prefix"] = "beside"
    dest: str | None = None
    container_suffix: str = Field(default=".cxa", pattern=r"^\.[A-Za-z0-9][A-Za-z0-9._-]*$")

    # --- storage ----------------------------------------------------------------------------
    s3: S3Settings = Field(default_factory=S3Settings)

    # --- workers ----------------------------------------------------------------------------
    broker_url: str = "redis://127.0.0.1:6379/0"
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    # --- report prices ----------------------------------------------------------------------
    price_per_gb_month: float = Field(default=0.023, ge=0)
    gpu_price_per_hour: float = Field(default=2.5, ge=0)
    cpu_price_per_hour: float = Field(default=0.10, ge=0)
    # --- pilot --------------------------------------------------------------------------------
    # classical codecs searched beside ours in `archiver pilot` (archiver.baselines.codecs):
    # none, fast (all four codecs at fast encoder settings) or all (recommended settings, slower)
    pilot_baselines: Literal["none", "fast", "all"] = "fast"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Log lines of the workers and the server: "text", or "json" (one object per line, with the
    # job id, the object key cut to 120 characters and the reason code as fields).
    log_format: Literal["text", "json"] = "text"
    # Seconds between plain progress lines of long CLI commands when stderr is not a terminal (cron,
    # systemd, container logs), where a progress bar does not animate; 0 = none.
    log_progress_every: float = Field(default=30.0, ge=0)

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, v: str) -> str:
        # Imported here so that importing settings stays cheap.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError("not a database URL; expected e.g. sqlite:///archiver.sqlite or "
                             "postgresql://user@host:5432/db") from None
        try:
            url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"unknown database backend {url.drivername!r}; use sqlite or postgresql") from None
        return v

    @field_validator("device")
    @classmethod
    def _device_known(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps"):
            return v
        if v.startswith("cuda:") and v[5:].isdigit():
            return v
        raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")

    @field_validator("dest")
    @classmethod
    def _dest_is_store_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        scheme = urlsplit(v).scheme
        if scheme not in ("s3", "file", ""):
            raise ValueError("must be s3://bucket/prefix, file:///path or a local path")
        return v

    @field_validator("model_store")
    @classmethod
    def _model_store_is_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if urlsplit(v).scheme not in ("s3", "file", ""):
            raise ValueError("must be s3://bucket/prefix/, file:///path or a local directory")
        return v

    @model_validator(mode="after")
    def _prefix_needs_dest(self) -> Settings:
        if self.dest_mode == "prefix" and not self.dest:
            raise ValueError("dest_mode = 'prefix' needs dest (e.g. s3://archive-bucket/cxa/)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """overrides > env > TOML > defaults; no .env files or secret dirs (explicit is better)."""
        path = _config_file.get() or find_config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _describe(err: Mapping[str, Any], config_file: Path | None) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
    name = ".".join(loc)
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not name:  # model-level validator
        return f"  - {msg}"
    if isinstance(err.get("input"), dict) and err.get("type") == "value_error":
        # a group's own validator (e.g. [workers] settings that do not fit together): name the group
        env = ENV_PREFIX + "__".join(p.upper() for p in loc) + "__*"
        where = f"env {env}" + (f" or [{name}] in {config_file}" if config_file is not None else "")
        return f"  - {msg} (set via {where})"
    env = ENV_PREFIX + "__".join(p.upper() for p in loc)
    where = f"env {env}"
    if config_file is not None:
        where += f" or {name} in {config_file}"
    if err.get("type") == "extra_forbidden":
        return f"  - {name}: unknown setting, check the spelling (from {where})"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"  - {name}{shown}: {msg} (set via {where})"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings, turning every failure into a readable :class:`ConfigError`.

    ``config_file`` replaces the ``$ARCHIVER_CONFIG`` / ``./config/archiver.toml`` lookup;
    ``overrides`` (e.g. from CLI options) win over everything else. ``None`` overrides are
    ignored so that CLI options that were not given fall through to the lower layers.
    """
    path: Path | None
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration file {str(config_file)!r} does not exist")
    else:
        path = find_config_file()
    token = _config_file.set(path)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [_describe(e, path) for e in exc.errors()]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    finally:
        _config_file.reset(token)
