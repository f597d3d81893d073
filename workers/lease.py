"""A running batch renews its claim on the Redis broker, so a dead worker's batch comes back soon.

Why: with ``acks_late`` on Redis, kombu keeps every delivered, unacknowledged message in a sorted
set (``unacked_index``) scored by its delivery time, and any worker's sweep puts a message back on
its queue once that score is older than ``visibility_timeout``. Without renewal the timeout has to
exceed the longest batch (hours, to be safe), and that is also how long a batch held by a worker
that vanished (preempted GPU host, ``kill -9`` of the whole worker) waits before anyone else gets
it. With renewal, a thread in the process running the batch moves the score to "now" every
``lease_heartbeat`` seconds, so the timeout only has to cover a few missed heartbeats and a dead
worker's batch is redelivered within ``visibility_timeout`` plus one sweep.

The renewal uses ``ZADD ... XX``: it only touches a delivery that is still pending. Once the
message was acknowledged, or already handed back to the queue (a Redis outage longer than the
timeout), nothing is re-added; a batch that then runs twice is safe because every per-object step
is idempotent. Broker errors are logged and the next beat tries again: a lease must never stop
the work it protects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# kombu's default name of the sorted set of pending deliveries (transport option
# ``unacked_index_key``; we do not change it)
UNACKED_INDEX = "unacked_index"


class BatchLease:
    """Renews one delivery's score in ``unacked_index`` from a daemon thread until stopped."""

    def __init__(self, client: Any, delivery_tag: str, every: float, index_key: str = UNACKED_INDEX) -> None:
        self.client, self.tag, self.every, self.index_key = client, delivery_tag, every, index_key
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{delivery_tag[:8]}", daemon=True)
        self._failing = False

    def renew(self) -> bool:
        """One renewal; True when the delivery was still pending (its score moved to now)."""
        try:
            changed = self.client.zadd(self.index_key, {self.tag: time.time()}, xx=True, ch=True)
        except Exception as e:  # noqa: BLE001 - redis.RedisError, OSError: never stop the batch
            if not self._failing:
                log.warning("cannot renew the lease of delivery %s (%s); retrying every %.0f s", self.tag, e,
                            self.every)
            self._failing = True
            return False
        if self._failing:
            log.info("lease of delivery %s renewed again", self.tag)
        self._failing = False
        self.renewals += 1
        return bool(changed)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.renew()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextmanager
def batch_lease(broker_url: str, delivery_tag: str | None, every: float) -> Iterator[BatchLease | None]:
    """Hold a lease on ``delivery_tag`` for the duration of the block; a no-op (yields None) when
    renewal is off (``every`` 0), the broker is not Redis, or the task came without a tag (called
    directly, eagerly, or by a transport that has no visibility timeout)."""
    if every <= 0 or not delivery_tag or not broker_url.startswith(("redis://", "rediss://")):
        yield None
        return
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    lease = BatchLease(client, delivery_tag, every)
    lease.start()
    try:
        yield lease
    finally:
        lease.stop()
        client.close()
