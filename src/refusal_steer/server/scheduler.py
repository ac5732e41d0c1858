"""Dynamic batching: an asyncio-facing request queue drained by one worker thread that owns the model.

Request handlers ``await scheduler.submit(key, work)``; the worker takes the oldest waiting job, waits
up to ``max_wait_s`` for more jobs with the same ``key`` (same preset, compatible sampling settings),
runs them as one batch through ``run_batch(key, works)`` and hands each result back to its handler's
event loop. Only the worker touches the model, so one preset's hooks are installed at a time and
never seen by another preset's batch. A job whose client gave up (timeout, disconnect) before its
batch started is dropped; once its batch runs, its result is discarded: ``run_batch`` may watch the same event to stop that
request's row early (the engine does, through ``generate_from_ids(on_token=...)``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import queue_full, timed_out

logger = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
"""``run_batch(key, works) -> results``, one result (or exception) per work item, in order."""


@dataclass(eq=False)
class _Job:
    key: Hashable
    work: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """One worker thread running batches of compatible requests.

    Args:
        run_batch: runs one batch on the model (see :data:`RunBatch`).
        max_queue: at most this many jobs wait; one more is refused with a 429.
        max_batch: at most this many jobs per batch.
        max_wait_s: how long the worker waits for more jobs of the same key before running a batch.

    Example:
        >>> scheduler = Scheduler(lambda key, works: [w * 2 for w in works]).start()  # doctest: +SKIP
        >>> await scheduler.submit("k", 21, timeout_s=5)  # doctest: +SKIP
        42
    """

    def __init__(self, run_batch: RunBatch, *, max_queue: int = 64, max_batch: int = 8, max_wait_s: float = 0.01) -> None:
        if max_queue < 1 or max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_queue and max_batch must be >= 1 and max_wait_s >= 0")
        self.run_batch = run_batch
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        """How many batches the worker has run (for tests and /health)."""
        self.batch_sizes: list[int] = []

    def start(self) -> "Scheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="refusal-steer-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def queued(self) -> int:
        with self._cond:
            return sum(1 for job in self._pending if not job.cancelled.is_set())

    async def submit(self, key: Hashable, work: Any, *, timeout_s: float, cancelled: threading.Event | None = None) -> Any:
        """Queue ``work`` under ``key`` and wait for its result.

        ``cancelled`` (optional) is set when the caller gives up (timeout, disconnect); pass the event
        ``run_batch`` watches to stop work already running.

        Raises:
            APIError: 429 when the queue is full, 503 when the result is not ready within ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        job = _Job(key=key, work=work, loop=loop, future=loop.create_future(), cancelled=cancelled or threading.Event())
        with self._cond:
            if self._stopped:
                raise RuntimeError("the scheduler is stopped")
            if sum(1 for j in self._pending if not j.cancelled.is_set()) >= self.max_queue:
                raise queue_full(self.max_queue)
            self._pending.append(job)
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.cancelled.set()
            raise timed_out(timeout_s) from None
        except asyncio.CancelledError:  # the client went away: drop the job if it has not started
            job.cancelled.set()
            raise

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while True:
                while self._pending and self._pending[0].cancelled.is_set():
                    self._pending.popleft()
                if self._pending:
                    break
                if self._stopped:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            with self._cond:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.key == first.key and not job.cancelled.is_set():
                        self._pending.remove(job)
                        batch.append(job)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopped:
                    break
                self._cond.wait(remaining)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            try:
                results: Sequence[Any] = self.run_batch(batch[0].key, [job.work for job in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
            except BaseException as exc:  # noqa: BLE001  (handed to every waiting request)
                logger.exception("batch of %d failed", len(batch))
                results = [exc] * len(batch)
            self.batches_run += 1
            self.batch_sizes.append(len(batch))
            for job, result in zip(batch, results):
                try:
                    job.loop.call_soon_threadsafe(_resolve, job.future, result)
                except RuntimeError:  # the request's event loop has closed (server shutting down)
                    pass


def _resolve(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
