"""Which jobs still have batches on the broker: queued, or delivered and not yet acknowledged.

``archiver status`` and the beat's schedule trigger ask this to tell a job whose workers are
busy (or whose batches wait their turn) from a job whose queue was lost (Redis restarted
without its data): the second has no batch anywhere and will never progress again. The library
only knows the ``BrokerView`` protocol (:mod:`archiver.jobs.stalled`); reading kombu's Redis
layout belongs to the worker front door, which knows where its broker is.

kombu's Redis transport keeps a queue as lists (``recompress`` and, per priority step,
``recompress\\x06\\x16<n>``) and the delivered-but-unacknowledged messages in the hash
``unacked`` (the lease's ``unacked_index`` scores the same tags). A message is JSON whose
``body`` is the task's ``[args, kwargs, embed]``, base64-encoded; ``args[0]`` is the job id.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from .app import QUEUES
from .enqueue import BATCH_TASK

log = logging.getLogger(__name__)

UNACKED = "unacked"


def _job_of(payload: Any) -> int | None:
    try:
        if isinstance(payload, (bytes, str)):
            payload = json.loads(payload)
        if isinstance(payload, list):  # an unacked entry: [message, exchange, routing_key]
            payload = payload[0]
        if (payload.get("headers") or {}).get("task") != BATCH_TASK:
            return None
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except Exception:  # noqa: BLE001 - a message of another shape is simply not a batch
        return None


class RedisBrokerView:
    """Scans the Redis broker's queues and unacknowledged deliveries for batch messages."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def jobs_with_batches(self) -> set[int] | None:
        """Ids of the jobs with a batch on the broker; ``None`` when the broker cannot be read."""
        try:
            found: set[int] = set()
            for queue in QUEUES[:1]:
                for name in self.client.scan_iter(match=f"{queue}*", count=100):
                    if self.client.type(name) != b"list":
                        continue
                    for msg in self.client.lrange(name, 0, -1):
                        if (j := _job_of(msg)) is not None:
                            found.add(j)
            for msg in self.client.hvals(UNACKED):
                if (j := _job_of(msg)) is not None:
                    found.add(j)
            return found
        except Exception as e:  # noqa: BLE001 - redis.RedisError, OSError: unknown, not "none"
            log.warning("cannot read the broker (%s)", e)
            return None
        finally:
            self.client.close()


def broker_view(url: str) -> RedisBrokerView | None:
    """The view of ``url``'s broker; ``None`` for a broker that is not Redis (not inspectable)."""
    return RedisBrokerView(url) if url.startswith(("redis://", "rediss://")) else None
