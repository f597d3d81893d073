"""Scheduled archive jobs, declared in ``config/schedules.toml`` and run by Celery beat.

Each ``[[schedule]]`` names a source, a cron expression (or, for development and tests, an
interval in seconds), the age an object must reach before it is archived, and the acceptance
thresholds. The file is validated completely when beat (or a worker) starts, so a typo in a cron
field is an error at start, not a silently missing run at 3 a.m.

Beat only *triggers* a run; the worker that receives the trigger calls
:func:`archiver.jobs.start_scheduled`, which refuses to start a second run of a schedule while
an earlier one is still pending/running (checked and inserted under a database lock, so two
beats — or two triggers delivered at once — cannot both start one).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .codec.default import EFFORTS
from .errors import ConfigError

TASK_NAME = "archiver.run_schedule"


class Schedule(BaseModel):
    """One scheduled archive job."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # five cron fields: minute hour day-of-month month day-of-week (UTC), e.g. "0 3 * * *"
    cron: str | None = None
    # alternative to cron, for development and tests: run every N seconds
    interval_seconds: float | None = Field(default=None, gt=0)
    source: str
    dest: str | None = None
    # only objects last modified at least this many days ago are archived
    older_than_days: float = Field(default=30.0, ge=0)
    min_psnr: float = Field(default=40.0, gt=0, lt=100)
    min_saving: float = Field(default=0.1, ge=0, lt=1)
    replace: bool = False
    # also re-encode objects archived with an older model (see PipelineOptions.upgrade)
    upgrade: bool = False
    # tiers this schedule may store: lossy | lossless | best (unset: the setting `policy`)
    policy: Literal["lossy", "lossless", "best"] | None = None
    # try again the object versions an earlier job rejected for a reason that would repeat
    # (default: leave them out; see jobs.rejection_repeats)
    retry_rejected: bool = False
    chunk_size: int | None = Field(default=None, ge=1, le=10_000)
    # model id to archive with (a packaged model or one in the model store); unset: settings' model_id
    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    # encoder effort (codec/default.py EFFORTS); unset: settings' effort
    effort: int | None = Field(default=None, ge=min(EFFORTS), le=max(EFFORTS))
    enabled: bool = True
    # a run still "running" after this many hours no longer blocks the next one (it is marked
    # failed as stale), so a lost run cannot disable its schedule forever
    max_runtime_hours: float = Field(default=24.0, gt=0)

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, v: str | None) -> str | None:
        if v is None:
            return v
        fields = v.split()
        if len(fields) != 5:
            raise ValueError(f"cron expression {v!r} must have 5 fields: minute hour day-of-month month day-of-week")
        try:
            _crontab(v)
        except Exception as e:  # noqa: BLE001 - celery raises ValueError / ParseException subclasses
            raise ValueError(f"invalid cron expression {v!r}: {e}") from None
        return " ".join(fields)

    @field_validator("source")
    @classmethod
    def _source_is_url(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("source must be a store URL (s3://bucket/prefix, file:///dir or a path)")
        return v

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError(f"schedule {self.name!r}: give exactly one of cron or interval_seconds")
        return self

    def celery_schedule(self) -> Any:
        if self.cron is not None:
            return _crontab(self.cron)
        from celery.schedules import schedule

        return schedule(self.interval_seconds)


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: list[Schedule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ScheduleFile:
        seen: set[str] = set()
        for s in self.schedule:
            if s.name in seen:
                raise ValueError(f"schedule name {s.name!r} is used twice")
            seen.add(s.name)
        return self


def _crontab(expr: str) -> Any:
    from celery.schedules import crontab

    minute, hour, dom, month, dow = expr.split()
    c = crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    # crontab parses lazily in places; touching the sets makes bad fields fail now
    _ = (c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week)
    return c


def load_schedules(path: str | Path, *, missing_ok: bool = True) -> list[Schedule]:
    """Read and validate a schedules file; a missing file means no schedules (if ``missing_ok``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        if missing_ok:
            return []
        raise ConfigError(f"schedules file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"schedules file {p} is not valid TOML: {e}") from None
    try:
        return ScheduleFile.model_validate(raw).schedule
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"  - {loc or '(file)'}: {msg}")
        raise ConfigError(f"invalid schedules file {p}:\n" + "\n".join(lines)) from None


def beat_schedule(schedules: list[Schedule], queue: str = "recompress") -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` mapping for Celery: one entry per enabled schedule.

    The whole validated entry travels in the message (JSON), so the worker runs exactly what
    beat was configured with even if its own copy of the file differs.
    """
    out: dict[str, dict[str, Any]] = {}
    for s in schedules:
        if not s.enabled:
            continue
        out[f"schedule:{s.name}"] = {
            "task": TASK_NAME,
            "schedule": s.celery_schedule(),
            "args": (s.model_dump(mode="json"),),
            "options": {"queue": queue, "expires": _expires(s)},
        }
    return out


def _expires(s: Schedule) -> float:
    """A trigger nobody picked up within this time is dropped (no worker running for hours must
    not start a backlog of runs later). Each worker takes triggers before queued batches (they
    have a higher priority), so a live worker picks one up within one batch's time."""
    if s.interval_seconds is not None:
        return max(60.0, 10 * s.interval_seconds)
    return 3600.0
