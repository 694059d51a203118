"""Pretraining throughput: the `train` binary's loop vs its step alone.

For each shape, two rates of the same compiled training step:

* pipeline: `prompt_tuning.train.train()`, run in this process through
  `gin_utils.run` with the recipe's own gin files (what
  `python -m prompt_tuning.train --gin_file=... --gin_file=...` runs), fed by
  the seqio task through tf.data, `data.to_global`, the metric reads,
  progress and summaries. Its time per step is the mean dispatch-to-dispatch
  interval of the steps after the first log period (which holds the
  compilation), up to the last step's dispatch (its checkpoint is left
  out). (`train/metrics.jsonl`'s examples_per_second is no measure here:
  its windows hold the compute-bound chunks below.)
* compute-bound: the very function the loop stepped with (captured from
  `train_step.make_train_step`, so the same model, optimizer, mesh, batch shape
  and compiled program), fed the run's first batch from memory, starting
  from a copy of the run's initial state: no input pipeline. The median of
  `--reps` steps after warm-up (common.time_alternating), run in chunks
  between the loop's log periods (the loop waits while one runs; that
  iteration is left out of its time) and after it, so that both rates see
  the same drift in the machine's load.
* input alone: the same training split through tf.data and
  `data.to_global` with nothing else running: what the input could feed.

overhead = 1 - pipeline rate / compute-bound rate: what the input pipeline
and the loop's per-step Python cost. Each compute-bound step is waited for
before the next is dispatched (about 1 ms of Python per step), which the
loop, one step ahead, overlaps; with the load's drift, a loop a few percent
faster than the step (a negative overhead) is within the noise. The
compute-bound run's first step repeats the pipeline's first step (same
state, batch and dropout key), so its loss must equal the one the loop
computed and logged: the check that both time the same program on the
same data.

Model FLOPs as benchmarks/train_step.py counts them: forward = 2 x weights x
tokens per matmul + attention scores and values (4 x q_len x k_len x
heads*head_dim per attention layer and example, full square even when
packing or causal masks skip part of it); model tuning = 3 x forward, prompt
tuning = 2 x forward (frozen weights get activation gradients only). Tokens
are the batch's positions (padding included: the step computes them too);
"loss tokens" are the target positions with a nonzero loss weight.

`--profile` runs the loop once more under cProfile, switched on for the
steps after the first log period only, and splits the loop's wall time per
step into the calls it makes (tf.data, host-to-device copies, dispatch,
metric reads, progress, summaries); the metric read that waits for a step
to finish holds the compute.

  python benchmarks/pretrain_throughput.py          # ~10 min on 2 cores
  python benchmarks/pretrain_throughput.py --models bible_t5_small,demo
  python benchmarks/pretrain_throughput.py --small  # a check, under a minute

Evaluation is switched off for these runs (train.train_eval_dataset_cfg and
train.infer_eval_dataset_cfg = None): it runs after the last step, outside
every timed window, and would only lengthen the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import pstats
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "pretrain_throughput.json")

# name: (gin files, a random T5X base is written to INITIAL_CHECKPOINT_PATH
# first: the model name it is built from, "gin" for the gin files' own
# MODEL_CONFIG, or None when the recipe starts from random weights).
MODELS: dict[str, tuple[tuple[str, ...], Optional[str]]] = {
    "bible_t5_tiny": (("models/bible_t5_tiny.gin",
                       "recipes/pretrain_bible_t5.gin"), None),
    "bible_t5_small": (("models/bible_t5_small.gin",
                        "recipes/pretrain_bible_t5.gin"), None),
    "bible_t5_base": (("models/bible_t5_base.gin",
                       "recipes/pretrain_bible_t5.gin"), None),
    "bible_t5_small_lm_adapt": (("models/bible_t5_small.gin",
                                 "recipes/pretrain_bible_t5_lm_adapt.gin"),
                                "bible_t5_small"),
    "bible_gpt2_small": (("models/bible_gpt2_small.gin",
                          "recipes/pretrain_bible_gpt2.gin"), None),
    "bible_gpt2_medium": (("models/bible_gpt2_medium.gin",
                           "recipes/pretrain_bible_gpt2.gin"), None),
    # The README demo: prompt tuning on a 66k-parameter random T5.
    "demo": (("runs/demo.gin",), "gin"),
}
DEFAULT_MODELS = ("bible_t5_tiny,bible_t5_small,bible_t5_base,"
                  "bible_gpt2_small,demo")
# --small: the tiny T5 recipe and the demo at batch 4 (their own lengths),
# on one device (the tests' 8 simulated CPU devices would not split a batch
# of 4); log every step, so the logged loss of step 1 is that step's own.
SMALL_MODELS = "bible_t5_tiny,demo"
SMALL_BINDINGS = ("BATCH_SIZE = 4", "make_mesh.num_devices = 1")
# The goal: pipeline and per-step overhead at most this share.
TARGET_OVERHEAD = 0.20


# ----------------------------------------------------------------------------
# FLOPs.


def forward_flops(config: Any, enc_len: int, dec_len: int,
                  batch: int) -> float:
  """Model FLOPs of one forward pass (module doc). enc_len is 0 for a
  decoder-only model; both include a soft prompt's positions."""
  d, inner, ff = config.emb_dim, config.num_heads * config.head_dim, (
      config.mlp_dim)
  attn_proj = 4 * d * inner  # q, k, v, o
  mlp = (len(config.mlp_activations) + 1) * d * ff  # wi_* and wo
  logits = 2 * d * config.vocab_size * dec_len
  if config.architecture == "decoder_only":
    per_layer = 2 * (attn_proj + mlp) * dec_len + 4 * dec_len * dec_len * inner
    return float(batch * (config.num_decoder_layers * per_layer + logits))
  encoder = config.num_encoder_layers * (
      2 * (attn_proj + mlp) * enc_len + 4 * enc_len * enc_len * inner)
  decoder = config.num_decoder_layers * (
      2 * (attn_proj + 2 * d * inner + mlp) * dec_len  # self, cross q/o, MLP
      + 2 * 2 * d * inner * enc_len  # cross-attention keys and values
      + 4 * dec_len * dec_len * inner + 4 * dec_len * enc_len * inner)
  return float(batch * (encoder + decoder + logits))


def step_flops(model: Any, batch: dict[str, Any]) -> Optional[float]:
  """3 x forward for model tuning, 2 x forward for prompt tuning; None for
  methods whose backward pass this count does not model."""
  method = type(model.method).__name__ if model.method is not None else (
      "ModelTuning")
  factor = {"ModelTuning": 3, "PromptTuning": 2}.get(method)
  if factor is None:
    return None
  prompt = model.method.positions_taken() if model.method is not None else 0
  rows, dec_len = batch["decoder_target_tokens"].shape
  if "encoder_input_tokens" in batch:
    enc_len = batch["encoder_input_tokens"].shape[1] + prompt
  else:
    enc_len, dec_len = 0, dec_len + prompt
  return factor * forward_flops(model.config, enc_len, dec_len, rows)


# ----------------------------------------------------------------------------
# The loop, instrumented from outside.


class Capture:
  """Wraps `train_step.make_train_step` / `train_step.init_state` while `train()`
  runs, to keep what the compute-bound run needs (the jitted step itself,
  a copy of the initial state, the first batch and dropout key) and to
  stamp every step's dispatch. A Python call and a list append per step:
  nothing that syncs with the device.

  `chunk_at`: before dispatching these steps, wait for the loop's last step
  and call `chunk()` (a run of compute-bound steps), so that the two rates
  are measured in turn, A B A B, as common.py's protocol has it: on a
  machine whose load drifts, both see the same drift. The loop's iteration
  that holds a chunk is left out of the pipeline's time (`chunked`).
  """

  def __init__(self, profile_from: Optional[int] = None,
               chunk_at: Sequence[int] = (),
               chunk: Optional[Callable[["Capture"], None]] = None):
    self.step_fn: Optional[Callable[..., Any]] = None
    self.model: Any = None
    self.dataset_cfg: Any = None
    self.mesh: Any = None
    self.init_state: Any = None
    self.frozen: Any = None
    self.first_batch: Any = None
    self.first_rng: Any = None
    self.stamps: list[float] = []
    self.metrics: list[dict[str, Any]] = []
    self.call_s: list[float] = []
    self.chunk_at, self.chunk = set(chunk_at), chunk
    self.chunked: set[int] = set()
    self.profile_from = profile_from
    self.profiler: Optional[cProfile.Profile] = None
    self.profiled_steps = 0
    self.total_steps: Optional[int] = None

  @contextlib.contextmanager
  def patched(self, total_steps: int) -> Iterator["Capture"]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from prompt_tuning import data  # pylint: disable=g-import-not-at-top
    from prompt_tuning import train_step  # pylint: disable=g-import-not-at-top
    make, init = train_step.make_train_step, train_step.init_state
    get_dataset = data.get_dataset
    self.total_steps = total_steps

    def get_dataset_once(cfg, model, **kwargs):
      if self.dataset_cfg is None:  # the training split: train() asks first
        self.dataset_cfg = cfg
      return get_dataset(cfg, model, **kwargs)

    def init_state(model, params, optimizer):
      state, frozen = init(model, params, optimizer)
      self.model, self.frozen = model, frozen
      # The loop donates its state; keep our own buffers, placed alike.
      self.init_state = jax.jit(lambda s: jax.tree.map(jnp.copy, s))(state)
      return state, frozen

    def make_train_step(*args, **kwargs):
      fn = make(*args, **kwargs)
      self.step_fn, self.mesh = fn, kwargs.get("mesh")

      def step(state, frozen, batch, rng):
        number = len(self.stamps) + 1
        if number in self.chunk_at and self.chunk is not None:
          jax.block_until_ready(state)
          self.chunk(self)
          self.chunked.add(number)
        now = time.perf_counter()
        self.stamps.append(now)
        if number == 1:
          self.first_batch, self.first_rng = batch, rng
        if self.profile_from is not None:
          if number == self.profile_from:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
          elif number == total_steps and self.profiler is not None:
            # Whole loop iterations only: dispatch k .. dispatch T.
            self.profiler.disable()
            self.profiled_steps = number - self.profile_from
        out = fn(state, frozen, batch, rng)
        self.call_s.append(time.perf_counter() - now)
        self.metrics.append(out[1])
        return out

      return step

    train_step.make_train_step, train_step.init_state = make_train_step, init_state
    data.get_dataset = get_dataset_once
    try:
      yield self
    finally:
      train_step.make_train_step, train_step.init_state = make, init
      data.get_dataset = get_dataset
      if self.profiler is not None and not self.profiled_steps:
        self.profiler.disable()


def write_random_base(gin_files: Sequence[str], source: str,
                      path: str) -> None:
  """The T5X base a recipe with a required INITIAL_CHECKPOINT_PATH loads."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  from prompt_tuning import random_checkpoint  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  if source == "gin":
    gin_utils.run(random_checkpoint.write_random_base,
                  [f"--gin_file={f}" for f in gin_files]
                  + [f"--gin.INITIAL_CHECKPOINT_PATH={path!r}"])
  else:
    with contextlib.redirect_stdout(sys.stderr):
      random_checkpoint.write_random_base(path=path, model_config=source)
  gin.clear_config()


def train_argv(gin_files: Sequence[str], model_dir: str, steps: int,
               log_period: int, base: Optional[str],
               bindings: Sequence[str]) -> list[str]:
  """The binary's command line for this run (also printed, to rerun it)."""
  argv = [f"--gin_file={f}" for f in gin_files]
  argv += [f"--gin.MODEL_DIR={model_dir!r}", f"--gin.TRAIN_STEPS={steps}",
           f"--gin.train.log_period={log_period}",
           "--gin.train.train_eval_dataset_cfg=None",
           "--gin.train.infer_eval_dataset_cfg=None"]
  if base is not None:
    argv.append(f"--gin.INITIAL_CHECKPOINT_PATH={base!r}")
  argv += [f"--gin_bindings={b}" for b in bindings]
  return argv


def run_train(argv: Sequence[str], capture: Capture, steps: int) -> Any:
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    with capture.patched(steps):
      return gin_utils.run(train_lib.train, list(argv))
  finally:
    gin.clear_config()


def input_alone(capture: Capture, batches: int, warmup: int
                ) -> dict[str, float]:
  """The training input by itself, the cores free: seconds per batch of
  tf.data (`data.iterate`'s numpy batches) and of `data.to_global` on them,
  each the mean over `batches` after `warmup` (the shuffle buffer fills
  first). What the input could feed if nothing else ran."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import console  # pylint: disable=g-import-not-at-top
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  with console.log_policy():  # the binary's quiet logs, as in train()
    iterator = data.iterate(data.get_dataset(capture.dataset_cfg,
                                             capture.model))
  for _ in range(warmup + 1):
    next(iterator)
  start = time.perf_counter()
  local = [next(iterator) for _ in range(batches)]
  fetched = time.perf_counter()
  for batch in local:
    jax.block_until_ready(data.to_global(batch, capture.mesh))
  placed = time.perf_counter()
  del iterator
  return {"tfdata_s": (fetched - start) / batches,
          "to_global_s": (placed - fetched) / batches}


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------
# The profile's categories: (label, file suffix, function name), each the
# cumulative time of one function the loop calls, per profiled step. None
# calls another, so no time is counted twice; what is left of the loop's
# wall time is the loop's own Python (train.record's float reads of the
# loss included).

CATEGORIES = [
    # NumpyIterator.__next__: waits for tf.data's prefetched batch (seqio's
    # preprocessing runs on tf.data's threads) and converts it to numpy.
    ("tf.data next batch (prefetch wait, to numpy)",
     "tensorflow/python/data/ops/dataset_ops.py", "__next__"),
    ("host-to-device copies (data.to_global)",
     "prompt_tuning/data.py", "to_global"),
    ("step dispatch (jit call)", "benchmarks/pretrain_throughput.py", "step"),
    # The first read of step k-1's metrics: waits for it if still running.
    ("check_finite (step k-1)", "prompt_tuning/train_step.py", "check_finite"),
    ("period metric reads (step k-1)", "prompt_tuning/train.py", "add"),
    # Reads the newest state: waits for step k, dispatched just before.
    ("optimizers.learning_rate (state after step k)",
     "prompt_tuning/optimizers.py", "learning_rate"),
    ("progress (bar / log line)", "prompt_tuning/summaries.py", "update"),
    ("summaries (TensorBoard + jsonl)", "prompt_tuning/summaries.py",
     "write"),
    ("throughput clock", "prompt_tuning/summaries.py", "step"),
]


def profile_breakdown(profiler: cProfile.Profile, steps: int,
                      wall_s: float) -> list[dict[str, Any]]:
  """ms per step by category, and the rest of the loop's wall time."""
  # {(file, line, function): (calls, primitive calls, tottime, cumtime, ...)}
  stats = pstats.Stats(profiler).stats
  totals: dict[str, float] = {}
  for label, suffix, name in CATEGORIES:
    for (filename, _, fn), (_, _, _, cumtime, _) in stats.items():
      if fn == name and filename.replace(os.sep, "/").endswith(suffix):
        totals[label] = totals.get(label, 0.0) + cumtime
  rows = []
  seen = 0.0
  for label in dict.fromkeys(label for label, _, _ in CATEGORIES):
    value = totals.get(label, 0.0)
    rows.append({"part": label, "ms_per_step": 1000 * value / steps})
    seen += value
  rows.append({"part": "rest of the loop (Python between calls)",
               "ms_per_step": 1000 * max(wall_s - seen, 0.0) / steps})
  rows.append({"part": "total (profiled wall)",
               "ms_per_step": 1000 * wall_s / steps})
  return rows


# ----------------------------------------------------------------------------


def bench_model(name: str, args, peak: float, workdir: str,
                profile: bool) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning import param_split  # pylint: disable=g-import-not-at-top
  gin_files, base_source = MODELS[name]
  base = None
  if base_source is not None:
    base = os.path.join(workdir, f"{name}_base", "checkpoint_0")
    write_random_base(gin_files, base_source, base)
  steps = args.log_period * (args.periods + 1)
  bindings = list(args.gin_bindings) + (list(SMALL_BINDINGS) if args.small
                                        else [])
  model_dir = os.path.join(workdir, f"{name}_run")
  argv = train_argv(gin_files, model_dir, steps, args.log_period, base,
                    bindings)
  print(f"[{name}] python -m prompt_tuning.train " + " ".join(
      a if "=" not in a else a.split("=", 1)[0] + "=" + json.dumps(
          a.split("=", 1)[1]) for a in argv), flush=True)
  # Compute-bound: the loop's own jitted step from a copy of its initial
  # state, on its first batch from memory; in chunks at the start of each
  # timed log period and after the loop (A B A B ...). The first chunk's
  # first step repeats the loop's step 1: the loss check.
  period = args.log_period
  chunk_at = ([k * period + 1 for k in range(1, args.periods + 1)]
              if period > 1 else [period + 1])
  chunks = len(chunk_at) + 1
  per_chunk = max(1, -(-args.reps // chunks))
  box: dict[str, Any] = {"times": []}

  def run() -> None:
    c = box["capture"]
    box["state"], metrics = c.step_fn(box["state"], c.frozen, c.first_batch,
                                      c.first_rng)
    jax.block_until_ready((box["state"], metrics))
    box.setdefault("first_loss", float(metrics["loss"]))

  def chunk(c: Capture) -> None:
    if "state" not in box:
      box["capture"], box["state"] = c, c.init_state
      run()  # step 1 again
      warmup = args.warmup
    else:
      warmup = min(args.warmup, 1)
    # No pause: the loop runs its steps back to back, and so does this.
    box["times"] += common.time_alternating(
        {"compute": run}, per_chunk, warmup, pause=0.0)["compute"]

  capture = Capture(chunk_at=chunk_at, chunk=chunk)
  t0 = time.perf_counter()
  run_train(argv, capture, steps)
  run_s = time.perf_counter() - t0
  # Let tf.data's threads wind down; the last chunk.
  gc.collect()
  time.sleep(0.5)
  chunk(capture)
  times = box["times"]
  compute_s = common.median(times)
  fn, frozen = capture.step_fn, capture.frozen
  batch, rng = capture.first_batch, capture.first_rng
  logged = read_jsonl(os.path.join(model_dir, "train", "metrics.jsonl"))
  batch_size = int(batch["decoder_target_tokens"].shape[0])
  # The loop's time per step: dispatch to dispatch of the steps after the
  # first log period P, P+1 .. T (the last step's checkpoint is left out),
  # less the iterations that held a compute-bound chunk. The mean: with one
  # step in flight, single gaps alternate short and long.
  stamps = capture.stamps
  gaps = np.asarray([stamps[k] - stamps[k - 1]
                     for k in range(period + 1, steps)
                     if k + 1 not in capture.chunked])
  pipeline_s = float(np.mean(gaps))
  weights = [float(m["weight_sum"]) for m in capture.metrics]
  loss_tokens = float(np.mean(weights[period:]))
  pipeline_loss_step1 = float(capture.metrics[0]["loss"])
  logged_loss_step1 = logged[0]["loss"] if period == 1 else None
  compile_s = capture.call_s[0]
  gc.collect()
  time.sleep(0.5)
  alone = input_alone(capture, args.reps, args.warmup)
  try:
    xla_flops = float(fn.lower(box["state"], frozen, batch, rng)
                      .cost_analysis()["flops"])
  except Exception:  # pylint: disable=broad-except
    xla_flops = None
  flops = step_flops(capture.model, batch)
  positions = sum(int(np.prod(batch[k].shape)) for k in
                  ("encoder_input_tokens", "decoder_target_tokens")
                  if k in batch)
  row = {
      "model": name, "gin_files": list(gin_files), "argv": list(argv),
      "method": (type(capture.model.method).__name__
                 if capture.model.method is not None else "ModelTuning"),
      "params": param_split.count((capture.init_state.params, frozen)),
      "batch": batch_size,
      "shapes": {k: list(v.shape) for k, v in batch.items()},
      "packed": any(k.endswith("_segment_ids") for k in batch),
      "steps": steps, "log_period": args.log_period,
      "timed_steps": len(gaps),
      "compile_s": compile_s, "run_s": run_s,
      "dispatch_s": list(capture.call_s),
      "pipeline_s": pipeline_s,
      "compute_s": compute_s,
      "input_tfdata_s": alone["tfdata_s"],
      "input_to_global_s": alone["to_global_s"],
      "overhead": 1.0 - compute_s / pipeline_s,
      "positions_per_step": positions,
      "loss_tokens_per_step": loss_tokens,
      "pipeline_tokens_per_s": positions / pipeline_s,
      "compute_tokens_per_s": positions / compute_s,
      "pipeline_loss_tokens_per_s": loss_tokens / pipeline_s,
      "gflop": None if flops is None else flops / 1e9,
      "xla_gflop": None if xla_flops is None else xla_flops / 1e9,
      "pipeline_gflops": None if flops is None else flops / pipeline_s / 1e9,
      "compute_gflops": None if flops is None else flops / compute_s / 1e9,
      "pipeline_of_peak": None if flops is None else flops / pipeline_s / peak,
      "compute_of_peak": None if flops is None else flops / compute_s / peak,
      "loss_step1_pipeline": pipeline_loss_step1,
      "loss_step1_logged": logged_loss_step1,
      "loss_step1_compute": box["first_loss"],
      "compute_chunks_at_steps": chunk_at,
      "weight_sums": weights, "times_compute": times, "logged": logged,
      "loop_gaps_s": [float(g) for g in gaps],
      "stderr_tty": sys.stderr.isatty(),
  }
  if profile:
    row["profile"] = profile_model(name, args, gin_files, base, bindings,
                                   workdir)
  del box, capture
  gc.collect()
  return row


def profile_model(name: str, args, gin_files: Sequence[str],
                  base: Optional[str], bindings: Sequence[str],
                  workdir: str) -> dict[str, Any]:
  """The loop again, under cProfile after its first log period."""
  steps = args.log_period * (args.periods + 1)
  model_dir = os.path.join(workdir, f"{name}_profiled")
  argv = train_argv(gin_files, model_dir, steps, args.log_period, base,
                    bindings)
  capture = Capture(profile_from=args.log_period + 1)
  run_train(argv, capture, steps)
  first, last = args.log_period, steps - 1  # stamps of dispatch k0 .. T
  wall = capture.stamps[last] - capture.stamps[first]
  count = capture.profiled_steps
  rows = profile_breakdown(capture.profiler, count, wall)
  top = pstats.Stats(capture.profiler)
  entries = sorted(top.stats.items(), key=lambda kv: -kv[1][2])[:15]
  return {"steps": count, "wall_ms_per_step": 1000 * wall / count,
          "rows": rows,
          "top_tottime": [{"function": f"{os.path.basename(k[0])}:{k[1]}"
                           f"({k[2]})", "tottime_ms_per_step":
                           1000 * v[2] / count} for k, v in entries]}


COLUMNS = [
    ("model", "model", "s"), ("batch_shape", "batch x positions", "s"),
    ("input_ms", "input ms", ".1f"),
    ("compute_ms", "step ms", ".1f"), ("pipeline_ms", "loop ms", ".1f"),
    ("overhead", "overhead", ".3f"),
    ("pipeline_tokens_per_s", "loop tok/s", ".0f"),
    ("pipeline_loss_tokens_per_s", "loop loss tok/s", ".0f"),
    ("gflop", "GFLOP/step", ".2f"), ("pipeline_gflops", "loop GFLOP/s", ".1f"),
    ("compute_gflops", "step GFLOP/s", ".1f"),
    ("pipeline_of_peak", "loop/peak", ".3f"),
]
PROFILE_COLUMNS = [("part", "part", "s"), ("ms_per_step", "ms/step", ".2f")]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=None,
                      help=f"comma-separated subset of {tuple(MODELS)} "
                      f"(default {DEFAULT_MODELS}; --small: {SMALL_MODELS})")
  parser.add_argument("--profile", default=None,
                      help="comma-separated models to run once more under "
                      "cProfile (default: demo, if measured; 'none' for "
                      "none)")
  parser.add_argument("--log_period", type=int, default=None,
                      help="train.log_period: steps per timed window "
                      "(default 20; --small 1)")
  parser.add_argument("--periods", type=int, default=None,
                      help="timed log periods after the first (default 3; "
                      "--small 3)")
  parser.add_argument("--reps", type=int, default=15,
                      help="timed compute-bound steps (>= 5 for reported "
                      "numbers)")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed compute-bound steps after the replayed "
                      "first step")
  parser.add_argument("--peak_n", type=int, default=None,
                      help="matmul size for the float32 peak (default 4096; "
                      "--small 512)")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra gin binding for every run, e.g. "
                      "'BATCH_SIZE = 64' (repeatable)")
  parser.add_argument("--small", action="store_true",
                      help="batch 4, log every step, few steps: a check")
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  args = parser.parse_args(argv)
  args.models = common.choices_arg(
      parser, "models", args.models or (SMALL_MODELS if args.small
                                        else DEFAULT_MODELS), tuple(MODELS))
  if args.profile is None:
    args.profile = ["demo"] if "demo" in args.models else []
  elif args.profile.strip().lower() == "none":
    args.profile = []
  else:
    args.profile = common.choices_arg(parser, "profile", args.profile,
                                      tuple(args.models))
  if args.log_period is None:
    args.log_period = 1 if args.small else 20
  if args.periods is None:
    args.periods = 3
  if args.peak_n is None:
    args.peak_n = 512 if args.small else 4096
  if args.log_period < 1 or args.periods < 1:
    parser.error("--log_period and --periods must be >= 1.")
  common.check_reps(parser, args)
  return args


def load_average() -> Optional[list[float]]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  common.note_reps(args.reps)
  load_before = load_average()
  print(f"load average (1, 5, 15 min) before: {load_before}")
  peak = common.matmul_peak(args.peak_n)
  print(f"float32 matmul peak ({args.peak_n}^2 jnp.dot, median of "
        f"{common.MIN_REPS}): {peak['flop_per_s'] / 1e9:.1f} GFLOP/s",
        flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.models:
      t0 = time.perf_counter()
      row = bench_model(name, args, peak["flop_per_s"], workdir,
                        name in args.profile)
      row["load_average"] = load_average()
      rows.append(row)
      print(f"  {name}: done in {time.perf_counter() - t0:.0f} s; load "
            f"{row['load_average']}", flush=True)
  load_after = load_average()
  for row in rows:
    row["batch_shape"] = (f"{row['batch']} x "
                          f"{row['positions_per_step'] // row['batch']}")
    row["compute_ms"] = 1000 * row["compute_s"]
    row["pipeline_ms"] = 1000 * row["pipeline_s"]
    row["input_ms"] = 1000 * (row["input_tfdata_s"]
                              + row["input_to_global_s"])
  print(f"\nloop: train() with the recipe, mean step-to-step time over "
        f"{args.periods} log periods of {args.log_period} steps after the "
        f"first; step: the same compiled step on one batch from memory, "
        f"median of {len(rows[0]['times_compute'])} in "
        f"{len(rows[0]['compute_chunks_at_steps']) + 1} chunks between and "
        f"after them; input: tf.data + data.to_global alone, "
        f"mean of {args.reps} batches; overhead = 1 - step / loop. Load "
        f"average (1, 5, 15 min) before {load_before}, after {load_after}")
  table = common.print_table(rows, COLUMNS)
  worst = max(rows, key=lambda r: r["overhead"])
  print(f"largest overhead: {worst['model']} {worst['overhead']:+.3f} "
        f"(goal <= {TARGET_OVERHEAD:.2f})")
  profiles = {}
  for row in rows:
    if "profile" in row:
      prof = row["profile"]
      print(f"\n{row['model']}: the loop's wall time per step under cProfile "
            f"({prof['steps']} steps after the first log period; "
            f"{prof['wall_ms_per_step']:.1f} ms/step profiled vs "
            f"{row['pipeline_ms']:.1f} unprofiled, step alone "
            f"{row['compute_ms']:.1f})")
      profiles[row["model"]] = common.print_table(prof["rows"],
                                                  PROFILE_COLUMNS)
  payload = {"benchmark": "pretrain_throughput",
             "config": "small" if args.small else "full",
             "models": args.models, "reps": args.reps, "warmup": args.warmup,
             "log_period": args.log_period, "periods": args.periods,
             "gin_bindings": list(args.gin_bindings)
             + (list(SMALL_BINDINGS) if args.small else []),
             "peak": peak, "target_overhead": TARGET_OVERHEAD,
             "load_average_before": load_before,
             "load_average_after": load_after,
             "flop_counting": "model tuning 3 x forward, prompt tuning 2 x "
             "forward; forward = 2 x matmul weights x positions + 4 x q_len "
             "x k_len x heads*head_dim per attention layer",
             "rows": rows, "table": table, "profile_tables": profiles}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
