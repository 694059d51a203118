"""Shared helpers for the benchmark scripts: timing, the matmul peak, output.

Timing follows issue 6's protocol: every contender is warmed up first
(compilation is measured apart, by the caller), then the contenders run in
turn, A B A B ..., so drift in the machine's speed (thermal, other load)
hits all of them alike; each reports the median of its timed repetitions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

MIN_REPS = 5
DEVICE_FLAG = "--xla_force_host_platform_device_count"
MiB = 2.0 ** 20


def cpu_threads() -> int:
  """Cores this process may use: what XLA's CPU client uses, and what torch
  gets too (`torch.set_num_threads`) so both sides run on the same threads."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def torch_threads(requested: Optional[int] = None) -> int:
  """Gives torch `requested` threads (default: the cores XLA uses)."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = requested or cpu_threads()
  torch.set_num_threads(threads)
  return threads


def note_reps(reps: int) -> None:
  if reps < MIN_REPS:
    print(f"note: --reps {reps} < {MIN_REPS}; a quick look, not a "
          "reportable median.")


def choices_arg(parser, flag: str, value: str,
                choices: Sequence[str]) -> list[str]:
  """A comma-separated flag value as a list; a parser error names the flag
  and the choices when it is empty or holds anything else."""
  picked = [v.strip().lower() for v in value.split(",") if v.strip()]
  if not picked or set(picked) - set(choices):
    parser.error(f"--{flag} {value!r}: choose from {tuple(choices)}.")
  return picked


def check_reps(parser, args) -> None:
  if args.reps < 1 or args.warmup < 0:
    parser.error("--reps must be >= 1 and --warmup >= 0.")


def with_device_count(xla_flags: str, count: int) -> str:
  """XLA_FLAGS text with JAX's CPU platform set to `count` devices."""
  kept = [f for f in xla_flags.split() if not f.startswith(DEVICE_FLAG)]
  return " ".join(kept + [f"{DEVICE_FLAG}={count}"])


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds one call takes; `fn` must block until its result is ready."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def time_alternating(fns: Mapping[str, Callable[[], Any]], reps: int,
                     warmup: int = 2, pause: float = 0.25
                     ) -> dict[str, list[float]]:
  """{name: [seconds per timed call]}, calls interleaved A B A B ...

  Each `fn` runs one step and blocks until it is done (jax:
  `block_until_ready`; torch on CPU is synchronous). `pause` seconds of
  idle precede every call: one runtime's worker threads may still spin
  after it returns (OpenMP, XLA's pool) and would steal cores from the
  next contender's first milliseconds; the pause lets them sleep.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      time.sleep(pause)
      times[name].append(time_call(fn))
  return times


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def dot_rate(m: int, k: int, n: int, reps: int = MIN_REPS
             ) -> dict[str, float]:
  """One jitted float32 `jnp.dot` [m, k] x [k, n], alone: the median of
  `reps` timed products after one warm-up, as FLOP/s (2 m k n per product)
  and as bytes of the [k, n] operand read per second."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (m, k), jnp.float32)
  b = jax.random.normal(kb, (k, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  seconds = median([time_call(lambda: dot(a, b).block_until_ready())
                    for _ in range(reps)])
  flops = 2.0 * m * k * n
  return {"shape": [m, k, n], "seconds": seconds, "flops": flops,
          "flop_per_s": flops / seconds, "bytes_per_s": 4.0 * k * n / seconds}


def matmul_peak(n: int = 4096, reps: int = MIN_REPS) -> dict[str, float]:
  """The machine's float32 matmul rate: a jitted n x n `jnp.dot`, the peak
  this run compares against."""
  return dict(dot_rate(n, n, n, reps), n=n)


def memory_bandwidth(mib: int = 256, reps: int = MIN_REPS
                     ) -> dict[str, float]:
  """The machine's read bandwidth as XLA sees it: a jitted sum over a
  float32 array of `mib` MiB (far larger than any cache); the median of
  `reps` after one warm-up. What bounds a step that streams weights."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.ones((mib * 2 ** 20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  seconds = median([time_call(lambda: total(x).block_until_ready())
                    for _ in range(reps)])
  return {"mib": mib, "seconds": seconds,
          "bytes_per_s": x.nbytes / seconds}


def tree_bytes(tree: Any) -> int:
  """Bytes of every leaf (jax/numpy arrays or ShapeDtypeStructs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def xla_memory(compiled) -> dict[str, Optional[float]]:
  """`compiled.memory_analysis()` in MiB (per device); Nones if absent."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    stats = None
  out = {f"xla_{f}_mib": (None if stats is None else
                          getattr(stats, f"{f}_size_in_bytes") / MiB)
         for f in ("argument", "output", "alias", "temp")}
  peak = getattr(stats, "peak_memory_in_bytes", None)
  out["xla_peak_mib"] = None if not peak else peak / MiB
  return out


def machine_info() -> dict[str, Any]:
  """What the numbers were measured on."""
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_threads": cpu_threads(), "processor": _cpu_model()}
  for module in ("jax", "jaxlib", "flax", "torch", "transformers", "peft"):
    try:
      info[module] = __import__(module).__version__
    except ImportError:
      info[module] = None
  return info


def _cpu_model() -> Optional[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def write_json(path: str, payload: Mapping[str, Any]) -> str:
  """Writes `payload` (plus `machine`) to `path`, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  payload = dict(payload, machine=machine_info())
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=False)
    f.write("\n")
  return path


def print_table(rows: Sequence[Mapping[str, Any]],
                columns: Sequence[tuple[str, str, str]]) -> str:
  """Prints rows as an aligned text table and returns it.

  columns: (key in each row, header, format spec such as ".3f"); a missing
  or None value prints as "-".
  """
  cells = [[header for _, header, _ in columns]]
  for row in rows:
    line = []
    for key, _, spec in columns:
      value = row.get(key)
      line.append("-" if value is None else format(value, spec))
    cells.append(line)
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = []
  for k, r in enumerate(cells):
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))))
    if k == 0:
      lines.append("  ".join("-" * w for w in widths))
  text = "\n".join(lines)
  print(text)
  return text
