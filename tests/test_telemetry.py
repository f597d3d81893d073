"""The metric names the Grafana dashboard and README rely on, and the JSON log lines.

How the metrics move with real work is tested where the work is real: a prefork worker over
Redis and moto S3 (tests/test_workers.py) and the server over a socket (tests/test_server.py)."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from archiver import telemetry

REPO = Path(__file__).resolve().parents[1]


def _defined() -> set[str]:
    names = set()
    for value in vars(telemetry).values():
        describe = getattr(value, "describe", None)
        if callable(describe) and hasattr(value, "_name"):
            for fam in describe():
                names.update(s for s in (fam.name, fam.name + "_total", fam.name + "_bucket", fam.name + "_sum",
                                         fam.name + "_count"))
    return names


def test_the_dashboard_and_readme_name_only_metrics_that_exist() -> None:
    defined = _defined()
    dash = json.loads((REPO / "docs" / "grafana" / "archiver.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\barchiver_[a-z_]+", e)}
    assert used and used <= defined, used - defined
    for title in ("Throughput", "Savings", "Failures by reason", "decode latency"):
        assert any(title.lower() in p["title"].lower() for p in dash["panels"]), title
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"`(archiver_[a-z_]+)", readme))
    assert named and named <= defined, named - defined


def test_json_log_lines_carry_job_key_and_reason_and_nothing_else() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    telemetry.use_json_logs([handler])
    log = logging.getLogger("archiver.test_telemetry")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        key = "a/" + "x" * 300
        with telemetry.log_context(7, key):
            log.info("refused", extra={"reason_code": "not_an_image", "data": {"args": key}})
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "refused" and first["level"] == "INFO" and first["logger"] == "archiver.test_telemetry"
    assert (first["job_id"], first["reason_code"]) == (7, "not_an_image")
    assert first["key"] == key[:telemetry.LOG_KEY_CHARS] + "..." and "data" not in first
    assert key not in stream.getvalue()
    assert (second["job_id"], second["key"], second["reason_code"]) == (None, None, None)
    assert second["time"].endswith("+00:00") and "T" in second["time"]  # ISO 8601, UTC
