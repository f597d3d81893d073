"""Settings: precedence (defaults < TOML < env < overrides) and readable validation errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from archiver.codec.default import DEFAULT_MODEL
from archiver.errors import ConfigError
from archiver.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "archiver.toml"


@pytest.fixture(autouse=True)
def _no_cwd_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config/archiver.toml unless a test writes one


def test_defaults() -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///archiver.sqlite"
    assert s.model_id == DEFAULT_MODEL
    assert s.device == "auto"
    assert s.min_psnr == 40.0 and s.min_saving == 0.1
    assert s.max_object_bytes == 256 * 1024 * 1024
    assert s.max_pixels == 120_000_000
    assert s.dest_mode == "beside" and s.dest is None and s.container_suffix == ".cxa"
    assert s.s3.region == "us-east-1" and s.s3.checksum_mode == "when_required"
    assert s.s3.multipart_threshold == 8 * 1024 * 1024
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.price_per_gb_month == 0.023 and s.gpu_price_per_hour == 2.5


def test_shipped_config_equals_defaults_and_documents_every_option() -> None:
    assert load_settings(SHIPPED) == Settings()
    text = SHIPPED.read_text()
    tomllib.loads(text)
    for name in Settings.model_fields:
        assert re.search(rf"^#? ?{name} = ", text, re.M) or f"[{name}]" in text, name
    for name in Settings.model_fields["s3"].annotation.model_fields:  # type: ignore[union-attr]
        assert re.search(rf"^#? ?{name} = ", text, re.M), f"s3.{name}"


def test_cwd_config_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "archiver.toml").write_text(
        'min_psnr = 38.5\nmodel_id = "from-file"\n[s3]\nregion = "eu-west-1"\npath_style = true\n'
    )
    s = load_settings()
    assert s.min_psnr == 38.5 and s.model_id == "from-file" and s.s3.region == "eu-west-1"

    monkeypatch.setenv("ARCHIVER_MIN_PSNR", "42")
    monkeypatch.setenv("ARCHIVER_S3__ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("archiver_max_object_bytes", "10MiB")
    s = load_settings()
    assert s.min_psnr == 42.0
    assert s.s3.endpoint_url == "http://127.0.0.1:9000"
    assert s.s3.region == "eu-west-1" and s.s3.path_style  # nested groups merge across layers
    assert s.max_object_bytes == 10 * 1024 * 1024
    assert s.model_id == "from-file"

    s = load_settings(min_psnr=45.0, model_id=None)  # None = option not given
    assert s.min_psnr == 45.0 and s.model_id == "from-file"


def test_archiver_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('device = "cpu"\n')
    monkeypatch.setenv("ARCHIVER_CONFIG", str(cfg))
    assert load_settings().device == "cpu"
    assert Settings().device == "cpu"  # direct construction reads the same layers
    monkeypatch.setenv("ARCHIVER_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("ARCHIVER_MIN_PSNR", "150", "min_psnr = '150': Input should be less than 100"),
        ("ARCHIVER_MIN_PSNR", "abc", "min_psnr = 'abc'"),
        ("ARCHIVER_MIN_SAVING", "1", "min_saving"),
        ("ARCHIVER_MIN_SAVING", "-0.1", "min_saving"),
        ("ARCHIVER_DATABASE_URL", "not a url", "not a database URL"),
        ("ARCHIVER_DATABASE_URL", "oracle2000://x/y", "unknown database backend"),
        ("ARCHIVER_DEVICE", "gpu", "must be auto, cpu, cuda"),
        ("ARCHIVER_DEST_MODE", "sideways", "dest_mode"),
        ("ARCHIVER_S3__MULTIPART_THRESHOLD", "1MiB", "s3.multipart_threshold"),
        ("ARCHIVER_S3__ENDPOINT_URL", "127.0.0.1:9000", "http:// or https://"),
        ("ARCHIVER_CONTAINER_SUFFIX", "cxa", "container_suffix"),
        ("ARCHIVER_S3__TYPO", "1", "s3.typo: unknown setting"),
    ],
)
def test_bad_env_value_is_readable(monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert needle in message
    assert env in message  # tells the user where to fix it
    assert exc.value.code == "bad_config"


def test_prefix_mode_needs_dest() -> None:
    with pytest.raises(ConfigError, match="needs dest"):
        load_settings(dest_mode="prefix")
    assert load_settings(dest_mode="prefix", dest="s3://archive/cxa/").dest == "s3://archive/cxa/"


def test_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("min_psnr = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("min_psnrr = 30\n")
    with pytest.raises(ConfigError, match=r"min_psnrr: unknown setting.*typo.toml"):
        load_settings(typo)


def test_cli_reports_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from archiver.cli import main

    monkeypatch.setenv("ARCHIVER_MIN_PSNR", "500")
    res = CliRunner().invoke(main, ["db", "current"])
    assert res.exit_code == 2
    assert "ARCHIVER_MIN_PSNR" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("visibility_timeout = 200", "workers.visibility_timeout (200 s) must exceed workers.retry_backoff_max (300 s)"),
        ("lease_heartbeat = 300",
         "workers.visibility_timeout (600 s) must be at least 3 x workers.lease_heartbeat (300 s)"),
    ],
)
def test_worker_timeouts_must_fit_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str,
                                           needle: str) -> None:
    """A visibility timeout shorter than a retry countdown or a few lease renewals would hand a
    batch to two workers at once: refused at start, naming the group to fix (and the message keeps
    its brackets through the CLI's rich console)."""
    from click.testing import CliRunner

    from archiver.cli import main

    cfg = tmp_path / "w.toml"
    cfg.write_text(f"[workers]\n{toml}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert needle in str(exc.value) and "ARCHIVER_WORKERS__*" in str(exc.value)
    res = CliRunner().invoke(main, ["--config", str(cfg), "status"])
    assert res.exit_code == 2
    flat = " ".join(res.output.split())
    assert needle in flat and f"[workers] in {cfg}" in flat, res.output
    # renewal off: only the retry countdown bounds the timeout
    monkeypatch.setenv("ARCHIVER_WORKERS__LEASE_HEARTBEAT", "0")
    monkeypatch.setenv("ARCHIVER_WORKERS__VISIBILITY_TIMEOUT", "301")
    assert load_settings(cfg).workers.visibility_timeout == 301
