"""Where our compiled training step spends its time, op by op (jax.profiler).

Builds train_step.py's step for config S (or `--small`), runs it under
`jax.profiler.trace`, and reads the trace's XSpace: every XLA:CPU thunk is an
event named after its HLO instruction, which the compiled HLO text maps to an
op kind and, for dots, to FLOPs. Per step it reports

  * wall seconds, and busy thread-milliseconds by kind:
      library dot  dots XLA hands to YNNPACK/XNNPACK/oneDNN (the projections)
      XLA dot      dots XLA emits itself (batched attention dots)
      transpose    layout copies (transpose/copy fusions)
      other        element-wise ops, reductions, gathers, scatters
  * each dot's FLOP rate, summed into rate bands: how much of the dots' time
    runs near the matmul peak and how much well below it;
  * the slowest ops.

Thread-milliseconds count the thread that ran each thunk; a library dot
that splits across the pool's threads shows on one of them. So the totals
read as "time some thread spent in this op", not as wall time.

  python benchmarks/profile_step.py                  # prompt tuning, config S
  python benchmarks/profile_step.py --method model
  python benchmarks/profile_step.py --small --steps 1
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import math
import os
import re
import sys
import tempfile
from typing import Any, Mapping

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import config_s  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "profile_step.json")
KINDS = ("library dot", "XLA dot", "transpose", "other")
# Runtime bookkeeping events, not ops.
_NOT_OPS = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end:")
_LIBRARY_FUSIONS = ("ynn_fusion", "xnn_fusion", "onednn")
_BANDS = (0, 50, 100, 150, 200, 250)  # GFLOP/s band lower edges


# ----------------------------------------------------------------------------
# The compiled HLO: op name -> kind and dot FLOPs.


@dataclasses.dataclass
class HloOp:
  kind: str
  shape: str
  flops: float  # dots only; 0 otherwise


_INSTRUCTION = re.compile(
    r"^(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* (\w+)\((.*)$")


def _computations(hlo: str) -> dict[str, list[re.Match]]:
  """Computation name -> its parsed instructions (name, dtype, dims, opcode,
  the rest of the line)."""
  comps, current = {}, None
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      words = line.split()
      current = (words[1] if words[0] == "ENTRY" else words[0]).lstrip("%")
      comps[current] = []
    elif current is not None:
      match = _INSTRUCTION.match(line.strip())
      if match:
        comps[current].append(match)
  return comps


def _dims(text: str) -> list[int]:
  return [int(d) for d in text.split(",") if d]


def _dot_flops(dot: re.Match, shapes: Mapping[str, list[int]]) -> float:
  """2 x output elements x contracted size of one dot instruction."""
  lhs = shapes.get(re.match(r"%?([\w.\-]+)", dot.group(5)).group(1), [])
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", dot.group(5))
  size = 1
  for d in _dims(contracting.group(1) if contracting else ""):
    size *= lhs[d] if d < len(lhs) else 1
  return 2.0 * math.prod(_dims(dot.group(3))) * size


def hlo_ops(hlo: str) -> dict[str, HloOp]:
  """Every named instruction of the compiled module, classified; a fusion's
  FLOPs are those of the dots in the computation it calls."""
  comps = _computations(hlo)
  shapes = {name: {m.group(1): _dims(m.group(3)) for m in insts}
            for name, insts in comps.items()}
  flops = {name: {m.group(1): _dot_flops(m, shapes[name])
                  for m in insts if m.group(4) == "dot"}
           for name, insts in comps.items()}
  ops = {}
  for comp, insts in comps.items():
    for m in insts:
      name, dtype, dims, opcode, rest = m.groups()
      called = re.search(r"calls=%?([\w.\-]+)", rest)
      op_flops = (sum(flops.get(called.group(1), {}).values()) if called
                  else flops[comp].get(name, 0.0))
      if op_flops and name.startswith(_LIBRARY_FUSIONS):
        kind = "library dot"
      elif op_flops:
        kind = "XLA dot"
      elif "transpose" in name or opcode in ("copy", "transpose"):
        kind = "transpose"
      else:
        kind = "other"
      ops[name] = HloOp(kind, f"{dtype}[{dims}]", op_flops)
  return ops


# ----------------------------------------------------------------------------
# The trace.


def op_events(logdir: str) -> tuple[list[tuple[int, int]], list[tuple[str, int]]]:
  """(python `run` call windows, (op name, duration ps) per XLA thunk)."""
  # TensorFlow (a seqio dependency) ships the XSpace protobuf.
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
  if not path:
    raise FileNotFoundError(f"no .xplane.pb under {logdir}")
  space = xplane_pb2.XSpace()
  with open(path[0], "rb") as f:
    space.ParseFromString(f.read())
  windows, events = [], []
  for plane in space.planes:
    for line in plane.lines:
      xla_thread = "XLA" in line.name  # XLA's worker pool and client threads
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if name.startswith("$") and name.endswith(" run"):  # Python tracer
          start = line.timestamp_ns * 1000 + event.offset_ps
          windows.append((start, start + event.duration_ps))
        elif xla_thread and not name.startswith(_NOT_OPS):
          events.append((name, event.duration_ps))
  return windows, events


def summarize(ops: Mapping[str, HloOp], events, steps: int
              ) -> dict[str, Any]:
  """Per-step thread-ms by kind, dot time by FLOP-rate band, top ops."""
  per_op = collections.Counter()
  calls = collections.Counter()
  for name, ps in events:
    per_op[name] += ps
    calls[name] += 1
  ms = lambda ps: ps / 1e9 / steps
  by_kind = collections.Counter()
  bands = collections.Counter()
  dot_flops, dot_ps = 0.0, 0
  for name, ps in per_op.items():
    op = ops.get(name, HloOp("other", "?", 0.0))
    by_kind[op.kind] += ps
    if op.flops:
      rate = op.flops * calls[name] / (ps * 1e-12) / 1e9
      bands[max(b for b in _BANDS if rate >= b)] += ps
      dot_flops += op.flops * calls[name]
      dot_ps += ps
  top = []
  for name, ps in per_op.most_common(12):
    op = ops.get(name, HloOp("other", "?", 0.0))
    rate = (op.flops * calls[name] / (ps * 1e-12) / 1e9) if op.flops else None
    top.append({"op": name, "kind": op.kind, "shape": op.shape,
                "ms": ms(ps), "calls": calls[name] / steps,
                "gflops": rate})
  return {
      "thread_ms": {k: ms(by_kind[k]) for k in KINDS},
      "dot_gflop": dot_flops / 1e9 / steps,
      "dot_gflops_per_thread_s": (dot_flops / (dot_ps * 1e-12) / 1e9
                                  if dot_ps else None),
      "dot_ms_by_band": [
          {"band": f"{b}-{b + 50}" if b < _BANDS[-1] else f">={b}",
           "ms": ms(bands[b])} for b in _BANDS],
      "top": top,
  }


# ----------------------------------------------------------------------------


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", default="prompt",
                      choices=config_s.METHODS)
  parser.add_argument("--steps", type=int, default=3,
                      help="profiled steps (after --warmup untimed ones)")
  parser.add_argument("--warmup", type=int, default=4)
  config_s.add_shape_args(parser)
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  shape = config_s.shape_from_args(args)
  batch = config_s.make_batch(shape)
  base = config_s.build_hf_model(shape)
  with tempfile.TemporaryDirectory() as path:
    base.save_pretrained(path)
    ours = train_step.build_ours(path, args.method, shape, batch)
  for _ in range(args.warmup):
    ours["run"]()
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      for _ in range(args.steps):
        ours["run"]()
    windows, events = op_events(logdir)
  wall = sorted(end - start for start, end in windows)
  summary = summarize(hlo_ops(ours["compiled"].as_text()), events, args.steps)
  step_s = wall[len(wall) // 2] / 1e12 if wall else None
  model_gflop = train_step.step_flops(shape, args.method) / 1e9

  print(f"config {'small' if args.small else 'S'}, {args.method} tuning: "
        f"{step_s:.3f} s/step (median of {args.steps} profiled); model "
        f"{model_gflop:.1f} GFLOP/step, the trace's dots "
        f"{summary['dot_gflop']:.1f}")
  common.print_table(
      [{"kind": k, "ms": v} for k, v in summary["thread_ms"].items()],
      [("kind", "op kind", "s"), ("ms", "thread-ms/step", ".1f")])
  print(f"\ndots: {summary['dot_gflops_per_thread_s'] or 0:.0f} GFLOP/s per "
        "busy thread-second; their thread-ms by achieved rate:")
  common.print_table(summary["dot_ms_by_band"],
                     [("band", "GFLOP/s", "s"), ("ms", "thread-ms/step", ".1f")])
  print("\nslowest ops:")
  common.print_table(summary["top"], [
      ("op", "op", "s"), ("kind", "kind", "s"), ("shape", "output", "s"),
      ("calls", "calls/step", ".0f"), ("ms", "thread-ms/step", ".2f"),
      ("gflops", "GFLOP/s", ".0f")])
  payload = {"benchmark": "profile_step", "method": args.method,
             "config": "small" if args.small else "S",
             "shape": dataclasses.asdict(shape), "steps": args.steps,
             "step_s": step_s, "model_gflop": model_gflop,
             "rows": summary["top"], **summary}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
