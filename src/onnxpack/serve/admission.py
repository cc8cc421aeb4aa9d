"""Admission control: a cap on inference requests in progress, and a bounded queue behind it.

One `Admission` per server; HTTP and gRPC requests take their slots from it alike.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge


class Admission:
    """At most `limit` requests in progress; up to `queue` more wait their turn; beyond that, refuse."""

    def __init__(self, limit: int, queue: int, waiting: Gauge, in_progress: Gauge) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._queue = queue
        self._waiting = 0
        self._gauge = waiting
        self._in_progress = in_progress

    async def enter(self) -> bool:
        """Wait for a slot; False (at once) when the queue is full."""
        if self._slots.locked() and self._waiting >= self._queue:
            return False
        if not self._slots.locked():  # the common case: no queue, no gauge traffic
            await self._slots.acquire()
        else:
            self._waiting += 1
            self._gauge.inc()
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
                self._gauge.dec()
        self._in_progress.inc()
        return True

    def leave(self) -> None:
        self._in_progress.dec()
        self._slots.release()
