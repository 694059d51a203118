"""Memory: peak host RSS of a training step vs a forward pass; optimizer state.

Config "S" (issue 6) prompt tuning: T5.1.1-style encoder-decoder, d_model 512,
6 + 6 layers, vocab 32128, float32; batch 8, inputs 128, targets 32; P = 20.
One random model is built with transformers and saved; ours loads that
directory (`pt.load_pretrained`); PEFT's side rebuilds the same seeded model
(`config_s.build_hf_model`). Every measurement runs in a fresh subprocess, so
its peak resident set is its own:

  forward       ours: jitted `model.loss_fn` (forward + loss, no gradient)
  train         ours: the compiled prompt-tuning step
                (`train_step.make_train_step`, Adafactor), run repeatedly
  train_model   ours: model tuning (all weights train), for scale
  peft_forward  transformers + PEFT PromptTuningConfig(20, encoder only),
                under `torch.no_grad`
  peft_train    PEFT: forward + backward + Adafactor step + zero_grad

Phases inside each child. RSS and its peak (VmRSS, VmHWM) are read from
/proc/self/status; the peak is reset between phases by writing 5 to
/proc/self/clear_refs. (`resource.getrusage(RUSAGE_SELF).ru_maxrss` cannot
serve per phase: it also keeps the peak that any exited thread saw, which no
reset clears; it enters the process peak only.)
  baseline  VmRSS once the imports, the frozen model and the batch are
            loaded: before any train state, compilation or step;
  compile   ours: the peak while the train state is made and the program is
            lowered and compiled (torch: no such phase);
  run       the peak over the warm-up and timed calls, after the compiler's
            freed heap is handed back to the OS (glibc `malloc_trim`);
  delta     run peak - baseline: what forward or training costs beyond the
            loaded model (train state, compiled program, activations,
            gradients, optimizer state);
  run-after run peak - RSS after compiling (torch: after loading): what
            executing adds once the program and state exist;
  process   the child's peak over all phases (loading included) and
            `ru_maxrss`.
XLA's own account of ours' compiled program (`compiled.memory_analysis()`:
argument, output and temp bytes) is reported alongside, and each kind's
median call time and first loss (ours: T5X's sum over the target tokens;
PEFT: the mean; the prompts are initialised differently).

Optimizer state (train and train_model children): bytes of `state.opt_state`
vs the trainable params (`state.params`) vs all params, for Adafactor (the
step's state, real arrays) and Adam (`optimizers.adam`, from shapes through
the same `train_step.init_state`). The check ("ok" / "FAIL", printed, never
raised): the state's bytes equal those of `optimizer.init` on the trainable
tree built independently from the shape (prompt tuning: one [P, d_model]
array), and are at most 3x the trainable bytes, so frozen weights hold no
optimizer state. "all-params init" is what the state would take if the
frozen weights had one. optax's Adafactor factors a second moment only when
a leaf's second-largest dimension is >= 128 (min_dim_size_to_factor): a
[20, 512] prompt is not factored, its state is a full [20, 512] v plus two
1-element placeholders and scalars.

  python benchmarks/memory.py                # config S, ~4 minutes on 2 cores
  python benchmarks/memory.py --small        # a check, about a minute
  python benchmarks/memory.py --kinds forward,train --reps 9
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import config_s  # pylint: disable=g-import-not-at-top,wrong-import-position
from config_s import Shape  # pylint: disable=g-import-not-at-top,wrong-import-position

KINDS = ("forward", "train", "train_model", "peft_forward", "peft_train")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "memory.json")
RESULT_MARKER = "MEMORY_RESULT "  # prefixes the child's one JSON line
MiB = common.MiB
# Optimizer state may take at most this multiple of the trainable bytes
# (Adam: two moments; Adafactor: one, factored or not; plus scalars).
OPT_STATE_MULTIPLE = 3.0


# ----------------------------------------------------------------------------
# Process memory (Linux).


def proc_status_kib(field: str) -> Optional[int]:
  """A KiB field of /proc/self/status ("VmRSS", "VmHWM"); None off Linux."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def max_rss_kib() -> int:
  """`ru_maxrss` of this process: KiB on Linux."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS; False if refused.

  (ru_maxrss follows only while no thread has exited since: the kernel keeps
  the peak an exiting thread saw apart, and no reset clears it.)

  Freed heap is handed back first (glibc `malloc_trim`), so a phase's peak
  does not start from memory an earlier phase freed but kept.
  """
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    return False
  return True


class Phases:
  """Peak RSS per phase: `end(name)` records the phase's peak, resets it."""

  def __init__(self):
    self.mib: dict[str, Optional[float]] = {}
    self.resettable = True

  def mark(self, name: str) -> None:
    """Records the current RSS as `name` (no reset)."""
    rss = proc_status_kib("VmRSS")
    self.mib[name] = None if rss is None else rss / 1024.0

  def end(self, name: str) -> None:
    """Records the peak since the last reset as `name`, then resets it.

    VmHWM, not ru_maxrss: the latter also keeps the peak that threads saw
    when they exited (the kernel's signal->maxrss), which no reset clears.
    """
    hwm = proc_status_kib("VmHWM")
    self.mib[name] = (max_rss_kib() if hwm is None else hwm) / 1024.0
    self.resettable = reset_peak_rss() and self.resettable


# ----------------------------------------------------------------------------
# Bytes of trees.


def leaf_shapes(tree) -> dict[str, int]:
  """{"shape": how many leaves have it}, e.g. {"(20, 512)": 1, "()": 3}."""
  import jax  # pylint: disable=g-import-not-at-top
  counts: dict[str, int] = {}
  for x in jax.tree.leaves(tree):
    key = str(tuple(x.shape))
    counts[key] = counts.get(key, 0) + 1
  return counts


# ----------------------------------------------------------------------------
# Children.


def opt_state_rows(model, method: str, s: Shape, state, frozen
                   ) -> list[dict[str, Any]]:
  """Optimizer-state bytes vs trainable and all params, with the check."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optimizers  # pylint: disable=g-import-not-at-top
  from prompt_tuning import param_split  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train_step  # pylint: disable=g-import-not-at-top
  shapes = lambda t: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
  every = shapes(param_split.merge(state.params, frozen))
  # What should train, from the method's definition, not from the split.
  expected = ({"prompt": jax.ShapeDtypeStruct((s.length, s.d_model),
                                              jnp.float32)}
              if method == "prompt" else every)
  rows = []
  for name, optimizer in (("adafactor", optimizers.adafactor()),
                          ("adam", optimizers.adam())):
    if name == "adafactor":  # the state the step really trained
      train_state, source = state, "arrays"
    else:
      train_state = jax.eval_shape(
          lambda p, o=optimizer: train_step.init_state(model, p, o)[0], every)
      source = "shapes"
    opt = common.tree_bytes(train_state.opt_state)
    train = common.tree_bytes(train_state.params)
    independent = common.tree_bytes(jax.eval_shape(optimizer.init, expected))
    ok = (opt == independent and train == common.tree_bytes(expected)
          and opt <= OPT_STATE_MULTIPLE * train)
    rows.append({
        "method": method, "optimizer": name, "source": source,
        "opt_state_bytes": opt, "trainable_bytes": train,
        "all_params_bytes": common.tree_bytes(every),
        "independent_init_bytes": independent,
        "all_params_init_bytes": common.tree_bytes(
            jax.eval_shape(optimizer.init, every)),
        "opt_over_trainable": opt / train,
        "opt_state_leaf_shapes": (leaf_shapes(train_state.opt_state)
                                  if method == "prompt" else None),
        "check": "ok" if ok else "FAIL",
    })
  return rows


def child_ours(kind: str, args, s: Shape) -> dict[str, Any]:
  """forward / train / train_model with ours, in this (fresh) process."""
  phases = Phases()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optimizers  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train_step  # pylint: disable=g-import-not-at-top
  method = "model" if kind == "train_model" else "prompt"
  model, variables = pt.load_pretrained(
      args.model_dir, method=config_s.our_method(method, s))
  params = variables["params"]
  del variables
  batch = {k: jnp.asarray(v) for k, v in config_s.make_batch(s).items()}
  jax.block_until_ready((params, batch))
  phases.mark("baseline")
  phases.end("load")

  box: dict[str, Any] = {}
  start = time.perf_counter()
  if kind == "forward":
    compiled = jax.jit(lambda p, b: model.loss_fn(p, b, None)).lower(
        params, batch).compile()

    def run():
      loss, metrics = compiled(params, batch)
      jax.block_until_ready((loss, metrics))
      box.setdefault("loss", float(loss))
  else:
    optimizer = optimizers.adafactor()
    state, frozen = train_step.init_state(model, params, optimizer)
    del params
    box["state"] = state
    del state
    compiled = train_step.make_train_step(model, optimizer, 1).lower(
        box["state"], frozen, batch, None).compile()

    def run():
      box["state"], metrics = compiled(box["state"], frozen, batch, None)
      jax.block_until_ready((box["state"], metrics))
      box.setdefault("loss", float(metrics["loss"]))
  compile_s = time.perf_counter() - start
  phases.end("compile")
  phases.mark("after_compile")

  times = common.time_alternating({kind: run}, args.reps, args.warmup)[kind]
  phases.end("run")
  row = {"kind": kind, "side": "ours", "step_s": common.median(times),
         "compile_s": compile_s, "times": times, "loss": box["loss"],
         **common.xla_memory(compiled)}
  if kind != "forward":
    row["opt_state"] = opt_state_rows(model, method, s, box["state"], frozen)
  return _finish(row, phases)


def child_peft(kind: str, args, s: Shape) -> dict[str, Any]:
  """peft_forward / peft_train, in this (fresh) process."""
  phases = Phases()
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import train_step  # pylint: disable=g-import-not-at-top
  common.torch_threads(args.threads)
  base = config_s.build_hf_model(s)  # the weights ours loads, same seed
  inputs = config_s.hf_inputs(config_s.make_batch(s))
  phases.mark("baseline")
  phases.end("load")
  phases.mark("after_compile")  # nothing to compile

  model = peft.get_peft_model(base, peft.PromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=s.length,
      num_transformer_submodules=1))
  box: dict[str, Any] = {}
  if kind == "peft_forward":
    model.eval()

    def run():
      with torch.no_grad():
        loss = model(**inputs).loss
      box.setdefault("loss", float(loss))
  else:
    model.train()
    optimizer = train_step.torch_adafactor(
        [p for p in model.parameters() if p.requires_grad])

    def run():
      loss = model(**inputs).loss
      loss.backward()
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
      box.setdefault("loss", float(loss.detach()))

  times = common.time_alternating({kind: run}, args.reps, args.warmup)[kind]
  phases.end("run")
  row = {"kind": kind, "side": "peft", "step_s": common.median(times),
         "compile_s": None, "times": times, "loss": box["loss"]}
  return _finish(row, phases)


def _finish(row: dict[str, Any], phases: Phases) -> dict[str, Any]:
  mib = phases.mib
  if not phases.resettable:  # every "peak" is the process's so far
    mib["compile"] = mib["run"] = max_rss_kib() / 1024.0
  # ru_maxrss also remembers peaks seen by threads that exited.
  peaks = [v for k, v in mib.items() if k in ("load", "compile", "run")
           and v is not None] + [max_rss_kib() / 1024.0]
  row.update({
      "baseline_mib": mib["baseline"], "load_peak_mib": mib["load"],
      "compile_peak_mib": mib.get("compile"),
      "after_compile_mib": mib["after_compile"], "run_peak_mib": mib["run"],
      "process_peak_mib": max(peaks),
      "delta_mib": (None if mib["baseline"] is None
                    else mib["run"] - mib["baseline"]),
      "exec_mib": (None if mib["after_compile"] is None
                   else mib["run"] - mib["after_compile"]),
      "peak_reset": phases.resettable,
  })
  return row


# ----------------------------------------------------------------------------
# Parent.


def run_child(kind: str, args, s: Shape, model_dir: str) -> dict[str, Any]:
  """Runs one measurement in a fresh interpreter; returns its row."""
  cmd = [sys.executable, os.path.abspath(__file__), "--child", kind,
         "--model_dir", model_dir, "--reps", str(args.reps),
         "--warmup", str(args.warmup)]
  if args.threads:
    cmd += ["--threads", str(args.threads)]
  for field in dataclasses.fields(Shape):
    cmd += [f"--{field.name}", str(getattr(s, field.name))]
  # One device: simulated CPU devices (a test session's XLA_FLAGS) would
  # only add clients and threads to the baseline.
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count"))
  done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        timeout=args.child_timeout, check=False)
  for line in done.stdout.splitlines():
    if line.startswith(RESULT_MARKER):
      return json.loads(line[len(RESULT_MARKER):])
  raise RuntimeError(f"memory child {kind!r} failed (exit {done.returncode})"
                     f":\n{done.stderr[-4000:]}")


COLUMNS = [
    ("kind", "kind", "s"), ("baseline_mib", "baseline MiB", ".0f"),
    ("compile_peak_mib", "compile peak", ".0f"),
    ("after_compile_mib", "after compile", ".0f"),
    ("run_peak_mib", "run peak MiB", ".0f"), ("delta_mib", "delta MiB", ".1f"),
    ("exec_mib", "run-after", ".1f"),
    ("process_peak_mib", "process peak", ".0f"),
    ("xla_argument_mib", "XLA arg MiB", ".1f"),
    ("xla_output_mib", "XLA out MiB", ".1f"),
    ("xla_temp_mib", "XLA temp MiB", ".1f"),
    ("step_s", "s/call", ".3f"), ("compile_s", "compile s", ".1f"),
    ("loss", "first loss", ".4f"),
]
RATIO_COLUMNS = [
    ("side", "side", "s"), ("train", "train", "s"),
    ("delta_ratio", "delta train/fwd", ".2f"),
    ("peak_ratio", "peak train/fwd", ".3f"),
]
OPT_COLUMNS = [
    ("method", "method", "s"), ("optimizer", "optimizer", "s"),
    ("source", "from", "s"), ("opt_state_bytes", "opt-state B", ",d"),
    ("trainable_bytes", "trainable B", ",d"),
    ("all_params_bytes", "all params B", ",d"),
    ("opt_over_trainable", "opt/trainable", ".3f"),
    ("independent_init_bytes", "init(trainable) B", ",d"),
    ("all_params_init_bytes", "init(all) B", ",d"), ("check", "check", "s"),
]


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Train / forward on each side: of the deltas and of the run peaks."""
  by_kind = {r["kind"]: r for r in rows}
  out = []
  for side, forward, trains in (("ours", "forward", ("train", "train_model")),
                                ("peft", "peft_forward", ("peft_train",))):
    for train in trains:
      if forward in by_kind and train in by_kind:
        f, t = by_kind[forward], by_kind[train]
        out.append({
            "side": side, "train": train, "forward": forward,
            "delta_ratio": (t["delta_mib"] / f["delta_mib"]
                            if f["delta_mib"] else None),
            "peak_ratio": t["run_peak_mib"] / f["run_peak_mib"]})
  return out


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kinds", default=",".join(KINDS),
                      help=f"comma-separated subset of {KINDS}")
  parser.add_argument("--reps", type=int, default=common.MIN_REPS,
                      help="timed calls per kind (>= 5 for reported medians)")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed calls per kind after compilation")
  config_s.add_shape_args(parser)
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: the cores XLA uses)")
  parser.add_argument("--child_timeout", type=float, default=900.0,
                      help="seconds one measurement may take")
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  # Internal: run one measurement and print its row.
  parser.add_argument("--child", choices=KINDS, default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.kinds = common.choices_arg(parser, "kinds", args.kinds, KINDS)
  common.check_reps(parser, args)
  if args.child and not args.model_dir:
    parser.error("--child needs --model_dir.")
  return args


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  shape = config_s.shape_from_args(args)
  if args.child:
    child = child_peft if args.child.startswith("peft") else child_ours
    row = child(args.child, args, shape)
    print(RESULT_MARKER + json.dumps(row), flush=True)
    return row

  common.note_reps(args.reps)
  rows = []
  with tempfile.TemporaryDirectory() as path:
    base = config_s.build_hf_model(shape)
    base.save_pretrained(path)
    del base
    for kind in args.kinds:
      t0 = time.perf_counter()
      rows.append(run_child(kind, args, shape, path))
      print(f"  {kind}: done in {time.perf_counter() - t0:.0f} s",
            flush=True)

  opt_rows = [o for r in rows for o in r.pop("opt_state", None) or ()]
  ratios = ratio_rows(rows)
  print(f"\nconfig {'small' if args.small else 'S'}: "
        f"{dataclasses.asdict(shape)}; one fresh process per kind; RSS in "
        f"MiB; median of {args.reps} calls after {args.warmup} warm-up calls")
  if not all(r["peak_reset"] for r in rows):
    print("note: /proc/self/clear_refs refused; phase peaks are the "
          "process's peak so far.")
  table = common.print_table(rows, COLUMNS)
  print()
  ratio_table = common.print_table(ratios, RATIO_COLUMNS)
  opt_table = None
  if opt_rows:
    print("\noptimizer state (bytes; check: opt-state == optimizer.init of "
          "the trainable tree alone, <= "
          f"{OPT_STATE_MULTIPLE:g}x trainable)")
    opt_table = common.print_table(opt_rows, OPT_COLUMNS)
    for o in opt_rows:
      if o["opt_state_leaf_shapes"]:
        print(f"  {o['optimizer']} state leaves for prompt tuning "
              f"(shape: count): {o['opt_state_leaf_shapes']}")
  payload = {"benchmark": "memory",
             "config": "small" if args.small else "S",
             "shape": dataclasses.asdict(shape), "reps": args.reps,
             "warmup": args.warmup, "rows": rows, "ratios": ratios,
             "opt_state": opt_rows,
             "opt_state_ok": all(o["check"] == "ok" for o in opt_rows),
             "table": table, "ratio_table": ratio_table,
             "opt_table": opt_table}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
