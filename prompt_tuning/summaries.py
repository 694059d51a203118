"""What a run tells people: metric files, a progress bar, start/end screens.

Metrics go to TensorBoard event files (clu writers) under
`MODEL_DIR/<kind>/` and, as JSON lines, to `MODEL_DIR/<kind>/metrics.jsonl`,
for kind in train, training_eval (T5X's names). Only process 0 writes.
The progress bar shows step, loss, learning rate and examples/s on a TTY;
without one (logs, CI) it prints a plain line every `log_period` steps.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import jax

from prompt_tuning import files
from prompt_tuning import param_split


def truncate_metrics(model_dir: str, step: int) -> None:
  """Drops the JSON-lines rows after `step` (and any half-written line)
  from a run's metric files: `<kind>/metrics.jsonl` and
  `inference_eval/<task>-metrics.jsonl`. A resumed run logs those steps
  again, so each step stays once. Process 0 only; each file is replaced
  atomically."""
  if jax.process_index() != 0 or not os.path.isdir(model_dir):
    return
  for kind in sorted(os.listdir(model_dir)):
    folder = os.path.join(model_dir, kind)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if name == "metrics.jsonl" or name.endswith("-metrics.jsonl"):
        _keep_rows_up_to(os.path.join(folder, name), step)


def _keep_rows_up_to(path: str, step: int) -> None:
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # Cut off by a kill mid-write.
    if isinstance(row, dict) and int(row.get("step", 0)) <= step:
      kept.append(line)
  if kept != lines:
    files.write_atomic(path, "".join(line + "\n" for line in kept))


class MetricWriters:
  """TensorBoard + JSON lines writers per kind (train, training_eval, ...)."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self._writers: dict[str, Any] = {}
    self.enabled = jax.process_index() == 0

  def _writer(self, kind: str):
    if kind not in self._writers:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._writers[kind] = metric_writers.create_default_writer(
          os.path.join(self.model_dir, kind), asynchronous=False,
          just_logging=not self.enabled)
    return self._writers[kind]

  def jsonl_path(self, kind: str) -> str:
    return os.path.join(self.model_dir, kind, "metrics.jsonl")

  def write(self, kind: str, step: int,
            scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    writer = self._writer(kind)
    writer.write_scalars(step, scalars)
    writer.flush()
    path = self.jsonl_path(kind)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(dict(step=step, **scalars)) + "\n")

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()


def in_notebook() -> bool:
  """True inside a Jupyter / Colab kernel (whose output is no TTY, but
  renders tqdm.auto's widget bar)."""
  shell = sys.modules.get("IPython")
  ipython = shell.get_ipython() if shell is not None else None
  return ipython is not None and hasattr(ipython, "kernel")


class Progress:
  """A tqdm bar on a TTY or in a notebook; otherwise a log line every
  `log_period` steps."""

  def __init__(self, total: int, initial: int, log_period: int,
               stream=None):
    self.stream = stream or sys.stderr
    self.total = total
    self.log_period = max(1, log_period)
    notebook = in_notebook()
    self.tty = (self.stream.isatty() or notebook) and (
        jax.process_index() == 0)
    self._bar = None
    if self.tty:
      from tqdm import auto  # pylint: disable=g-import-not-at-top
      # A notebook without ipywidgets gets a text bar: redrawn at most once
      # a second, or its cell output would hold one line per step.
      self._bar = auto.tqdm(total=total, initial=initial, unit="step",
                            file=self.stream, dynamic_ncols=True,
                            mininterval=1.0 if notebook else 0.1)

  def update(self, step: int, loss: float, learning_rate: Optional[float],
             examples_per_sec: float) -> None:
    fields = {"loss/token": f"{loss:.4f}", "ex/s": f"{examples_per_sec:.1f}"}
    if learning_rate is not None:
      fields["lr"] = f"{learning_rate:.3g}"
    if self._bar is not None:
      self._bar.set_postfix(fields, refresh=False)
      self._bar.update(step - self._bar.n)  # Redraws every mininterval.
    elif (step % self.log_period == 0 or step == self.total) and (
        jax.process_index() == 0):
      text = "  ".join(f"{k} {v}" for k, v in fields.items())
      print(f"step {step}/{self.total}  {text}", file=self.stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Throughput:
  """Examples per second over a window of steps (reset at each log line).

  Steps are dispatched asynchronously, so a single step's wall time says
  little; the window's average does.
  """

  def __init__(self, examples_per_step: int):
    self.examples_per_step = examples_per_step
    self.reset()

  def reset(self) -> None:
    self._start = time.perf_counter()
    self._steps = 0

  def step(self) -> float:
    self._steps += 1
    elapsed = max(time.perf_counter() - self._start, 1e-9)
    return self._steps * self.examples_per_step / elapsed


def screen(title: str, rows: Mapping[str, Any]) -> str:
  """A titled block of `name: value` rows, printed by process 0."""
  width = max([len(k) for k in rows] + [0])
  lines = [f"== {title}"] + [f"  {k.ljust(width)}  {v}"
                              for k, v in rows.items()]
  text = "\n".join(lines)
  if jax.process_index() == 0:
    print(text, flush=True)
  return text


def print_examples(after: Mapping[str, Sequence[Mapping[str, str]]],
                   before: Optional[Mapping[str, Sequence[Mapping[str, str]]]]
                   = None) -> None:
  """Held-out examples as a block per example: input, reference, and the
  output before training (if given) and after."""
  for task, records in after.items():
    earlier = (before or {}).get(task, [])
    print(f"== examples: {task} (held out)")
    for i, record in enumerate(records):
      rows = {"input": record["input"], "reference": record["target"]}
      if i < len(earlier):
        rows["before"] = earlier[i]["prediction"]
      rows["after"] = record["prediction"]
      width = max(len(k) for k in rows)
      for key, value in rows.items():
        # A text's own line breaks (a document task's trailing newline)
        # would break the columns: strip the ends, indent the rest.
        value = str(value).strip().replace("\n", "\n" + " " * (width + 4))
        print(f"  {key.ljust(width)}  {value}")
      print()


def start_rows(model: Any, trainable_params: Any, frozen_params: Any,
               mesh: Any) -> dict[str, Any]:
  """The rows every binary's start screen shows."""
  config = model.config
  train, frozen = (param_split.count(trainable_params),
                   param_split.count(frozen_params))
  method = type(model.method).__name__ if model.method else "model tuning"
  share = 100.0 * train / max(train + frozen, 1)
  return {
      "model": (f"{config.architecture}: emb {config.emb_dim}, "
                f"{config.num_heads} heads x {config.head_dim}, vocab "
                f"{config.vocab_size}"),
      "method": method,
      "parameters": (f"{train:,} trainable ({share:.4f}%), {frozen:,} "
                     "frozen"),
      "mesh": (", ".join(f"{k}={v}" for k, v in mesh.shape.items())
               + f" ({jax.device_count()} {jax.devices()[0].platform} "
               f"devices, {jax.process_count()} processes)"),
  }


def format_metrics(metrics: Mapping[str, Any]) -> str:
  return ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()))
