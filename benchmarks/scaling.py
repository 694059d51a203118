"""Scaling: step time and per-device memory on 1, 2, 4, 8 simulated devices.

Config "S" (issue 6) prompt tuning by default: T5.1.1-style encoder-decoder,
d_model 512, 8 heads, d_ff 1024, 6 + 6 layers, vocab 32128, float32; batch 8,
inputs 128, targets 32; P = 20. One random model is built with transformers
and saved; each mesh loads it straight into its shardings
(`pt.load_pretrained(path, method=..., mesh=mesh)`, the rules of
`partitioning.LOGICAL_AXIS_RULES`), the batch is placed over 'data' with
`data.to_global`, and the step is `train_step.make_train_step` (Adafactor), as
the `train` binary runs it.

Each device count runs in its own subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N; inside it, every mesh of
N devices is built and compiled, then the meshes' steps are timed in turn
(A B A B ...). Meshes ('data' x 'model'): data parallel N x 1, model
parallel 1 x N and, from 4 devices, mixed 2 x N/2. A mesh whose 'data' size
does not divide the batch is skipped; a dimension that the 'model' size does
not divide is replicated (`partitioning.logical_to_sharding`).

Simulated CPU devices share this machine's cores (2 here): step time measures
the cost of partitioning (collectives, smaller and more numerous matmuls,
per-device dispatch), not a speedup. Per device (device 0):
  param MiB     bytes of the param shards (frozen + trainable) on device 0;
  XLA MiB       `compiled.memory_analysis()` of the step: argument (params,
                state, batch shards), output and temp bytes, per device.
Correctness (the runtime's tests own it; here it shows every mesh computes the
same thing): the first step's loss on every mesh, and its relative deviation
from the single-device loss (the first mesh run when 1 is not among
--devices), also after all warm-up and timed steps.

The step is built as the `train` binary builds it:
`make_train_step(..., mesh=mesh)` traces it on the mesh under the logical
axis rules, so the models' activation sharding constraints take effect.

  python benchmarks/scaling.py               # config S, ~5 minutes on 2 cores
  python benchmarks/scaling.py --small       # SMALL, batch 8; about a minute
  python benchmarks/scaling.py --devices 1,2 --meshes 1x1,2x1,1x2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import config_s  # pylint: disable=g-import-not-at-top,wrong-import-position
from config_s import Shape  # pylint: disable=g-import-not-at-top,wrong-import-position

DEVICES = (1, 2, 4, 8)
METHODS = config_s.METHODS
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "scaling.json")
RESULT_MARKER = "SCALING_RESULT "  # prefixes the child's one JSON line
MiB = common.MiB


def default_meshes(n: int) -> list[tuple[int, int]]:
  """(data, model) meshes of n devices: n x 1, 1 x n, and 2 x n/2 from 4."""
  meshes = [(n, 1)]
  if n > 1:
    meshes.append((1, n))
  if n >= 4 and n % 2 == 0:
    meshes.append((2, n // 2))
  return meshes


def parse_mesh(text: str) -> tuple[int, int]:
  data, model = (int(x) for x in text.lower().split("x"))
  if data < 1 or model < 1:
    raise ValueError(text)
  return data, model


def mesh_name(mesh: tuple[int, int]) -> str:
  return f"{mesh[0]}x{mesh[1]}"


def shard_bytes(tree, device) -> int:
  """Bytes of the shards of every array in `tree` that live on `device`."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(shard.data.nbytes for x in jax.tree.leaves(tree)
             for shard in x.addressable_shards if shard.device == device)


# ----------------------------------------------------------------------------
# Child: one device count, every mesh of it.


def build_mesh_step(mesh_shape: tuple[int, int], args, s: Shape
                    ) -> dict[str, Any]:
  """Loads the model onto the mesh, compiles the step; returns its pieces."""
  import jax  # pylint: disable=g-import-not-at-top
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  from prompt_tuning import optimizers  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train_step  # pylint: disable=g-import-not-at-top
  mesh = partitioning.make_mesh(data=mesh_shape[0], model=mesh_shape[1],
                                num_devices=mesh_shape[0] * mesh_shape[1])
  model, variables = pt.load_pretrained(
      args.model_dir, method=config_s.our_method(args.method, s), mesh=mesh)
  optimizer = optimizers.adafactor()
  state, frozen = train_step.init_state(model, variables["params"], optimizer)
  del variables
  batch = data.to_global(config_s.make_batch(s), mesh)
  step = train_step.make_train_step(model, optimizer, 1, mesh=mesh)
  device = mesh.devices.flat[0]
  memory = {
      "param_mib": (shard_bytes(frozen, device)
                    + shard_bytes(state.params, device)) / MiB,
      "param_total_mib": (sum(x.nbytes for x in jax.tree.leaves(frozen))
                          + sum(x.nbytes for x in
                                jax.tree.leaves(state.params))) / MiB,
      "opt_state_mib": shard_bytes(state.opt_state, device) / MiB,
      "batch_mib": shard_bytes(batch, device) / MiB,
  }
  start = time.perf_counter()
  lowered = step.lower(state, frozen, batch, None)
  traced = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  box = {"state": state, "first": None}
  del state

  def run():
    box["state"], metrics = compiled(box["state"], frozen, batch, None)
    jax.block_until_ready((box["state"], metrics))
    box["last"] = (float(metrics["loss"]), float(metrics["grad_norm"]))
    if box["first"] is None:
      box["first"] = box["last"]

  return {"run": run, "box": box, "row": {
      "mesh": mesh_name(mesh_shape), "data": mesh_shape[0],
      "model": mesh_shape[1], "devices": mesh_shape[0] * mesh_shape[1],
      "trace_s": traced - start, "compile_s": compiled_at - traced,
      **memory, **common.xla_memory(compiled)}}


def child(args, s: Shape) -> list[dict[str, Any]]:
  """Builds every requested mesh of this process's devices, then times them
  in turn."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() != args.child:
    raise RuntimeError(
        f"expected {args.child} devices, jax has {jax.device_count()} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
  built = {}
  for mesh_shape in args.child_meshes:
    built[mesh_name(mesh_shape)] = build_mesh_step(mesh_shape, args, s)
  times = common.time_alternating(
      {name: b["run"] for name, b in built.items()}, args.reps, args.warmup)
  rows = []
  for name, b in built.items():
    first, last = b["box"]["first"], b["box"]["last"]
    rows.append(dict(b["row"], step_s=common.median(times[name]),
                     times=times[name], loss=first[0], grad_norm=first[1],
                     last_loss=last[0], steps=args.warmup + args.reps))
  return rows


# ----------------------------------------------------------------------------
# Parent.


def run_child(n: int, meshes: list[tuple[int, int]], args, s: Shape,
              model_dir: str) -> list[dict[str, Any]]:
  """Runs the meshes of n devices in a fresh interpreter with n devices."""
  cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n),
         "--child_meshes", ",".join(mesh_name(m) for m in meshes),
         "--model_dir", model_dir, "--method", args.method,
         "--reps", str(args.reps), "--warmup", str(args.warmup)]
  for field in dataclasses.fields(Shape):
    cmd += [f"--{field.name}", str(getattr(s, field.name))]
  env = dict(os.environ)
  env["XLA_FLAGS"] = common.with_device_count(env.get("XLA_FLAGS", ""), n)
  done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        timeout=args.child_timeout, check=False)
  for line in done.stdout.splitlines():
    if line.startswith(RESULT_MARKER):
      return json.loads(line[len(RESULT_MARKER):])
  raise RuntimeError(f"scaling child for {n} devices failed (exit "
                     f"{done.returncode}):\n{done.stderr[-4000:]}")


def add_correctness(rows: list[dict[str, Any]]) -> float:
  """Adds each row's relative loss deviation from the reference (the 1x1
  mesh, else the first row); returns the largest."""
  if not rows:
    return 0.0
  ref = next((r for r in rows if r["devices"] == 1), rows[0])
  worst = 0.0
  for r in rows:
    r["reference_mesh"] = ref["mesh"]
    r["loss_rel_dev"] = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
    r["grad_norm_rel_dev"] = (abs(r["grad_norm"] - ref["grad_norm"])
                              / max(abs(ref["grad_norm"]), 1e-30))
    # Only comparable when both ran the same number of steps.
    r["last_loss_rel_dev"] = (abs(r["last_loss"] - ref["last_loss"])
                              / abs(ref["last_loss"])
                              if r["steps"] == ref["steps"] else None)
    worst = max([worst, r["loss_rel_dev"], r["grad_norm_rel_dev"],
                 r["last_loss_rel_dev"] or 0.0])
  return worst


COLUMNS = [
    ("mesh", "mesh dxm", "s"), ("devices", "devices", "d"),
    ("step_s", "s/step", ".3f"), ("compile_s", "compile s", ".1f"),
    ("param_mib", "param MiB/dev", ".1f"),
    ("xla_argument_mib", "XLA arg MiB", ".1f"),
    ("xla_output_mib", "XLA out MiB", ".2f"),
    ("xla_temp_mib", "XLA temp MiB", ".1f"),
    ("loss", "first loss", ".4f"), ("loss_rel_dev", "loss rel dev", ".1e"),
    ("grad_norm_rel_dev", "gnorm rel dev", ".1e"),
    ("last_loss_rel_dev", "last-loss rel dev", ".1e"),
]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default=",".join(map(str, DEVICES)),
                      help="comma-separated simulated device counts")
  parser.add_argument("--meshes", default=None,
                      help="comma-separated DATAxMODEL meshes, e.g. 2x1,1x2 "
                      "(default: N x 1, 1 x N and 2 x N/2 per count)")
  parser.add_argument("--method", default="prompt", choices=METHODS)
  parser.add_argument("--reps", type=int, default=common.MIN_REPS,
                      help="timed steps per mesh (>= 5 for reported medians)")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps per mesh after compilation")
  config_s.add_shape_args(parser)
  parser.add_argument("--child_timeout", type=float, default=1200.0,
                      help="seconds one device count may take")
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  # Internal: run the meshes of this many devices and print their rows.
  parser.add_argument("--child", type=int, default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument("--child_meshes", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  try:
    args.devices = sorted({int(d) for d in args.devices.split(",")
                           if d.strip()})
    meshes = (None if args.meshes is None else
              [parse_mesh(m) for m in args.meshes.split(",") if m.strip()])
    args.child_meshes = (None if args.child_meshes is None else
                         [parse_mesh(m) for m in args.child_meshes.split(",")])
  except ValueError:
    parser.error("--devices takes counts like 1,2,4,8 and --meshes "
                 "DATAxMODEL like 2x4.")
  if not args.devices or min(args.devices) < 1:
    parser.error("--devices must list counts >= 1.")
  args.meshes = meshes
  common.check_reps(parser, args)
  if args.child and not (args.model_dir and args.child_meshes):
    parser.error("--child needs --model_dir and --child_meshes.")
  return args


def plan(args, s: Shape) -> tuple[dict[int, list[tuple[int, int]]],
                                  list[str]]:
  """{device count: meshes} to run, and notes on the meshes skipped."""
  todo, notes = {}, []
  for n in args.devices:
    meshes = (default_meshes(n) if args.meshes is None else
              [m for m in args.meshes if m[0] * m[1] == n])
    for m in meshes:
      if s.batch % m[0]:
        notes.append(f"skipped {mesh_name(m)}: batch {s.batch} does not "
                     f"split over data={m[0]}")
      else:
        todo.setdefault(n, []).append(m)
  if args.meshes is not None:
    for m in args.meshes:
      if m[0] * m[1] not in args.devices:
        notes.append(f"skipped {mesh_name(m)}: {m[0] * m[1]} devices is not "
                     f"in --devices {args.devices}")
  return todo, notes


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.small and args.batch is None:
    args.batch = 8  # SMALL's batch of 2 would not split over 4 or 8
  shape = config_s.shape_from_args(args)
  if args.child:
    rows = child(args, shape)
    print(RESULT_MARKER + json.dumps(rows), flush=True)
    return {"rows": rows}

  common.note_reps(args.reps)
  todo, notes = plan(args, shape)
  for note in notes:
    print(f"note: {note}")
  rows = []
  with tempfile.TemporaryDirectory() as path:
    base = config_s.build_hf_model(shape)
    base.save_pretrained(path)
    del base
    for n, meshes in todo.items():
      t0 = time.perf_counter()
      rows.extend(run_child(n, meshes, args, shape, path))
      print(f"  {n} device(s), meshes {[mesh_name(m) for m in meshes]}: "
            f"done in {time.perf_counter() - t0:.0f} s", flush=True)
  worst = add_correctness(rows)

  print(f"\nconfig {'small' if args.small else 'S'}: "
        f"{dataclasses.asdict(shape)}; method {args.method}; "
        f"median of {args.reps} alternating steps per mesh after "
        f"{args.warmup} warm-up steps; simulated devices share "
        f"{common.cpu_threads()} cores")
  table = common.print_table(rows, COLUMNS)
  reference = rows[0]["reference_mesh"] if rows else "-"
  print(f"largest relative deviation from the {reference} mesh (loss, grad "
        f"norm, last loss): {worst:.1e}")
  payload = {"benchmark": "scaling", "config": "small" if args.small
             else "S", "shape": dataclasses.asdict(shape),
             "method": args.method,
             "reps": args.reps, "warmup": args.warmup,
             "simulated_devices_share_cores": common.cpu_threads(),
             "notes": notes, "rows": rows, "max_rel_deviation": worst,
             "table": table}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
