"""Broker outages end to end (issue 28): figures for docs/BENCHMARKS.md.

Runs the two outage scenarios of ``tests/test_workers.py`` — each over real services (moto S3
over HTTP, PostgreSQL, a private ``redis-server`` the scenario stops, one prefork Celery worker)
— with more objects than the test suite uses, and records what they measured:

* **broker down at submit**: ``archiver submit`` with Redis down; how long it waited before its
  one-line ``broker_unavailable`` exit (``[workers] submit_broker_wait``, 4 s in the tests), what
  the job row counted, and, once Redis is up, how long the same command took to finish the job;
* **queue lost mid-job**: Redis killed and restarted empty after the first result; how long
  until ``archiver status`` said ``stalled`` (the limit is ``visibility_timeout`` 15 s +
  ``stall_margin`` 3 s in the tests), how many objects ``archiver submit --resume`` re-sent, and
  how long until the job finished.

Both end with rows / duplicates / lost counted from the job's result rows (the scenario's
``check_job`` also checks each container against the ledger and every original).

    python benchmarks/broker_outage.py --objects 30          # prints, and appends to docs/BENCHMARKS.md
    python benchmarks/broker_outage.py --objects 10 --no-record

Needs PostgreSQL (``ARCHIVER_TEST_PG``, default postgresql://postgres@127.0.0.1:5432/test) and
``redis-server`` on the PATH, as the worker tests do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = "broker_is_down or lost_queue"
HEADER = "## Broker outages (benchmarks/broker_outage.py, issue 28)"
INTRO = (
    "Each row is one scenario of `tests/test_workers.py` run with more objects: real moto S3 over HTTP, "
    "PostgreSQL, a private redis-server that the scenario stops, one prefork worker (`-c 1`), 64 px or "
    "128 px noise PNGs, `--replace`. Settings as in the tests: `submit_broker_wait` 4 s, "
    "`visibility_timeout` 15 s, `stall_margin` 3 s, lease every 2 s. *rows / duplicates / lost* are "
    "counted from the job's result rows; the scenario also checks every container against the ledger "
    "and that no original is gone without one. Times are wall-clock on a machine shared with other "
    "jobs: they include the worker's encoding, which dominates the recovery time.\n")
TABLE = ("| date (UTC) | command | machine | scenario | objects | outage figures | recovery | rows | duplicates "
         "| lost |\n|---|---|---|---|---|---|---|---|---|---|\n")


def run(objects: int) -> tuple[list[dict], float, str]:
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as fh:
        out = Path(fh.name)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ARCHIVER_TEST_FIGURES": str(out),
           "ARCHIVER_TEST_OUTAGE_OBJECTS": str(objects)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/test_workers.py", "-k", SCENARIOS], cwd=REPO, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    print(p.stdout[-3000:], p.stderr[-2000:], sep="\n")
    if p.returncode != 0:
        raise SystemExit(f"the scenarios failed (exit {p.returncode}); nothing recorded")
    figures = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    out.unlink()
    load = os.getloadavg()[0]
    return figures, took, f"dev-cpu, 2 vCPU, shared with other jobs (load avg {load:.1f} at the end)"


def row(f: dict, cmd: str, machine: str) -> str:
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
    if f["scenario"] == "broker down at submit":
        figures = (f"submit gave up after {f['submit_gave_up_s']} s (exit 2, one line); job row: "
                   f"{f['enqueued_after_outage']} enqueued, pending + interrupted")
        recovery = f"same command again: job finished {f['rerun_to_finished_s']} s later ({f['jobs']} job in all)"
    else:
        figures = (f"{f['done_when_lost']} done when the queue was lost; `stalled` after "
                   f"{f['stalled_noticed_after_s']} s (limit {f['limit_s']} s of quiet)")
        recovery = f"`submit --resume` re-sent {f['resent']}; job finished {f['resume_to_finished_s']} s later"
    return (f"| {when} | `{cmd}` | {machine} | {f['scenario']} | {f['objects']} | {figures} | {recovery} | "
            f"{f['rows']} | {f['duplicates']} | {f['lost']} |")


def record(rows: list[str]) -> None:
    path = REPO / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    if HEADER not in text:
        text = text.rstrip("\n") + "\n\n" + HEADER + "\n\n" + INTRO + "\n" + TABLE
    lines = text.rstrip("\n").split("\n")
    start = lines.index(HEADER)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    last = max(i for i in range(start, end) if lines[i].startswith("|"))
    lines[last + 1:last + 1] = rows
    path.write_text("\n".join(lines) + "\n")
    print(f"recorded in {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=30, help="objects per scenario (the issue's runs used 30)")
    ap.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    a = ap.parse_args()
    figures, took, machine = run(a.objects)
    cmd = "python benchmarks/broker_outage.py " + shlex.join(sys.argv[1:])
    rows = [row(f, cmd.strip(), machine) for f in figures]
    print("\n".join(rows))
    print(f"both scenarios: {took:.0f} s")
    if not a.no_record:
        record(rows)


if __name__ == "__main__":
    main()
