"""Bearer tokens: the store (archiver.tokens), ``archiver token create|list|revoke`` on SQLite
and PostgreSQL, and how ``archiver serve`` starts with and without tokens. Requests carrying
tokens are tested over a socket in tests/test_server.py."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import main as cli

TOKEN_RE = re.compile(r"^cxa_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def test_scope_matching() -> None:
    from archiver.tokens import TokenError, in_scope, parse_scope

    scope = parse_scope(["media/photos/", "s3://archive", "media/photos/"])
    assert scope == ("media/photos/", "archive")
    assert in_scope(scope, "media", "photos/a.jpg") and in_scope(scope, "archive", "any/key")
    assert not in_scope(scope, "media", "photos2/a.jpg") and not in_scope(scope, "media", "a.jpg")
    assert not in_scope(scope, "medias", "photos/a.jpg") and not in_scope(scope, "archive2", "x")
    assert in_scope(parse_scope(["*"]), "anything", "at/all")
    for bad in [[], ["Not_A_Bucket"], ["/photos"], [""], ["ab"]]:
        with pytest.raises(TokenError) as e:
            parse_scope(bad)
        assert e.value.code == "bad_scope"


def test_token_cli_create_list_revoke(db_url: str) -> None:
    from sqlalchemy import select

    from archiver.db.models import ApiToken
    from runtimes import session_factory as get_session_factory
    from archiver.tokens import authenticate

    run = CliRunner()
    res = run.invoke(cli, ["token", "list", "--db", db_url])  # nothing there yet: read-only, refuses
    assert res.exit_code == 2 and "no_schema" in res.output, res.output
    res = run.invoke(cli, ["token", "create", "alice", "--scope", "media/photos/", "--scope", "archive",
                           "--db", db_url])
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip()
    assert TOKEN_RE.match(secret), res.stdout  # stdout holds the token alone, for piping
    sf = get_session_factory(db_url)
    with sf() as s:
        row = s.execute(select(ApiToken).where(ApiToken.name == "alice")).scalar_one()
        assert secret.split("_", 2)[2] not in row.secret_hash and row.secret_hash.startswith("sha256$")
        assert row.scope == ["media/photos/", "archive"]
    info = authenticate(sf, secret)
    assert info is not None and info.name == "alice" and info.allows("media", "photos/x.jpg")
    assert authenticate(sf, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None

    res = run.invoke(cli, ["token", "create", "alice", "--scope", "media", "--db", db_url])
    assert res.exit_code == 2 and "name_taken" in res.output
    res = run.invoke(cli, ["token", "create", "bob", "--scope", "Bad_Bucket", "--db", db_url])
    assert res.exit_code == 2 and "bad_scope" in res.output
    res = run.invoke(cli, ["token", "create", "carol", "--scope", "*", "--expires-in-days", "1", "--db", db_url])
    assert res.exit_code == 0 and TOKEN_RE.match(res.stdout.strip())

    res = run.invoke(cli, ["token", "list", "--json", "--db", db_url])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert [t["name"] for t in listed] == ["alice", "carol"] and all(t["active"] for t in listed)
    assert listed[1]["expires_at"] is not None and secret not in res.output
    res = run.invoke(cli, ["token", "list", "--db", db_url])
    assert res.exit_code == 0 and "alice" in res.output and "media/photos/" in res.output
    assert "cxa_" not in res.output

    res = run.invoke(cli, ["token", "revoke", "alice", "--db", db_url])
    assert res.exit_code == 0 and "revoked" in res.output, res.output
    assert authenticate(sf, secret) is None
    res = run.invoke(cli, ["token", "revoke", "alice", "--db", db_url])
    assert res.exit_code == 2 and "no_such_token" in res.output
    listed = json.loads(run.invoke(cli, ["token", "list", "--json", "--db", db_url]).stdout)
    assert [t["name"] for t in listed] == ["carol"]
    listed = json.loads(run.invoke(cli, ["token", "list", "--all", "--json", "--db", db_url]).stdout)
    assert [(t["name"], t["active"]) for t in listed] == [("alice", False), ("carol", True)]
    assert listed[0]["revoked_at"] is not None
    # a revoked token's name may be given to a new token; revoke by id works too
    res = run.invoke(cli, ["token", "create", "alice", "--scope", "media", "--db", db_url])
    assert res.exit_code == 0
    new_id = res.stdout.strip().split("_")[1]
    res = run.invoke(cli, ["token", "revoke", new_id, "--db", db_url])
    assert res.exit_code == 0 and new_id in res.output


def _serve(tmp_path: Path, db_url: str, host: str, port: int,
           extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env.update({"ARCHIVER_DATABASE_URL": db_url, "ARCHIVER_DEVICE": "cpu", "HOME": str(tmp_path / "home"),
                **(extra_env or {})})
    return subprocess.Popen([sys.executable, "-m", "archiver", "serve", "--host", host, "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


class _Lines:
    """stderr of a child, read by a thread (select() on a buffered pipe misses lines already buffered)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.proc, self.text = proc, ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.text += line

    def wait_for(self, *needles: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while not all(n in self.text for n in needles):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text[-3000:]
            time.sleep(0.1)
        return self.text


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL: uvicorn defers SIGTERM until the model has loaded, which these
    tests do not wait for."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    proc = _serve(tmp_path, db_url, "0.0.0.0", _free_port())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "refusing to serve on 0.0.0.0" in err and "archiver token create" in err and "no_tokens" in err
    assert "Uvicorn running" not in err and "cxa_" not in out + err


def test_serve_on_loopback_without_tokens_prints_one(tmp_path: Path) -> None:
    """stderr here is a pipe, as under systemd or docker (a journal): the token is not printed
    there but written to a 0600 file whose path is logged (a terminal gets it printed:
    test_server.py::test_a_new_token_reaches_only_a_terminal)."""
    import stat

    from runtimes import session_factory as get_session_factory
    from archiver.tokens import authenticate, list_tokens

    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    proc = _serve(tmp_path, db_url, "127.0.0.1", _free_port())
    try:
        seen = _Lines(proc).wait_for("mode 0600", "Uvicorn running", timeout=120)
    finally:
        _stop(proc)
    files = list((tmp_path / "home" / ".archiver").glob("first-token-local-*"))
    assert len(files) == 1 and str(files[0]) in seen, seen
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    token = files[0].read_text().strip()
    assert TOKEN_RE.match(token) and token not in seen and "cxa_" not in seen, seen
    sf = get_session_factory(db_url)
    info = authenticate(sf, token)
    assert info is not None and info.scope == ("*",) and info.name.startswith("local-")
    assert [t.name for t in list_tokens(sf)] == [info.name]


def test_serve_starts_on_a_public_address_once_a_token_exists(tmp_path: Path) -> None:
    """The check only refuses; with a token it lets uvicorn start, and requests are logged by token name."""
    from runtimes import session_factory as get_session_factory
    from archiver.tokens import create_token

    import httpx

    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    _, secret = create_token(get_session_factory(db_url, migrate=True), "lb", ["media"])
    port = _free_port()
    proc = _serve(tmp_path, db_url, "0.0.0.0", port)
    try:
        lines = _Lines(proc)
        seen = lines.wait_for("Uvicorn running")
        assert "refusing" not in seen and "cxa_" not in seen
        r = httpx.get(f"http://127.0.0.1:{port}/objects/media/a.jpg", headers={"Authorization": f"Bearer {secret}"},
                      timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        seen = lines.wait_for("token lb: GET 'media' 'a.jpg' -> 404", timeout=30)  # the server's log line, by name
        assert secret not in seen and secret.split("_", 2)[2] not in seen
    finally:
        _stop(proc)


def test_serve_logs_json_lines_with_log_format_json(tmp_path: Path) -> None:
    """``log_format = "json"``: uvicorn's lines and the server's own are JSON objects with the
    documented fields; the per-request line names the token, never its secret."""
    import json

    import httpx

    from archiver.tokens import create_token
    from runtimes import session_factory as get_session_factory

    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    _, secret = create_token(get_session_factory(db_url, migrate=True), "lb", ["media"])
    port = _free_port()
    proc = _serve(tmp_path, db_url, "127.0.0.1", port, {"ARCHIVER_LOG_FORMAT": "json"})
    try:
        lines = _Lines(proc)
        lines.wait_for("Uvicorn running")
        r = httpx.get(f"http://127.0.0.1:{port}/objects/media/a.jpg", headers={"Authorization": f"Bearer {secret}"},
                      timeout=30)
        assert r.status_code == 404
        seen = lines.wait_for("token lb: GET", timeout=30)
    finally:
        _stop(proc)
    records = [json.loads(line) for line in seen.splitlines() if line.startswith("{")]
    assert any("Uvicorn running" in r["message"] and r["logger"].startswith("uvicorn") for r in records), seen
    mine = [r for r in records if r["message"].startswith("token lb: GET")]
    assert mine and mine[0]["logger"] == "archiver.server" and mine[0]["level"] == "INFO"
    assert {"time", "job_id", "key", "reason_code"} <= mine[0].keys()
    assert secret not in seen


def test_expired_tokens_do_not_count_or_authenticate(migrated_db_url: str) -> None:
    import datetime as dt

    from sqlalchemy import update

    from archiver.db.models import ApiToken, utcnow
    from runtimes import session_factory as get_session_factory
    from archiver.tokens import authenticate, count_active, create_token, list_tokens

    sf = get_session_factory(migrated_db_url)
    soon = utcnow() + dt.timedelta(hours=1)
    _, a = create_token(sf, "a", ["*"], expires_at=soon)
    _, b = create_token(sf, "b", ["media"], expires_at=soon)
    assert count_active(sf) == 2 and authenticate(sf, a) is not None
    with sf() as s, s.begin():
        s.execute(update(ApiToken).where(ApiToken.name == "a").values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    assert count_active(sf) == 1 and authenticate(sf, a) is None and authenticate(sf, b) is not None
    assert [t.name for t in list_tokens(sf)] == ["b"]
    assert [t.name for t in list_tokens(sf, include_inactive=True)] == ["a", "b"]
