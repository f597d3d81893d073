"""The per-object start counter of the workers, kept in Redis (the broker).

``archiver.jobs.process_batch`` counts how often each object was started without finishing, to
refuse a poison object (one that kills its worker) after ``workers.poison_attempts`` starts. The
library only knows the ``AttemptCounter`` protocol; this Redis implementation belongs to the
worker front door, which is the one that knows where its broker is.
"""

from __future__ import annotations

import hashlib
import logging

import redis

log = logging.getLogger(__name__)


class RedisAttemptCounter:
    """Counters in Redis. Best effort: if Redis is unreachable, nothing is counted."""

    TTL = 7 * 24 * 3600

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    @staticmethod
    def _key(job_id: int, bucket: str, key: str) -> str:
        h = hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()[:32]
        return f"archiver:attempts:{job_id}:{h}"

    def start(self, job_id: int, bucket: str, key: str) -> int:
        k = self._key(job_id, bucket, key)
        try:
            pipe = self.client.pipeline()
            pipe.incr(k)
            pipe.expire(k, self.TTL)
            return int(pipe.execute()[0])
        except Exception as e:  # noqa: BLE001 - redis.RedisError, OSError: never block work on the counter
            log.warning("attempt counter unavailable (%s); not counting", e)
            return 1

    def finish(self, job_id: int, bucket: str, key: str) -> None:
        try:
            self.client.delete(self._key(job_id, bucket, key))
        except Exception as e:  # noqa: BLE001 - best effort, as above
            log.warning("attempt counter unavailable (%s)", e)
