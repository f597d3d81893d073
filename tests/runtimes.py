"""Runtimes for tests. A test is its own front door: it builds the runtime the library is given.

One runtime per distinct Settings is kept for the whole session, as a process keeps one: engines,
S3 clients and loaded codecs are not rebuilt by every test. ``shared_codec`` loads a packaged
model once for all tests (they only encode and decode with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archiver.codec.api import Codec
    from archiver.runtime import Runtime
    from archiver.settings import Settings

_RUNTIMES: dict[str, Runtime] = {}
_CODECS: dict[tuple[str, str], Codec] = {}


def runtime_for(settings: Settings | None = None) -> Runtime:
    """The session's runtime for ``settings`` (default: the settings in force, as a CLI loads them)."""
    from archiver.runtime import Runtime
    from archiver.settings import load_settings

    st = settings if settings is not None else load_settings()
    key = st.model_dump_json()
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Runtime(st)
    return _RUNTIMES[key]


def shared_codec(model: str, device: str = "cpu") -> Codec:
    """A packaged model's codec, loaded once per test session."""
    from archiver.codec.api import Codec

    if (model, device) not in _CODECS:
        _CODECS[(model, device)] = Codec.load(model, device)
    return _CODECS[(model, device)]


def session_factory(url: str, *, migrate: bool = False):  # noqa: ANN201 - a sessionmaker
    """A session factory for ``url`` that lives for the session (the default runtime's)."""
    return runtime_for().session_factory(url, migrate=migrate)
