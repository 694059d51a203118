"""Dynamic mixed-task batching: requests of any task queue here and run
together, grouped only by what must be the same inside one compiled call.

Each request is queued under its engine `group_key` (kind, decoding mode,
length buckets). One worker takes the group whose oldest request has waited
longest and runs it once the group holds `max_batch_size` requests or that
request has waited `max_wait_s`. The compiled call runs on one worker
thread (the accelerator runs one program at a time anyway), so the event
loop keeps accepting requests while a batch computes.

A request whose client went away is cancelled by the server framework; its
future is then skipped, so it costs nothing if it had not started and its
result is dropped if it had.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from typing import Any, Callable, Hashable, Optional


@dataclasses.dataclass
class _Pending:
  request: Any
  future: asyncio.Future
  queued_at: float


@dataclasses.dataclass
class BatchStats:
  """What one batch did, for the metrics."""

  kind: str
  size: int
  queue_seconds: list[float]
  compute_seconds: float
  results: list[Any]


class Batcher:
  """Groups submitted requests into batches for `run(kind, requests)`.

  Args:
    run: (kind, [request]) -> [result or exception], one compiled batch;
      every request in one call shares `group_key`.
    group_key: (kind, request) -> hashable; requests with equal keys may
      share a batch.
    max_batch_size: the most requests in one batch.
    max_wait_s: how long the oldest queued request may wait for others.
    on_batch: called with a `BatchStats` after every batch (metrics).
  """

  def __init__(self, run: Callable[[str, list[Any]], list[Any]],
               group_key: Callable[[str, Any], Hashable], *,
               max_batch_size: int = 32, max_wait_s: float = 0.005,
               on_batch: Optional[Callable[[BatchStats], None]] = None):
    if max_batch_size < 1:
      raise ValueError(f"max_batch_size={max_batch_size} must be >= 1.")
    if max_wait_s < 0:
      raise ValueError(f"max_wait_s={max_wait_s} must be >= 0.")
    self._run = run
    self._group_key = group_key
    self.max_batch_size = max_batch_size
    self.max_wait_s = max_wait_s
    self._on_batch = on_batch
    self._groups: dict[Hashable, collections.deque[_Pending]] = {}
    self._wakeup: Optional[asyncio.Event] = None
    self._worker: Optional[asyncio.Task] = None
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="prompt-tuning-batch")
    self._closing = False

  def start(self) -> None:
    """Starts the worker on the running event loop."""
    self._wakeup = asyncio.Event()
    self._worker = asyncio.get_running_loop().create_task(self._serve())

  async def close(self) -> None:
    """Finishes every queued request, then stops the worker."""
    self._closing = True
    if self._wakeup is not None:
      self._wakeup.set()
    if self._worker is not None:
      await self._worker
    self._executor.shutdown(wait=True)

  @property
  def queued(self) -> int:
    return sum(len(q) for q in self._groups.values())

  def submit(self, kind: str, request: Any) -> asyncio.Future:
    """Queues one request now; the future gives its result or error
    (cancelling it drops the request)."""
    if self._closing:
      raise RuntimeError("the server is shutting down; retry on another "
                         "replica.")
    future = asyncio.get_running_loop().create_future()
    key = (kind, self._group_key(kind, request))
    self._groups.setdefault(key, collections.deque()).append(
        _Pending(request, future, time.monotonic()))
    self._wakeup.set()
    return future

  def _oldest_group(self) -> Optional[Hashable]:
    live = {k: q for k, q in self._groups.items() if q}
    if not live:
      return None
    return min(live, key=lambda k: live[k][0].queued_at)

  async def _serve(self) -> None:
    while True:
      key = self._oldest_group()
      if key is None:
        if self._closing:
          return
        self._wakeup.clear()
        await self._wakeup.wait()
        continue
      queue = self._groups[key]
      waited = time.monotonic() - queue[0].queued_at
      if (len(queue) < self.max_batch_size and waited < self.max_wait_s
          and not self._closing):
        self._wakeup.clear()
        try:
          await asyncio.wait_for(self._wakeup.wait(),
                                 self.max_wait_s - waited)
        except asyncio.TimeoutError:
          pass
        continue
      batch = [queue.popleft() for _ in range(min(len(queue),
                                                  self.max_batch_size))]
      if not queue:
        del self._groups[key]
      await self._run_batch(key[0], batch)

  async def _run_batch(self, kind: str, batch: list[_Pending]) -> None:
    batch = [p for p in batch if not p.future.done()]  # clients gone
    if not batch:
      return
    started = time.monotonic()
    requests = [p.request for p in batch]
    try:
      results = await asyncio.get_running_loop().run_in_executor(
          self._executor, self._run, kind, requests)
    except Exception as e:  # pylint: disable=broad-except
      # A failure of the whole batch (not one request's bad input) reaches
      # every request in it; the worker keeps serving.
      results = [e] * len(batch)
    for pending, result in zip(batch, results):
      if pending.future.done():
        continue
      if isinstance(result, BaseException):
        pending.future.set_exception(result)
      else:
        pending.future.set_result(result)
    if self._on_batch is not None:
      self._on_batch(BatchStats(
          kind=kind, size=len(batch),
          queue_seconds=[started - p.queued_at for p in batch],
          compute_seconds=time.monotonic() - started, results=results))
