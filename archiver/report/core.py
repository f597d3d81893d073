"""The ROI report: what the archive saved, what it cost, and when it pays for itself.

Everything is computed from ``results`` rows (one row per object per job), so the report can be
regenerated at any time and filtered after the fact. Counts, byte sums, reasons and compute time
are SQL aggregates (``GROUP BY`` in the database, identical on SQLite and PostgreSQL); the
distributions (PSNR / bpp percentiles and histograms), the per-prefix breakdown and the timeline
need the individual values and are computed from one streamed pass over the rows (``yield_per``;
memory: two float arrays of 8 bytes per accepted object, one entry per prefix, <= 200 time bins).

Definitions (also printed in every format, under "assumptions"):

* **saved bytes** = sum over *accepted* rows of ``original_bytes - compressed_bytes``. An
  accepted row that a later accepted row of the same object (bucket and key) replaced — the
  original changed and was archived again, or a new model re-archived it — is **superseded**:
  counted apart, not in the savings, or every re-archive would count the object twice. Its
  compute still counts (it was spent). Likewise a rejected, failed or skipped row after which
  the object was met again (a scheduled run retries what it could not archive), or beside an
  accepted row of the object, is **retried**: outcome counts and "seen" bytes are per object,
  by the row that stands for it, while compute counts every row.
  ``saved %`` is relative to the accepted objects' original bytes; ``saved % of seen`` is
  relative to all objects' original bytes (what the whole source shrinks by).
* The storage saving is realised once the originals are replaced by their containers
  (``archiver recompress --replace``) or moved to a colder tier; the report counts every accepted
  object and shows separately how many originals have been deleted so far.
* **GB = 10^9 bytes** (decimal, as AWS bills S3 storage). $/month = saved GB x price per
  GB-month; $/year = 12 x $/month.
* **Compute** is one-off: rows that ran on a GPU contribute their recorded ``gpu_seconds``
  (accelerator-busy time); rows that ran on a CPU have no accelerator time, so their ``t_total``
  (wall time for the object: fetch, encode, verify, write) is used as compute time. GPU time is
  priced at ``gpu_price_per_hour``, CPU time at ``cpu_price_per_hour`` (a CPU machine's hour).
  Skipped rows (already archived) cost nothing.
* **Payback** = compute cost / storage saving per month (months until cumulative storage
  savings exceed the one-off compute cost). **Net first-year saving** = $/year - compute cost.
* By default the report covers recompress and scheduled jobs and leaves out pilot jobs and
  dry runs (their savings were never realised); name jobs with ``job_ids`` to include them.
"""

from __future__ import annotations

import datetime as dt
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from ..db.models import Job, Result, utcnow
from ..errors import ArchiverError
from ..vocabulary import PROCESSED, ResultStatus

GB = 10**9  # decimal gigabyte, as AWS bills storage
PERCENTILES = (5, 25, 50, 75, 95)
ROOT_PREFIX = "(root)"
UNKNOWN_TYPE = "(unknown)"
#: the original formats savings are broken down by (a JPEG archive and a PNG archive are different buyers)
FORMATS = ("JPEG", "PNG", "TIFF", "other")


def format_of(content_type: str | None) -> str:
    """The breakdown's format of a sniffed content type: JPEG, PNG, TIFF or other."""
    return {"image/jpeg": "JPEG", "image/png": "PNG", "image/tiff": "TIFF"}.get(content_type or "", "other")
REPLACED = ("superseded", "retried")  # rows another row of the same object stands in for

COMPUTE_BASIS_TEXT = {
    "gpu_seconds": "GPU rows: recorded gpu_seconds (accelerator-busy time)",
    "t_total": "CPU-only rows: t_total (wall time per object) used as compute time",
}


class ReportError(ArchiverError):
    code = "bad_report_request"


# ---- inputs ------------------------------------------------------------------------------------

def parse_when(text: str | None, *, end: bool = False) -> dt.datetime | None:
    """An ISO date or datetime as an aware UTC datetime.

    A bare date means the start of that day (UTC) for ``--since`` and the start of the *next*
    day for ``--until`` (so ``--until 2026-01-31`` includes all of January 31st). Naive times are
    taken as UTC.
    """
    if text is None or text == "":
        return None
    s = text.strip()
    try:
        if len(s) == 10:  # YYYY-MM-DD
            d = dt.date.fromisoformat(s)
            when = dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)
            return when + dt.timedelta(days=1) if end else when
        when = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{text!r} is not an ISO date or datetime (e.g. 2026-01-31 or 2026-01-31T12:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


@dataclass
class ReportFilters:
    """Which results rows the report covers. Empty/None fields do not filter."""

    job_ids: Sequence[int] = ()
    since: dt.datetime | None = None  # results.created_at >= since
    until: dt.datetime | None = None  # results.created_at <  until
    bucket: str | None = None
    prefix: str | None = None
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"job_ids": list(self.job_ids), "since": _iso(self.since), "until": _iso(self.until),
                "bucket": self.bucket, "prefix": self.prefix, "model": self.model}


@dataclass
class Pricing:
    """Prices in USD. GPU rows are priced by their accelerator-busy time at the GPU price; rows
    from CPU-only runs by their wall time at the CPU price (a CPU worker is a machine, not a GPU:
    pricing its hours as GPU hours made every CPU pilot look 25 times too expensive)."""

    price_per_gb_month: float = 0.023  # S3 Standard, first 50 TB, us-east-1
    gpu_price_per_hour: float = 2.5
    cpu_price_per_hour: float = 0.10  # a 2-vCPU cloud instance, on demand

    @classmethod
    def from_settings(cls, settings: Any, price_per_gb_month: float | None = None,
                      gpu_price_per_hour: float | None = None, cpu_price_per_hour: float | None = None) -> Pricing:
        return cls(price_per_gb_month=settings.price_per_gb_month if price_per_gb_month is None else price_per_gb_month,
                   gpu_price_per_hour=settings.gpu_price_per_hour if gpu_price_per_hour is None else gpu_price_per_hour,
                   cpu_price_per_hour=settings.cpu_price_per_hour if cpu_price_per_hour is None else cpu_price_per_hour)

    def compute_cost(self, gpu_seconds: float, cpu_seconds: float) -> float:
        return gpu_seconds / 3600.0 * self.gpu_price_per_hour + cpu_seconds / 3600.0 * self.cpu_price_per_hour


# ---- small helpers -----------------------------------------------------------------------------

def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else _utc(t).isoformat()


def _utc(t: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def _int(v: Any) -> int:
    return int(v or 0)


def pct(part: float, whole: float) -> float | None:
    """``part / whole`` as a percentage, ``None`` when the whole is zero."""
    return 100.0 * part / whole if whole else None


def prefix_of(key: str, depth: int = 1) -> str:
    """The first ``depth`` path components of ``key`` (``a/b/c.png``, 1 -> ``a/``); ``(root)`` if none."""
    parts = key.split("/")[:-1]
    if not parts:
        return ROOT_PREFIX
    return "/".join(parts[:depth]) + "/"


def money(saved_bytes: int, compute_cost: float, pricing: Pricing) -> dict[str, Any]:
    """:meth:`Money.of` as a dict (the pilot and the codec comparison store and render dicts)."""
    return asdict(Money.of(saved_bytes, compute_cost, pricing))


def distribution(values: Iterable[float], bins: int = 20) -> dict[str, Any]:
    """:meth:`Distribution.of` as a dict (the pilot and the codec comparison store and render dicts)."""
    return asdict(Distribution.of(values, bins))


def assumptions(pricing: Pricing, basis: str, prefix_depth: int = 1) -> dict[str, Any]:
    """:meth:`Assumptions.of` as a dict (the pilot stores and renders dicts)."""
    return asdict(Assumptions.of(pricing, basis, prefix_depth))


def compute_basis(gpu_rows: int, cpu_rows: int) -> str:
    if gpu_rows and cpu_rows:
        return "mixed"
    if gpu_rows:
        return "gpu_seconds"
    if cpu_rows:
        return "t_total"
    return "none"


# ---- the report's shape ------------------------------------------------------------------------
# Typed so that renderers, charts and tests read attributes a type checker can follow instead of
# string keys. ``Report.as_dict()`` is the public JSON/CSV format: its keys, their order and its
# values are exactly those of the dict ``build_report`` used to return. Field names mirror the
# JSON keys; times are kept as the JSON's ISO 8601 strings (UTC).


@dataclass(frozen=True)
class Money:
    """Storage saving per month/year at the given price, net first-year saving and payback."""

    saved_gb: float
    storage_saving_per_month: float
    storage_saving_per_year: float
    compute_cost: float
    net_saving_first_year: float
    payback_months: float | None  # None: never (no saving); 0.0: nothing to pay back

    @classmethod
    def of(cls, saved_bytes: int, compute_cost: float, pricing: Pricing) -> Money:
        saved_gb = saved_bytes / GB
        per_month = saved_gb * pricing.price_per_gb_month
        per_year = 12 * per_month
        if compute_cost <= 0:
            payback: float | None = 0.0
        elif per_month > 0:
            payback = compute_cost / per_month
        else:
            payback = None
        return cls(saved_gb=saved_gb, storage_saving_per_month=per_month, storage_saving_per_year=per_year,
                   compute_cost=compute_cost, net_saving_first_year=per_year - compute_cost, payback_months=payback)


@dataclass(frozen=True)
class Percentiles:
    """Linear-interpolation percentiles (numpy's default); None when there are no values."""

    p5: float | None
    p25: float | None
    p50: float | None
    p75: float | None
    p95: float | None


@dataclass(frozen=True)
class Histogram:
    edges: list[float]  # len(counts) + 1 bin edges; both empty when there are no values
    counts: list[int]


@dataclass(frozen=True)
class Distribution:
    """count/min/mean/max, percentiles and a histogram of one metric."""

    count: int
    min: float | None
    mean: float | None
    max: float | None
    percentiles: Percentiles
    histogram: Histogram

    @classmethod
    def of(cls, values: Iterable[float | None], bins: int = 20) -> Distribution:
        """Non-finite and missing values are left out; few values get fewer, wider bins."""
        a = np.fromiter((v for v in values if v is not None), dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size == 0:
            return cls(count=0, min=None, mean=None, max=None,
                       percentiles=Percentiles(**{f"p{p}": None for p in PERCENTILES}),
                       histogram=Histogram(edges=[], counts=[]))
        bins = min(bins, max(6, 2 * math.ceil(math.sqrt(a.size))))
        lo, hi = float(a.min()), float(a.max())
        if hi - lo < 1e-9:  # all equal: one bin around the value
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(a, bins=bins, range=(lo, hi))
        return cls(count=int(a.size), min=float(a.min()), mean=float(a.mean()), max=float(a.max()),
                   percentiles=Percentiles(**{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}),
                   histogram=Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts]))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Distribution:
        """Back from :func:`distribution`'s dict (the pilot keeps its sections as dicts)."""
        return cls(count=d["count"], min=d["min"], mean=d["mean"], max=d["max"],
                   percentiles=Percentiles(**d["percentiles"]), histogram=Histogram(**d["histogram"]))


@dataclass(frozen=True)
class Assumptions:
    """The prices and definitions a report (or pilot) used, with the notes printed beside it."""

    price_per_gb_month: float
    gb_bytes: int
    gpu_price_per_hour: float
    cpu_price_per_hour: float
    compute_basis: str
    compute_basis_text: str
    notes: list[str]

    @classmethod
    def of(cls, pricing: Pricing, basis: str, prefix_depth: int = 1) -> Assumptions:
        return cls(price_per_gb_month=pricing.price_per_gb_month, gb_bytes=GB,
                   gpu_price_per_hour=pricing.gpu_price_per_hour, cpu_price_per_hour=pricing.cpu_price_per_hour,
                   compute_basis=basis, compute_basis_text=COMPUTE_BASIS_TEXT.get(basis, basis),
                   notes=_notes(pricing, basis, prefix_depth))


@dataclass(frozen=True)
class JobInfo:
    """A job the report covers, with the thresholds and options it ran with."""

    id: int
    kind: str
    status: str
    source: str
    dest: str | None
    model_id: str
    min_psnr: float | None
    min_saving: float | None
    replace: bool | None
    dry_run: bool | None
    sample_size: int | None
    seed: int | None
    created_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, j: Job) -> JobInfo:
        opts = (j.settings or {}).get("options") or {}
        return cls(id=j.id, kind=j.kind, status=j.status, source=j.source, dest=j.dest, model_id=j.model_id,
                   min_psnr=opts.get("min_psnr"), min_saving=opts.get("min_saving"), replace=opts.get("replace"),
                   dry_run=opts.get("dry_run"), sample_size=j.sample_size, seed=j.seed,
                   created_at=_iso(j.created_at), finished_at=_iso(j.finished_at))


@dataclass(frozen=True)
class Threshold:
    """One distinct (model, PSNR floor, minimum saving) the covered jobs ran with."""

    model_id: str
    min_psnr: float | None
    min_saving: float | None


@dataclass(frozen=True)
class Counts:
    """Objects by outcome, each object once, by the row that stands for it; ``superseded`` and
    ``retried`` count the rows another row of the same object replaced (see the module docstring)."""

    seen: int
    accepted: int
    rejected: int
    failed: int
    skipped: int
    pending: int
    superseded: int
    retried: int
    originals_deleted: int
    other: dict[str, int] = field(default_factory=dict)  # statuses outside the vocabulary (still in ``seen``)

    @classmethod
    def of(cls, rows_by_status: dict[str, int], originals_deleted: int) -> Counts:
        """From the number of rows per status, superseded and retried counted as statuses of their own."""
        n = dict(rows_by_status)
        seen = sum(c for status, c in n.items() if status not in REPLACED)  # objects, not rows
        return cls(seen=seen, accepted=n.pop("accepted", 0), rejected=n.pop("rejected", 0), failed=n.pop("failed", 0),
                   skipped=n.pop("skipped", 0), pending=n.pop("pending", 0), superseded=n.pop("superseded", 0),
                   retried=n.pop("retried", 0), originals_deleted=originals_deleted, other=n)

    def as_dict(self) -> dict[str, int]:
        """The JSON's ``counts``: pending, superseded and retried only when non-zero. Superseded,
        retried and any unknown status come in name order: the order the database's ``GROUP BY``
        gave them in when this was a dict, kept because the JSON's key order is public."""
        d = {"seen": self.seen, "accepted": self.accepted, "rejected": self.rejected, "failed": self.failed,
             "skipped": self.skipped}
        if self.pending:
            d["pending"] = self.pending
        extra = {"superseded": self.superseded, "retried": self.retried, **self.other}
        d.update(sorted((status, n) for status, n in extra.items() if n))
        d["originals_deleted"] = self.originals_deleted
        return d


@dataclass(frozen=True)
class ReasonCount:
    """How many standing rejected/failed/skipped objects gave one reason code."""

    status: str
    reason_code: str  # "(none)" when the row has none
    count: int


@dataclass(frozen=True)
class ByteTotals:
    """Bytes of all objects seen, and before/after/saved of the accepted ones."""

    seen: int
    before: int
    after: int
    saved: int
    saved_pct: float | None  # of the accepted objects' original bytes
    saved_pct_of_seen: float | None  # of all objects' original bytes


@dataclass(frozen=True)
class Group:
    """One row of a breakdown: a content type or a key prefix (``name``), what was seen under
    it and what its accepted objects saved."""

    name: str
    objects: int
    accepted: int
    bytes_seen: int
    bytes_before: int
    bytes_after: int
    saved: int
    saved_pct: float | None
    saved_pct_of_seen: float | None

    def as_dict(self, name_key: str) -> dict[str, Any]:
        """In the JSON the name sits under ``name_key`` ("content_type" or "prefix")."""
        numbers = asdict(self)
        del numbers["name"]
        return {name_key: self.name, **numbers}


@dataclass
class _GroupSums:
    """The running sums of one :class:`Group` while the rows stream past."""

    objects: int = 0
    accepted: int = 0
    bytes_seen: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def finish(self, name: str) -> Group:
        saved = self.bytes_before - self.bytes_after
        return Group(name=name, objects=self.objects, accepted=self.accepted, bytes_seen=self.bytes_seen,
                     bytes_before=self.bytes_before, bytes_after=self.bytes_after, saved=saved,
                     saved_pct=pct(saved, self.bytes_before), saved_pct_of_seen=pct(saved, self.bytes_seen))


@dataclass(frozen=True)
class Compute:
    """One-off compute: GPU rows by their gpu_seconds, CPU rows by their t_total, and its cost."""

    gpu_objects: int
    cpu_objects: int
    gpu_seconds: float
    cpu_seconds: float
    basis: str  # gpu_seconds | t_total | mixed | none
    compute_seconds: float
    compute_hours: float
    price_per_hour: float  # the GPU price (the key predates CPU pricing)
    cpu_price_per_hour: float
    cost: float


@dataclass(frozen=True)
class TimelinePoint:
    t: str  # ISO 8601, UTC: the end of a bin (the first point: the first accepted row, at 0)
    saved_cumulative: int


@dataclass(frozen=True)
class SavingsTimeline:
    """Cumulative saved bytes over time, in bins of one ``unit`` (None when nothing was saved)."""

    unit: str | None
    points: list[TimelinePoint]


@dataclass(frozen=True)
class Report:
    """The ROI report (see the module docstring); ``as_dict()`` is its JSON form."""

    generated_at: str  # ISO 8601, UTC
    filters: ReportFilters
    excluded_jobs: list[int]  # pilots and dry runs left out by default
    assumptions: Assumptions
    jobs: list[JobInfo]
    models: list[str]
    thresholds: list[Threshold]
    counts: Counts
    reasons: list[ReasonCount]
    bytes: ByteTotals
    by_content_type: list[Group]
    by_prefix: list[Group]
    prefix_depth: int
    psnr: Distribution
    bpp: Distribution
    timeline: SavingsTimeline
    compute: Compute
    money: Money
    #: savings by original format (JPEG, PNG, TIFF, other): the by_content_type rows merged
    by_format: list[Group] = field(default_factory=list)
    #: accepted objects by stored tier (``lossy`` .cxa, ``lossless`` JPEG XL)
    by_tier: list[Group] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as the plain JSON-serialisable dict of ``archiver report --format json``."""
        return {
            "generated_at": self.generated_at,
            "filters": self.filters.as_dict(),
            "excluded_jobs": list(self.excluded_jobs),
            "assumptions": asdict(self.assumptions),
            "jobs": [asdict(j) for j in self.jobs],
            "models": list(self.models),
            "thresholds": [asdict(t) for t in self.thresholds],
            "counts": self.counts.as_dict(),
            "reasons": [asdict(r) for r in self.reasons],
            "bytes": asdict(self.bytes),
            "by_content_type": [g.as_dict("content_type") for g in self.by_content_type],
            "by_prefix": [g.as_dict("prefix") for g in self.by_prefix],
            "prefix_depth": self.prefix_depth,
            "psnr": asdict(self.psnr),
            "bpp": asdict(self.bpp),
            "timeline": asdict(self.timeline),
            "compute": asdict(self.compute),
            "money": asdict(self.money),
            # added with the storage tiers (issue 26); at the end, so earlier keys keep their order
            "by_format": [g.as_dict("format") for g in self.by_format],
            "by_tier": [g.as_dict("tier") for g in self.by_tier],
        }


# ---- the report --------------------------------------------------------------------------------

def _unrealised(j: Job) -> bool:
    """Pilots and dry runs: their savings were never realised."""
    return j.kind == "pilot" or bool(((j.settings or {}).get("options") or {}).get("dry_run"))


def selected_jobs(session: Session, filters: ReportFilters) -> tuple[list[Job], list[int]]:
    """The jobs the report covers, and the ids of jobs left out by default (pilots, dry runs)."""
    jobs = list(session.execute(select(Job).order_by(Job.id)).scalars())
    if filters.job_ids:
        wanted = {int(j) for j in filters.job_ids}
        missing = wanted - {j.id for j in jobs}
        if missing:
            raise ReportError(f"no such job(s): {', '.join(map(str, sorted(missing)))}")
        return [j for j in jobs if j.id in wanted], []
    keep, excluded = [], []
    for j in jobs:
        if _unrealised(j):
            excluded.append(j.id)
        else:
            keep.append(j)
    return keep, excluded


def _replaced(session: Session) -> tuple[Any, Any]:
    """SQL conditions ``(superseded, retried)``: rows that are not their object's current outcome,
    so that an object counts once however many jobs met it (whatever the report's filters).

    * *superseded*: an accepted row that a later accepted row of the same object replaced;
    * *retried*: any other row (rejected, failed, skipped) after which the same object was met
      again, or that has an accepted row beside it. A scheduled run retries the objects it could
      not archive every time; counted per row, one unreachable photo would be "rejected" 30 times
      a month and dilute "% of all seen" as often.

    Only rows of jobs whose savings are real (not pilots or dry runs) replace others, and rows of
    pilots and dry runs are never replaced: they are snapshots."""
    unreal = [j.id for j in session.execute(select(Job)).scalars() if _unrealised(j)]
    later = aliased(Result)
    same_object = [later.bucket == Result.bucket, later.key == Result.key]
    if unreal:
        same_object.append(later.job_id.not_in(unreal))
    own = [Result.job_id.not_in(unreal)] if unreal else []
    superseded = and_(Result.status == ResultStatus.ACCEPTED, *own,
                      exists().where(*same_object, later.status == ResultStatus.ACCEPTED, later.id > Result.id))
    retried = and_(Result.status != ResultStatus.ACCEPTED, *own,
                   exists().where(*same_object, later.id != Result.id,
                                  or_(later.id > Result.id, later.status == ResultStatus.ACCEPTED)))
    return superseded, retried


def _where(filters: ReportFilters, excluded_jobs: Sequence[int]) -> list[Any]:
    conds: list[Any] = []
    if filters.job_ids:
        conds.append(Result.job_id.in_([int(j) for j in filters.job_ids]))
    elif excluded_jobs:
        conds.append(Result.job_id.not_in(list(excluded_jobs)))
    if filters.since is not None:
        conds.append(Result.created_at >= _utc(filters.since))
    if filters.until is not None:
        conds.append(Result.created_at < _utc(filters.until))
    if filters.bucket:
        conds.append(Result.bucket == filters.bucket)
    if filters.prefix:
        conds.append(Result.key.startswith(filters.prefix, autoescape=True))
    if filters.model:
        conds.append(Result.model_id == filters.model)
    return conds


def build_report(session: Session, filters: ReportFilters | None = None, pricing: Pricing | None = None, *,
                 prefix_depth: int = 1, bins: int = 20, timeline_points: int = 200) -> Report:
    """Compute the report (see the module docstring); ``.as_dict()`` gives its JSON form."""
    filters = filters or ReportFilters()
    pricing = pricing or Pricing()
    if prefix_depth < 1:
        raise ReportError("prefix depth must be >= 1")
    jobs, excluded = selected_jobs(session, filters)
    where = _where(filters, excluded)

    # --- counts and bytes per status / reason (SQL) -------------------------------------------
    by_status: dict[str, int] = {}
    bytes_seen = before = after = deleted = 0
    superseded, retried = _replaced(session)
    replaced = or_(superseded, retried)
    status_of = case((superseded, "superseded"), (retried, "retried"), else_=Result.status)
    q = (select(status_of, func.count(), func.sum(Result.original_bytes), func.sum(Result.compressed_bytes),
                func.sum(case((Result.original_deleted.is_(True), 1), else_=0)))
         .where(*where).group_by(status_of))
    for status, n, ob, cb, dl in session.execute(q):
        by_status[status] = by_status.get(status, 0) + int(n)
        if status in REPLACED:
            continue  # the object's bytes are counted with the row that stands for it
        bytes_seen += _int(ob)
        if status == ResultStatus.ACCEPTED:
            before, after = _int(ob), _int(cb)
        deleted += _int(dl)
    counts = Counts.of(by_status, deleted)
    q = (select(Result.status, Result.reason_code, func.count())
         .where(*where, Result.status.in_((ResultStatus.REJECTED, ResultStatus.FAILED, ResultStatus.SKIPPED)), ~replaced)
         .group_by(Result.status, Result.reason_code)
         .order_by(Result.status, func.count().desc(), Result.reason_code))
    reasons = [ReasonCount(status=st, reason_code=rc or "(none)", count=int(n)) for st, rc, n in session.execute(q)]

    # --- per content type (SQL) ---------------------------------------------------------------
    acc = and_(Result.status == ResultStatus.ACCEPTED, ~superseded)  # the accepted rows whose saving stands
    by_type: dict[str, _GroupSums] = {}
    q = (select(Result.content_type, func.count(), func.sum(case((acc, 1), else_=0)), func.sum(Result.original_bytes),
                func.sum(case((acc, Result.original_bytes), else_=0)), func.sum(case((acc, Result.compressed_bytes), else_=0)))
         .where(*where, ~replaced).group_by(Result.content_type))
    for ct, n, na, ob, bb, ab in session.execute(q):
        name = ct or UNKNOWN_TYPE
        g = by_type.setdefault(name, _GroupSums())
        g.objects += int(n)
        g.accepted += _int(na)
        g.bytes_seen += _int(ob)
        g.bytes_before += _int(bb)
        g.bytes_after += _int(ab)
    content_types = sorted((g.finish(name) for name, g in by_type.items()), key=lambda g: (-g.bytes_seen, g.name))
    by_fmt: dict[str, _GroupSums] = {}
    for name, g in by_type.items():
        f = by_fmt.setdefault(format_of(None if name == UNKNOWN_TYPE else name), _GroupSums())
        f.objects, f.accepted = f.objects + g.objects, f.accepted + g.accepted
        f.bytes_seen, f.bytes_before, f.bytes_after = (f.bytes_seen + g.bytes_seen, f.bytes_before + g.bytes_before,
                                                       f.bytes_after + g.bytes_after)
    formats = [by_fmt[f].finish(f) for f in FORMATS if f in by_fmt]
    by_tier_sums: dict[str, _GroupSums] = {}
    q = (select(Result.tier, func.count(), func.sum(Result.original_bytes), func.sum(Result.compressed_bytes))
         .where(*where, ~replaced, acc).group_by(Result.tier))
    for tier, n, ob, cb in session.execute(q):
        g = by_tier_sums.setdefault(tier or "lossy", _GroupSums())  # rows before the tiers were all lossy
        g.objects += int(n)
        g.accepted += int(n)
        g.bytes_seen += _int(ob)
        g.bytes_before += _int(ob)
        g.bytes_after += _int(cb)
    tiers = [g.finish(name) for name, g in sorted(by_tier_sums.items())]

    # --- compute (SQL) ------------------------------------------------------------------------
    gpu_objects = cpu_objects = 0
    gpu_seconds = cpu_seconds = 0.0
    q = (select(Result.device, func.count(), func.sum(Result.gpu_seconds), func.sum(Result.t_total))
         .where(*where, Result.status.in_(PROCESSED)).group_by(Result.device))
    for device, n, gs, tt in session.execute(q):  # a handful of distinct devices
        if (device or "").startswith("cuda"):
            gpu_objects += int(n)
            gpu_seconds += float(gs or 0.0)
        else:
            cpu_objects += int(n)
            cpu_seconds += float(tt or 0.0)
    compute_seconds = gpu_seconds + cpu_seconds
    comp = Compute(gpu_objects=gpu_objects, cpu_objects=cpu_objects, gpu_seconds=gpu_seconds, cpu_seconds=cpu_seconds,
                   basis=compute_basis(gpu_objects, cpu_objects), compute_seconds=compute_seconds,
                   compute_hours=compute_seconds / 3600.0, price_per_hour=pricing.gpu_price_per_hour,
                   cpu_price_per_hour=pricing.cpu_price_per_hour, cost=pricing.compute_cost(gpu_seconds, cpu_seconds))

    # --- one streamed pass over the rows: prefixes, distributions, timeline ------------------
    # Memory: one dict entry per prefix, two float arrays (8 bytes per accepted object) and at
    # most `timeline_points` timeline bins; rows themselves are streamed (yield_per).
    first, last = session.execute(select(func.min(Result.created_at), func.max(Result.created_at))
                                  .where(*where, acc)).one()
    tl = Timeline(first and _utc(first), last and _utc(last), timeline_points)
    psnrs, bpps = array("d"), array("d")
    by_prefix: dict[str, _GroupSums] = {}
    q = (select(Result.key, Result.status, Result.original_bytes, Result.compressed_bytes, Result.psnr, Result.bpp,
                Result.created_at)
         .where(*where, ~replaced).execution_options(yield_per=5000))
    for key, status, ob, cb, p, b, t in session.execute(q):
        name = prefix_of(key, prefix_depth)
        g = by_prefix.get(name)
        if g is None:
            g = by_prefix[name] = _GroupSums()
        g.objects += 1
        g.bytes_seen += _int(ob)
        if status == ResultStatus.ACCEPTED:
            g.accepted += 1
            g.bytes_before += _int(ob)
            g.bytes_after += _int(cb)
            if p is not None:
                psnrs.append(float(p))
            if b is not None:
                bpps.append(float(b))
            tl.add(_utc(t), _int(ob) - _int(cb))
    prefixes = sorted((g.finish(name) for name, g in by_prefix.items()), key=lambda g: (-g.saved, g.name))

    saved = before - after
    used_jobs = {int(j) for (j,) in session.execute(select(Result.job_id).where(*where).distinct())}
    job_infos = [JobInfo.of(j) for j in jobs if j.id in used_jobs]
    thresholds = sorted({(j.model_id, j.min_psnr, j.min_saving) for j in job_infos},
                        key=lambda t: (t[0], t[1] or 0, t[2] or 0))
    models = sorted({mid for (mid,) in session.execute(select(Result.model_id).where(*where).distinct())})

    return Report(
        generated_at=utcnow().isoformat(),
        filters=replace(filters, job_ids=tuple(filters.job_ids)),  # a snapshot: the caller's may change
        excluded_jobs=excluded,
        assumptions=Assumptions.of(pricing, comp.basis, prefix_depth),
        jobs=job_infos,
        models=models,
        thresholds=[Threshold(model_id=m, min_psnr=p, min_saving=ms) for m, p, ms in thresholds],
        counts=counts,
        reasons=reasons,
        bytes=ByteTotals(seen=bytes_seen, before=before, after=after, saved=saved,
                         saved_pct=pct(saved, before), saved_pct_of_seen=pct(saved, bytes_seen)),
        by_content_type=content_types,
        by_format=formats,
        by_tier=tiers,
        by_prefix=prefixes,
        prefix_depth=prefix_depth,
        psnr=Distribution.of(psnrs, bins),
        bpp=Distribution.of(bpps, bins),
        timeline=tl.result(),
        compute=comp,
        money=Money.of(saved, comp.cost, pricing),
    )


def _notes(pricing: Pricing, basis: str, prefix_depth: int) -> list[str]:
    """The method and assumptions, in words, as every format prints them."""
    return [
        f"Storage priced at ${pricing.price_per_gb_month:g} per GB-month (default: S3 Standard); "
        "GB = 10^9 bytes, as AWS bills storage; $/year = 12 x $/month.",
        {
            "gpu_seconds": f"Compute priced at ${pricing.gpu_price_per_hour:g} per GPU hour of recorded gpu_seconds "
                           "(accelerator-busy time).",
            "t_total": f"CPU-only run: compute priced at ${pricing.cpu_price_per_hour:g} per CPU-machine hour of "
                       "t_total (wall time per object, incl. fetch and write).",
            "mixed": f"Compute priced at ${pricing.gpu_price_per_hour:g} per GPU hour of gpu_seconds for GPU rows and "
                     f"${pricing.cpu_price_per_hour:g} per CPU-machine hour of t_total for CPU rows.",
            "none": "No processed rows, so no compute time.",
        }[basis] + " Skipped (already archived) objects cost nothing.",
        "Saved bytes count accepted objects only (original - container); the saving is realised once "
        "originals are replaced (recompress --replace) or moved to a colder tier. An object archived "
        "again later (changed original, new model) counts once, by its latest accepted row; the earlier "
        "rows are shown as superseded and only their compute is counted. Outcome counts are per object: a "
        "rejected, failed or skipped row after which the object was met again is shown as retried.",
        "Payback = one-off compute cost / storage saving per month.",
        "PSNR and bpp distributions are over accepted objects; percentiles use linear interpolation.",
        f"Prefix = first {prefix_depth} path component(s) of the key.",
    ]


_STEPS = [(1, "second"), (60, "minute"), (3600, "hour"), (86400, "day"), (7 * 86400, "week")]


class Timeline:
    """Cumulative saved bytes over time, in at most ``max_points`` bins of a round size
    (second/minute/hour/day/week) chosen from the span; rows may be added in any order."""

    def __init__(self, first: dt.datetime | None, last: dt.datetime | None, max_points: int = 200) -> None:
        self.first, self.last = first, last
        span = (last - first).total_seconds() if first is not None and last is not None else 0.0
        self.step, self.unit = _STEPS[-1]
        for step, unit in _STEPS:
            if span / step <= max_points:
                self.step, self.unit = step, unit
                break
        self.bins: dict[int, int] = {}

    def add(self, when: dt.datetime, saved: int) -> None:
        assert self.first is not None
        k = int((when - self.first).total_seconds() // self.step)
        self.bins[k] = self.bins.get(k, 0) + saved

    def result(self) -> SavingsTimeline:
        if self.first is None or self.last is None or not self.bins:
            return SavingsTimeline(unit=None, points=[])
        points = [TimelinePoint(t=self.first.isoformat(), saved_cumulative=0)]
        total = 0
        for k in sorted(self.bins):
            total += self.bins[k]
            end = min(self.first + dt.timedelta(seconds=(k + 1) * self.step), self.last)
            points.append(TimelinePoint(t=end.isoformat(), saved_cumulative=total))
        return SavingsTimeline(unit=self.unit, points=points)


__all__ = [
    "Assumptions",
    "ByteTotals",
    "Compute",
    "Counts",
    "Distribution",
    "GB",
    "Group",
    "Histogram",
    "JobInfo",
    "Money",
    "Percentiles",
    "Pricing",
    "ReasonCount",
    "Report",
    "ReportError",
    "ReportFilters",
    "SavingsTimeline",
    "Threshold",
    "TimelinePoint",
    "build_report",
    "distribution",
    "money",
    "parse_when",
    "pct",
    "prefix_of",
]
