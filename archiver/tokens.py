"""Bearer tokens for the retrieval endpoint: issue, list, revoke, authenticate, authorize.

A token string is ``cxa_<token_id>_<secret>``: ``token_id`` (12 hex characters) is public and
names the row, ``secret`` is 32 random bytes (``secrets.token_urlsafe``). The database keeps
only ``sha256(salt || secret)`` with a per-token 16-byte salt, compared with
:func:`hmac.compare_digest`.

Why a fast salted hash and not scrypt/argon2: slow password KDFs exist to make guessing a
*low-entropy* secret from a stolen hash expensive. These secrets are 256-bit random values
that nobody chooses: a stolen hash cannot be reversed by guessing at any hash speed, so a slow
KDF adds no protection. It would instead make every request (and every forged request) cost
tens of milliseconds of CPU and megabytes of memory before it can be refused, a lever for
exactly the denial of service the server's cheap refusals are meant to prevent. The algorithm
is written into the stored value (``sha256$salt$digest``), so it can change later.

Scope: a list of entries, each ``bucket`` (the whole bucket), ``bucket/prefix`` (keys that
start with ``prefix``, a plain string prefix as in S3 policies: end it with ``/`` to mean a
folder) or ``*`` (every bucket). A token sees only ledger entries inside its scope.

The CLI (``archiver token ...``) and the server call these functions; nothing here prints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from .db.models import ApiToken, aware, utcnow
from .errors import ArchiverError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.orm import Session, sessionmaker

PREFIX = "cxa_"
TOKEN_RE = re.compile(r"^cxa_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
# S3 bucket names (3-63 characters); prefixes are anything printable, up to the S3 key limit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
ALL = "*"


class TokenError(ArchiverError):
    """A token command was given something unusable (bad name, bad scope, unknown token)."""

    code = "bad_token"


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: everything except its secret."""

    token_id: str
    name: str
    scope: tuple[str, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def active(self, now: dt.datetime | None = None) -> bool:
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or aware(self.expires_at) > now)

    def allows(self, bucket: str, key: str) -> bool:
        return in_scope(self.scope, bucket, key)


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.token_id, row.name, tuple(row.scope or ()), aware(row.created_at),
                     aware(row.expires_at) if row.expires_at else None,
                     aware(row.revoked_at) if row.revoked_at else None)


# ---- scope ----------------------------------------------------------------------------------

def parse_scope(entries: Iterable[str]) -> tuple[str, ...]:
    """Validate scope entries (``*``, ``bucket`` or ``bucket/prefix``); at least one is needed,
    so that a token never means "everything" by accident."""
    out: list[str] = []
    for raw in entries:
        e = raw.strip()
        if e.startswith("s3://"):
            e = e[5:]
        if e == ALL:
            out.append(ALL)
            continue
        bucket, _, prefix = e.partition("/")
        if not _BUCKET_RE.match(bucket):
            raise TokenError(f"scope entry {raw!r}: {bucket!r} is not an S3 bucket name; use BUCKET, "
                             "BUCKET/PREFIX or * (every bucket)", code="bad_scope")
        if len(prefix.encode()) > MAX_KEY_BYTES:
            raise TokenError(f"scope entry {raw[:80]!r}...: the prefix is longer than an S3 key can be",
                             code="bad_scope")
        out.append(f"{bucket}/{prefix}" if prefix else bucket)
    if not out:
        raise TokenError("a token needs a scope: --scope BUCKET, --scope BUCKET/PREFIX or --scope '*'",
                         code="bad_scope")
    return tuple(dict.fromkeys(out))


def in_scope(scope: Iterable[str], bucket: str, key: str) -> bool:
    """Whether ``bucket``/``key`` lies inside one of the scope entries (a plain prefix match on
    the key, as S3 policies do; no path normalisation, because S3 keys are not paths)."""
    for entry in scope:
        if entry == ALL:
            return True
        b, sep, prefix = entry.partition("/")
        if b == bucket and (not sep or key.startswith(prefix)):
            return True
    return False


# ---- hashing --------------------------------------------------------------------------------

def _hash(secret: str, salt: bytes) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    return f"sha256${salt.hex()}${_hash(secret, salt)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        alg, salt_hex, digest = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if alg != "sha256":
        return False
    return hmac.compare_digest(_hash(secret, salt), digest)


# ---- the store ------------------------------------------------------------------------------

def create_token(sf: sessionmaker[Session], name: str, scope: Iterable[str], *,
                 expires_at: dt.datetime | None = None) -> tuple[TokenInfo, str]:
    """Issue a token; returns its info and the token string, which is never stored or shown again.

    Names are labels for people and logs; two *active* tokens may not share one (``revoke``
    takes a name), a revoked token's name may be reused.
    """
    if not NAME_RE.match(name):
        raise TokenError(f"token name {name[:80]!r}: use 1-128 letters, digits, '.', '_', '@' or '-', "
                         "starting with a letter or digit", code="bad_name")
    entries = parse_scope(scope)
    if expires_at is not None and aware(expires_at) <= utcnow():
        raise TokenError("the expiry is in the past", code="bad_expiry")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    with sf() as s, s.begin():
        now = utcnow()
        clash = s.execute(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))).scalars()
        if any(_info(r).active(now) for r in clash):
            raise TokenError(f"an active token is already named {name!r}; revoke it first or choose another name",
                             code="name_taken")
        row = ApiToken(token_id=token_id, name=name, scope=list(entries), secret_hash=hash_secret(secret),
                       created_at=now, expires_at=expires_at)
        s.add(row)
        s.flush()
        info = _info(row)
    return info, f"{PREFIX}{token_id}_{secret}"


def list_tokens(sf: sessionmaker[Session], *, include_inactive: bool = False) -> list[TokenInfo]:
    """Tokens, oldest first; revoked and expired ones only with ``include_inactive``."""
    with sf() as s:
        rows = s.execute(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)).scalars().all()
        infos = [_info(r) for r in rows]
    now = utcnow()
    return [i for i in infos if include_inactive or i.active(now)]


def count_active(sf: sessionmaker[Session]) -> int:
    """How many tokens could authenticate a request now (``serve`` refuses to bind a public
    address while this is 0)."""
    now = utcnow()
    with sf() as s:
        n = s.execute(select(func.count()).select_from(ApiToken).where(
            ApiToken.revoked_at.is_(None), (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now))).scalar()
    return int(n or 0)


def revoke_token(sf: sessionmaker[Session], name_or_id: str) -> list[TokenInfo]:
    """Revoke the active token(s) with this name or token id; effective on the server's next
    request (it reads the row every time). Raises :class:`TokenError` if none matched."""
    with sf() as s, s.begin():
        rows = s.execute(select(ApiToken).where(
            ((ApiToken.name == name_or_id) | (ApiToken.token_id == name_or_id)),
            ApiToken.revoked_at.is_(None))).scalars().all()
        if not rows:
            raise TokenError(f"no active token named or with id {name_or_id[:80]!r} (see `archiver token list`)",
                             code="no_such_token")
        now = utcnow()
        for r in rows:
            r.revoked_at = now
        s.flush()
        return [_info(r) for r in rows]


def authenticate(sf: sessionmaker[Session], presented: str) -> TokenInfo | None:
    """The active token matching ``presented``, or ``None`` (malformed, unknown, wrong secret,
    revoked or expired: one answer for all, so a client learns nothing from which it was)."""
    m = TOKEN_RE.match(presented)
    if m is None:
        return None
    token_id, secret = m.groups()
    with sf() as s:
        row = s.execute(select(ApiToken).where(ApiToken.token_id == token_id)).scalar_one_or_none()
        if row is None:
            return None
        info, stored = _info(row), row.secret_hash
    if not verify_secret(secret, stored) or not info.active():
        return None
    return info


def bearer(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
