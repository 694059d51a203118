"""Training step: ours vs transformers + PEFT on CPU, and vs the matmul peak.

Config "S" (issue 6): T5.1.1-style encoder-decoder, d_model 512, 8 heads x 64,
gated-GELU d_ff 1024, 6 + 6 layers, vocab 32128, untied logits, float32;
batch 8, inputs 128, targets 32; P = 20. One random model is built with
transformers and saved; ours loads that directory (`pt.load_pretrained`), so
both sides train the same weights on the same fixed batch, without dropout.

Methods (each side optimizes only what the method trains, with Adafactor at
prompt tuning's settings: lr 0.3, decay 0.8, no parameter scaling, clip 1.0,
weight decay 1e-5):
  prompt  ours PromptTuning(20)            PEFT PromptTuningConfig(20)
  prefix  ours PrefixTuning(20, decoder    PEFT PrefixTuningConfig(20, no
          self-attention only, as PEFT's   projection)
          T5 prefix reaches)
  model   ours ModelTuning (all weights)   the plain HF model, all weights

Ours is the jitted `train_step.make_train_step` (donated state; only the
trainable subtree is differentiated); PEFT's step is forward + backward +
optimizer step + zero_grad, with torch on as many threads as XLA uses.

FLOPs ("model FLOPs", counted from shapes, not from what either side runs):
  forward = 2 * (weights in matmuls) * (tokens they see)
          + attention scores and values, 4 * q_len * k_len * (heads * d_kv)
            per layer and example (the full causal square is counted);
  prompt tuning (frozen weights): backward computes activation gradients
  only, the same matmuls again, so step = 2 x forward; a decoder-self-
  attention prefix needs them through the decoder and logits only, so step =
  forward + decoder forward; model tuning adds the weight gradients, step =
  3 x forward.
The optimizer update and element-wise work are not counted. XLA's own count
of ours (`cost_analysis`) is reported alongside.

  python benchmarks/train_step.py                 # config S, ~2.5 minutes on 2 cores
  python benchmarks/train_step.py --data_devices 2  # ours on one CPU device per core
  python benchmarks/train_step.py --small         # a seconds-long check
  python benchmarks/train_step.py --methods prompt --reps 11

On a CPU host, XLA's runtime keeps the cores busier when the step runs as
one program per core (`--data_devices` = cores: each device takes its share
of the batch, as the `train` binary's data-parallel mesh does) than as one
program whose ops share the cores' thread pool; `--data_devices` measures
that. It replicates the frozen weights per device (RAM is shared on CPU).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import config_s  # pylint: disable=g-import-not-at-top,wrong-import-position
from config_s import Shape  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = config_s.METHODS
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "train_step.json")


# ----------------------------------------------------------------------------
# FLOPs.


def forward_flops(s: Shape, method: str) -> dict[str, float]:
  """Model FLOPs of one forward pass over the batch, by part (module doc).

  "encoder": the encoder stack; "cross_kv": cross-attention key/value
  projections of the encoder output; "decoder": the decoder stack and the
  logits.
  """
  inner = s.num_heads * s.d_kv
  enc_len = s.inputs + (s.length if method == "prompt" else 0)
  dec_self_keys = s.targets + (s.length if method == "prefix" else 0)
  attn_proj = 4 * s.d_model * inner  # q, k, v, o
  mlp = 3 * s.d_model * s.d_ff  # wi_0, wi_1, wo
  parts = {
      # projections + MLP on every position, self-attention
      "encoder": s.num_layers * (2 * (attn_proj + mlp) * enc_len
                                 + 4 * enc_len * enc_len * inner),
      "cross_kv": s.num_layers * 2 * 2 * s.d_model * inner * enc_len,
      # self-attention projections, cross q/o, MLP; both attentions; logits
      "decoder": s.num_layers * (2 * (attn_proj + 2 * s.d_model * inner + mlp)
                                 * s.targets
                                 + 4 * s.targets * dec_self_keys * inner
                                 + 4 * s.targets * enc_len * inner)
                 + 2 * s.d_model * s.vocab * s.targets,
  }
  return {k: float(v * s.batch) for k, v in parts.items()}


def step_flops(s: Shape, method: str) -> float:
  """Forward + backward model FLOPs of one step.

  Frozen weights get activation gradients only (one more pass over the
  matmuls the gradient crosses): prompt tuning's gradient crosses the whole
  model; a decoder-self-attention prefix's crosses the decoder and logits
  only (the encoder does not depend on it). Model tuning adds the weight
  gradients: 3 x forward.
  """
  parts = forward_flops(s, method)
  forward = sum(parts.values())
  if method == "model":
    return 3 * forward
  if method == "prefix":
    return forward + parts["decoder"]
  return 2 * forward


def build_ours(path: str, method: str, s: Shape, batch,
               data_devices: int = 1) -> dict[str, Any]:
  """Loads ours, compiles the step; returns {"run", "compile_s", "compiled",
  ...}. With data_devices > 1 the step runs data-parallel on that many CPU
  devices, as the `train` binary partitions it (mesh data x 1)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optimizers  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train_step  # pylint: disable=g-import-not-at-top
  mesh = None
  if data_devices > 1:
    mesh = partitioning.make_mesh(data=data_devices, model=1,
                                  num_devices=data_devices)
  model, variables = pt.load_pretrained(
      path, method=config_s.our_method(method, s), mesh=mesh)
  optimizer = optimizers.adafactor()
  state, frozen = train_step.init_state(model, variables["params"], optimizer)
  del variables
  if mesh is None:
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
  else:
    batch = data.to_global(batch, mesh)
  step = train_step.make_train_step(model, optimizer, 1, mesh=mesh)
  start = time.perf_counter()
  lowered = step.lower(state, frozen, batch, None)
  traced = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  try:
    xla_flops = float(compiled.cost_analysis()["flops"])
  except Exception:  # pylint: disable=broad-except
    xla_flops = None
  box = {"state": state}

  def run():
    box["state"], metrics = compiled(box["state"], frozen, batch, None)
    jax.block_until_ready((box["state"], metrics))
    box["loss"] = metrics["loss"]

  return {"run": run, "trace_s": traced - start,
          "compile_s": compiled_at - traced, "xla_flops": xla_flops,
          "box": box, "compiled": compiled,
          "trainable": pt.param_split.count(state.params)}


# ----------------------------------------------------------------------------
# transformers + PEFT.


def torch_adafactor(params):
  """transformers' Adafactor at prompt tuning's settings (as ours)."""
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  return Adafactor(params, lr=0.3, decay_rate=-0.8, clip_threshold=1.0,
                   weight_decay=1e-5, scale_parameter=False,
                   relative_step=False, warmup_init=False)


def build_peft(base, method: str, s: Shape, batch) -> dict[str, Any]:
  """PEFT (or the plain model for model tuning) with its step closure."""
  import peft  # pylint: disable=g-import-not-at-top
  model = copy.deepcopy(base)
  if method == "prompt":
    model = peft.get_peft_model(model, peft.PromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=s.length,
        # PEFT's seq2seq default (2) prompts the decoder too; ours and the
        # paper prompt the encoder input only.
        num_transformer_submodules=1))
  elif method == "prefix":
    model = peft.get_peft_model(model, peft.PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=s.length,
        num_layers=s.num_layers, prefix_projection=False))
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch_adafactor(params)
  inputs = config_s.hf_inputs(batch)
  box = {}

  def run():
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    box["loss"] = loss.detach()

  return {"run": run, "box": box, "trainable": sum(p.numel() for p in params)}


# ----------------------------------------------------------------------------


def bench_method(method: str, s: Shape, path: str, base, batch,
                 reps: int, warmup: int, peak: float,
                 data_devices: int = 1) -> dict[str, Any]:
  ours = build_ours(path, method, s, batch, data_devices)
  theirs = build_peft(base, method, s, batch)
  times = common.time_alternating({"ours": ours["run"],
                                   "peft": theirs["run"]}, reps, warmup)
  ours_s = common.median(times["ours"])
  peft_s = common.median(times["peft"])
  flops = step_flops(s, method)
  row = {
      "method": method, "ours_s": ours_s, "peft_s": peft_s,
      "ratio": ours_s / peft_s, "compile_s": ours["compile_s"],
      "trace_s": ours["trace_s"], "gflop": flops / 1e9,
      "xla_gflop": (None if ours["xla_flops"] is None
                    else ours["xla_flops"] / 1e9),
      "ours_gflops": flops / ours_s / 1e9, "peft_gflops": flops / peft_s / 1e9,
      "ours_of_peak": flops / ours_s / peak,
      "peft_of_peak": flops / peft_s / peak,
      "trainable_ours": int(ours["trainable"]),
      "trainable_peft": int(theirs["trainable"]),
      "loss_ours": float(ours["box"]["loss"]),
      "loss_peft": float(theirs["box"]["loss"]),
      "times_ours": times["ours"], "times_peft": times["peft"],
  }
  return row


COLUMNS = [
    ("method", "method", "s"), ("ours_s", "ours s/step", ".3f"),
    ("peft_s", "PEFT s/step", ".3f"), ("ratio", "ours/PEFT", ".2f"),
    ("compile_s", "ours compile s", ".1f"), ("gflop", "GFLOP/step", ".1f"),
    ("ours_gflops", "ours GFLOP/s", ".1f"),
    ("peft_gflops", "PEFT GFLOP/s", ".1f"),
    ("ours_of_peak", "ours/peak", ".2f"), ("peft_of_peak", "PEFT/peak", ".2f"),
]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated subset of {METHODS}")
  parser.add_argument("--reps", type=int, default=9,
                      help="timed repetitions per side (>= 5 for reported "
                      "numbers)")
  # Ours' first ~4 executions after compiling run up to 1.7x slower
  # (buffer allocation); the default keeps them out of the median.
  parser.add_argument("--warmup", type=int, default=4,
                      help="untimed steps per side after compilation")
  config_s.add_shape_args(parser)
  parser.add_argument("--peak_n", type=int, default=4096,
                      help="matmul size for the float32 peak")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: the cores XLA uses)")
  parser.add_argument("--data_devices", type=int, default=1,
                      help="run ours data-parallel on this many CPU devices "
                      "(XLA_FLAGS' host device count, set by this script "
                      "before JAX starts; e.g. one per core)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  args = parser.parse_args(argv)
  args.methods = common.choices_arg(parser, "methods", args.methods, METHODS)
  common.check_reps(parser, args)
  return args


def use_cpu_devices(count: int) -> None:
  """Makes JAX's CPU platform expose `count` devices (before JAX starts)."""
  if count <= 1:
    return
  if "jax" in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.device_count() < count:
      raise SystemExit(
          f"--data_devices={count}, but JAX already started with "
          f"{jax.device_count()} device(s); run this script in a fresh "
          f"process, or set XLA_FLAGS={common.DEVICE_FLAG}={count} before "
          "JAX starts.")
    return
  os.environ["XLA_FLAGS"] = common.with_device_count(
      os.environ.get("XLA_FLAGS", ""), count)


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  use_cpu_devices(args.data_devices)
  shape = config_s.shape_from_args(args)
  if shape.batch % args.data_devices:
    raise SystemExit(f"--batch={shape.batch} does not split over "
                     f"--data_devices={args.data_devices}; pick a divisor.")
  threads = common.torch_threads(args.threads)
  common.note_reps(args.reps)

  peak = common.matmul_peak(args.peak_n)
  print(f"float32 matmul peak ({args.peak_n}^2 jnp.dot, median of "
        f"{common.MIN_REPS}): {peak['flop_per_s'] / 1e9:.1f} GFLOP/s; "
        f"torch threads {threads}")
  # The step's own projection shapes, each alone: what its dots could reach.
  tokens = shape.batch * (shape.inputs + shape.length)
  layer_dots = [common.dot_rate(tokens, shape.d_model, width)
                for width in (shape.num_heads * shape.d_kv, shape.d_ff)]
  print("the step's encoder projections alone: " + ", ".join(
      f"[{m}x{k}]x[{k}x{n}] {r['flop_per_s'] / 1e9:.1f} GFLOP/s"
      for r in layer_dots for m, k, n in [r["shape"]]))
  batch = config_s.make_batch(shape)
  base = config_s.build_hf_model(shape)
  rows = []
  with tempfile.TemporaryDirectory() as path:
    base.save_pretrained(path)
    for method in args.methods:
      t0 = time.perf_counter()
      rows.append(bench_method(method, shape, path, base, batch, args.reps,
                               args.warmup, peak["flop_per_s"],
                               args.data_devices))
      print(f"  {method}: done in {time.perf_counter() - t0:.0f} s",
            flush=True)

  print(f"\nconfig {'small' if args.small else 'S'}: "
        f"{dataclasses.asdict(shape)}; median of {args.reps} alternating "
        f"reps after {args.warmup} warm-up steps; ours on "
        f"{args.data_devices} CPU device(s)")
  table = common.print_table(rows, COLUMNS)
  payload = {"benchmark": "train_step", "config": "small" if args.small
             else "S", "shape": dataclasses.asdict(shape), "reps": args.reps,
             "warmup": args.warmup, "torch_threads": threads, "peak": peak,
             "data_devices": args.data_devices,
             "layer_dots": layer_dots,
             "flop_counting": "step = 2 x forward (prompt tuning: "
             "activation gradients only), forward + decoder forward (prefix "
             "on decoder self-attention), 3 x forward (model tuning); "
             "forward = 2 x matmul weights x tokens + 4 x q_len x k_len x "
             "heads*d_kv per attention layer",
             "rows": rows, "table": table}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
