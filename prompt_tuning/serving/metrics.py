"""The server's Prometheus metrics (`GET /metrics`), in their own registry so
several servers in one process (tests, benchmarks) do not mix counts."""

from __future__ import annotations

from typing import Callable

import prometheus_client

from prompt_tuning.serving.batcher import BatchStats

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
  """Requests, batch sizes, queue time, generated tokens and compiles."""

  def __init__(self, compiles: Callable[[], float],
               queued: Callable[[], float]):
    self.registry = prometheus_client.CollectorRegistry()
    r = self.registry
    self.requests = prometheus_client.Counter(
        "prompt_tuning_requests", "HTTP requests by endpoint and status.",
        ("endpoint", "status"), registry=r)
    self.batch_size = prometheus_client.Histogram(
        "prompt_tuning_batch_size", "Requests per compiled batch.", ("kind",),
        buckets=_BATCH_BUCKETS, registry=r)
    self.queue_seconds = prometheus_client.Histogram(
        "prompt_tuning_queue_seconds",
        "Time a request waited before its batch started.",
        buckets=_SECONDS_BUCKETS, registry=r)
    self.batch_seconds = prometheus_client.Histogram(
        "prompt_tuning_batch_seconds", "Compute time of one batch.",
        ("kind",), buckets=_SECONDS_BUCKETS, registry=r)
    self.generated_tokens = prometheus_client.Counter(
        "prompt_tuning_generated_tokens",
        "Tokens returned by /v1/generate (rate() of it is tokens/s).",
        registry=r)
    self.tokens_per_second = prometheus_client.Gauge(
        "prompt_tuning_batch_tokens_per_second",
        "Generated tokens per second of compute in the latest generate "
        "batch.", registry=r)
    compiled = prometheus_client.Gauge(
        "prompt_tuning_compiles",
        "XLA compilations since start (flat after warm-up).", registry=r)
    compiled.set_function(compiles)
    waiting = prometheus_client.Gauge(
        "prompt_tuning_queued_requests", "Requests waiting for a batch.",
        registry=r)
    waiting.set_function(queued)

  def observe_batch(self, stats: BatchStats, tokens: int) -> None:
    self.batch_size.labels(stats.kind).observe(stats.size)
    self.batch_seconds.labels(stats.kind).observe(stats.compute_seconds)
    for seconds in stats.queue_seconds:
      self.queue_seconds.observe(seconds)
    if stats.kind == "generate":
      self.generated_tokens.inc(tokens)
      if stats.compute_seconds > 0:
        self.tokens_per_second.set(tokens / stats.compute_seconds)

  def render(self) -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text format."""
    return (prometheus_client.generate_latest(self.registry),
            prometheus_client.CONTENT_TYPE_LATEST)
