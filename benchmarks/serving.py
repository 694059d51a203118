"""Mixed-task serving: one batch over many prompts vs one prompt, and PEFT.

Config "S" (issue 6): T5.1.1-style encoder-decoder, d_model 512, 8 heads x 64,
gated-GELU d_ff 1024, 6 + 6 layers, vocab 32128, untied logits, float32;
inputs 128, targets 32, P = 20; served in batches of 32 examples spread over
8 tasks (4 each, interleaved: task ids 0, 1, ..., 7, 0, 1, ...). One random
model is built with transformers and saved; ours loads that directory
(`pt.load_pretrained`), so both sides serve the same weights.

The 8 prompts are PEFT's: 8 prompt-tuning adapters ("task0".."task7",
PromptTuningConfig(20), encoder input only) are added to one PEFT model and
their random initial values copied into ours, so every contender scores with
the same prompts. Contenders, per operation, timed in one alternating run:

  ours_mixed       MultiTaskPrompt.from_files(8 prompts), a prompt bank
                   (constant, mode "task_only"): the whole batch in one call,
                   each example picking its prompt by `task_ids`
  ours_bank_task0  the same model and compiled executable, every task id 0
  ours_prompt      PromptTuning(prompt=task 0's prompt): one prompt
  peft_per_task    PEFT cannot mix adapters in a batch: for each task,
                   `set_adapter` and run its examples (groups prepared ahead)
  peft_single      PEFT, adapter "task0", the whole batch in one call

Operations (--ops, default score):
  score   per-example summed log-likelihood of the targets: ours
          `model.score_batch` under one `jax.jit` (the log-softmax tail fused
          with the forward pass), PEFT's forward (encoder input + decoder
          input ids) then log-softmax, gather and sum in torch;
  greedy  greedy decoding of `targets` tokens: ours `model.predict_batch`
          under `jax.jit`, PEFT `generate(max_new_tokens=targets,
          do_sample=False, num_beams=1)`.

Reported: seconds per batch and examples/s per contender; mixing cost =
(ours_mixed / ours_prompt - 1) x 100% (goal: under 10%), also against
ours_bank_task0; peft_per_task / peft_single; ours_mixed / peft_per_task.
Ours' compile time (lower + compile, once per model and operation; the
task-0 batch reuses the mixed executable) is reported apart. Correctness,
not timing: the largest |score difference| of each of ours against its PEFT
reference (mixed vs per-task, one-prompt vs single), and for greedy the
fraction of equal tokens. Torch runs under `inference_mode` on as many
threads as XLA uses.

  python benchmarks/serving.py                    # config S, score: ~5 min on 2 cores
  python benchmarks/serving.py --small            # a seconds-long check
  python benchmarks/serving.py --ops score,greedy --reps 9 --batch 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import config_s  # pylint: disable=g-import-not-at-top,wrong-import-position
from config_s import Shape  # pylint: disable=g-import-not-at-top,wrong-import-position

OPS = ("score", "greedy")
CONTENDERS = {
    "ours_mixed": "ours, MultiTaskPrompt bank, tasks mixed in one batch",
    "ours_bank_task0": "ours, the same bank, every example task 0",
    "ours_prompt": "ours, PromptTuning, one prompt",
    "peft_per_task": "PEFT, set_adapter + one call per task",
    "peft_single": "PEFT, one adapter, one call",
}
# Each of ours is checked against the PEFT run serving the same prompts.
REFERENCE = {"ours_mixed": "peft_per_task", "ours_bank_task0": "peft_single",
             "ours_prompt": "peft_single"}
NUM_TASKS = 8
BATCH = 32  # examples per served batch (config S); --small: SMALL_BATCH
SMALL_BATCH = 16
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "serving.json")


def serving_batch(s: Shape, num_tasks: int) -> dict[str, np.ndarray]:
  """config_s's fixed batch plus `task_ids` [batch]: 0, 1, ..., tasks-1, 0,
  ... so every task's examples are spread through the batch."""
  batch = config_s.make_batch(s)
  batch["task_ids"] = np.arange(s.batch, dtype=np.int32) % num_tasks
  return batch


def task_groups(task_ids: np.ndarray, num_tasks: int) -> list[np.ndarray]:
  """Row indices of each task's examples, task 0 first."""
  return [np.flatnonzero(task_ids == k) for k in range(num_tasks)]


# ----------------------------------------------------------------------------
# Ours.


def our_executable(model, params, op: str, batch) -> dict[str, Any]:
  """`op` of `model` compiled for `batch`'s shapes: {"fn", "trace_s",
  "compile_s"}; `fn(params, batch)` runs it."""
  import jax  # pylint: disable=g-import-not-at-top
  fn = jax.jit(model.score_batch if op == "score" else model.predict_batch)
  start = time.perf_counter()
  lowered = fn.lower(params, batch)
  traced = time.perf_counter()
  compiled = lowered.compile()
  return {"fn": compiled, "trace_s": traced - start,
          "compile_s": time.perf_counter() - traced}


def our_batch(batch, op: str, task_ids: Optional[np.ndarray]):
  """The device batch `op` reads (greedy: no decoder inputs; the target
  tokens only give the output length)."""
  import jax  # pylint: disable=g-import-not-at-top
  keys = (("encoder_input_tokens", "decoder_input_tokens",
           "decoder_target_tokens") if op == "score" else
          ("encoder_input_tokens", "decoder_target_tokens"))
  out = {k: batch[k] for k in keys}
  if task_ids is not None:
    out["task_ids"] = task_ids
  return jax.device_put(out)


def load_ours(path: str, bank: np.ndarray) -> dict[str, Any]:
  """Ours serving `bank` [tasks, P, H]: a MultiTaskPrompt bank ("mixed")
  and a PromptTuning with task 0's prompt ("one"), both constants."""
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  mixed_model, mixed = pt.load_pretrained(
      path, method=pt.MultiTaskPrompt.from_files(list(bank)))
  one_model, one = pt.load_pretrained(
      path, method=pt.PromptTuning(prompt=bank[0]))
  return {"mixed_model": mixed_model, "mixed_params": mixed["params"],
          "one_model": one_model, "one_params": one["params"]}


def build_ours(ours: dict[str, Any], op: str, batch
               ) -> dict[str, dict[str, Any]]:
  """{contender: {"run", "box", "compile_s", "trace_s"}} for ours."""
  import jax  # pylint: disable=g-import-not-at-top
  mixed_model, mixed_params = ours["mixed_model"], ours["mixed_params"]
  one_model, one_params = ours["one_model"], ours["one_params"]
  mixed_batch = our_batch(batch, op, batch["task_ids"])
  task0_batch = our_batch(batch, op, np.zeros_like(batch["task_ids"]))
  one_batch = our_batch(batch, op, None)
  mixed = our_executable(mixed_model, mixed_params, op, mixed_batch)
  one = our_executable(one_model, one_params, op, one_batch)

  def contender(executable, params, device_batch, compiled_here=True):
    box = {}

    def run():
      box["out"] = jax.block_until_ready(executable["fn"](params,
                                                          device_batch))

    return {"run": run, "box": box,
            "compile_s": executable["compile_s"] if compiled_here else None,
            "trace_s": executable["trace_s"] if compiled_here else None}

  return {"ours_mixed": contender(mixed, mixed_params, mixed_batch),
          "ours_bank_task0": contender(mixed, mixed_params, task0_batch,
                                       compiled_here=False),
          "ours_prompt": contender(one, one_params, one_batch)}


# ----------------------------------------------------------------------------
# transformers + PEFT.


def build_peft(base, s: Shape, num_tasks: int):
  """(PEFT model holding adapters task0..task{n-1}, their prompts as
  float32 [tasks, P, H]); wraps `base` itself (PEFT freezes it)."""
  import peft  # pylint: disable=g-import-not-at-top
  config = lambda: peft.PromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=s.length,
      # PEFT's seq2seq default (2) prompts the decoder too; ours and the
      # paper prompt the encoder input only.
      num_transformer_submodules=1)
  model = peft.get_peft_model(base, config(), adapter_name="task0")
  for k in range(1, num_tasks):
    model.add_adapter(f"task{k}", config())
  model.eval()
  bank = np.stack([
      model.prompt_encoder[f"task{k}"].embedding.weight.detach().numpy()
      for k in range(num_tasks)]).astype(np.float32)
  return model, bank


def torch_scores(logits, targets):
  """Summed log-likelihood of `targets` [b, L] under `logits` [b, L, V]."""
  import torch  # pylint: disable=g-import-not-at-top
  log_probs = torch.log_softmax(logits, -1)
  return log_probs.gather(-1, targets[..., None])[..., 0].sum(-1)


def peft_call(model, op: str, s: Shape, inputs):
  """One PEFT call on `inputs` (hf_inputs): scores [b] or new tokens [b, n]."""
  if op == "score":
    logits = model(input_ids=inputs["input_ids"],
                   attention_mask=inputs["attention_mask"],
                   decoder_input_ids=inputs["decoder_input_ids"]).logits
    return torch_scores(logits, inputs["labels"])
  out = model.generate(input_ids=inputs["input_ids"],
                       attention_mask=inputs["attention_mask"],
                       max_new_tokens=s.targets, do_sample=False, num_beams=1)
  return out[:, 1:]  # drop the decoder start token


def build_peft_runs(model, op: str, s: Shape, batch, num_tasks: int
                    ) -> dict[str, dict[str, Any]]:
  """{contender: {"run", "box"}} for PEFT; "box"["out"] is the batch's
  output in example order (rows of each group put back after timing)."""
  import torch  # pylint: disable=g-import-not-at-top
  inputs = config_s.hf_inputs(batch)
  groups = [(f"task{k}", rows, {name: value[torch.as_tensor(rows)]
                                for name, value in inputs.items()})
            for k, rows in enumerate(task_groups(batch["task_ids"],
                                                 num_tasks)) if rows.size]
  per_task_box, single_box = {}, {}

  def per_task():
    with torch.inference_mode():
      outs = []
      for adapter, rows, group in groups:
        model.set_adapter(adapter, inference_mode=True)
        outs.append((rows, peft_call(model, op, s, group)))
    per_task_box["parts"] = outs

  def single():
    with torch.inference_mode():
      model.set_adapter("task0", inference_mode=True)
      single_box["out"] = peft_call(model, op, s, inputs)

  return {"peft_per_task": {"run": per_task, "box": per_task_box},
          "peft_single": {"run": single, "box": single_box}}


def peft_output(box, op: str, s: Shape, batch_size: int) -> np.ndarray:
  """A PEFT contender's last output as numpy, in example order; greedy
  outputs padded with 0 to `targets` tokens (generate stops early once
  every row has ended)."""
  parts = box.get("parts") or [(np.arange(batch_size), box["out"])]
  width = () if op == "score" else (s.targets,)
  out = np.zeros((batch_size,) + width,
                 np.float32 if op == "score" else np.int32)
  for rows, value in parts:
    value = value.numpy()
    if op == "greedy":
      value = np.pad(value, ((0, 0), (0, s.targets - value.shape[1])))
    out[rows] = value
  return out


# ----------------------------------------------------------------------------


def bench_op(op: str, s: Shape, ours: dict[str, Any], peft_model, batch,
             num_tasks: int, reps: int, warmup: int, pause: float
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """One alternating run of every contender on `op`: (rows, summary)."""
  contenders = build_ours(ours, op, batch)
  contenders.update(build_peft_runs(peft_model, op, s, batch, num_tasks))
  times = common.time_alternating(
      {name: contenders[name]["run"] for name in CONTENDERS}, reps, warmup,
      pause)
  seconds = {name: common.median(times[name]) for name in CONTENDERS}
  outputs = {}
  for name, c in contenders.items():
    outputs[name] = (np.asarray(c["box"]["out"]) if name.startswith("ours")
                     else peft_output(c["box"], op, s, s.batch))
  if op == "greedy":
    outputs = {k: v.reshape(s.batch, -1) for k, v in outputs.items()}

  rows = []
  for name in CONTENDERS:
    reference = REFERENCE.get(name)
    row = {"op": op, "contender": name, "what": CONTENDERS[name],
           "s_per_batch": seconds[name],
           "examples_per_s": s.batch / seconds[name],
           "compile_s": contenders[name].get("compile_s"),
           "trace_s": contenders[name].get("trace_s"),
           "vs_ours_prompt": seconds[name] / seconds["ours_prompt"],
           "vs_peft_per_task": seconds[name] / seconds["peft_per_task"],
           "checked_against": reference,
           "max_abs_score_diff": None, "token_agreement": None,
           "times": times[name]}
    if reference is not None:
      mine, theirs = outputs[name], outputs[reference]
      if op == "score":
        row["max_abs_score_diff"] = float(np.max(np.abs(mine - theirs)))
      else:
        row["token_agreement"] = float(np.mean(mine == theirs))
    rows.append(row)

  mixed, prompt, bank0 = (seconds["ours_mixed"], seconds["ours_prompt"],
                          seconds["ours_bank_task0"])
  check = rows[0]  # ours_mixed vs peft_per_task
  summary = {
      "op": op,
      "mixed_over_prompt": mixed / prompt,
      "mixing_cost_pct": (mixed / prompt - 1) * 100,
      "mixed_over_bank_task0": mixed / bank0,
      "mixing_cost_vs_bank_task0_pct": (mixed / bank0 - 1) * 100,
      "goal_under_10pct": bool(mixed / prompt - 1 < 0.10),
      "peft_per_task_over_single": (seconds["peft_per_task"]
                                    / seconds["peft_single"]),
      "ours_mixed_over_peft_per_task": mixed / seconds["peft_per_task"],
      "max_abs_score_diff": check["max_abs_score_diff"],
      "token_agreement": check["token_agreement"],
  }
  if op == "score":
    # The mix is real: examples of other tasks score differently from task 0.
    others = batch["task_ids"] != 0
    summary["min_abs_diff_mixed_vs_task0_others"] = (
        float(np.min(np.abs(outputs["ours_mixed"]
                            - outputs["ours_bank_task0"])[others]))
        if others.any() else None)
  return rows, summary


COLUMNS = [
    ("op", "op", "s"), ("contender", "contender", "s"),
    ("s_per_batch", "s/batch", ".4f"), ("examples_per_s", "examples/s", ".1f"),
    ("vs_ours_prompt", "/ours_prompt", ".3f"),
    ("vs_peft_per_task", "/peft_per_task", ".3f"),
    ("compile_s", "compile s", ".1f"),
    ("max_abs_score_diff", "max|d score| vs PEFT", ".2e"),
    ("token_agreement", "tokens = PEFT", ".3f"),
]
SUMMARY_COLUMNS = [
    ("op", "op", "s"), ("mixing_cost_pct", "mixing cost % (vs prompt)", ".1f"),
    ("mixing_cost_vs_bank_task0_pct", "mixing cost % (vs bank task0)",
     ".1f"),
    ("peft_per_task_over_single", "PEFT per-task/single", ".2f"),
    ("ours_mixed_over_peft_per_task", "ours mixed/PEFT per-task", ".3f"),
    ("max_abs_score_diff", "max|d score| mixed vs PEFT", ".2e"),
    ("token_agreement", "tokens = PEFT", ".3f"),
]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ops", default="score",
                      help=f"comma-separated subset of {OPS} (greedy about "
                      "doubles the run)")
  parser.add_argument("--tasks", type=int, default=NUM_TASKS,
                      help="prompts mixed in one batch")
  parser.add_argument("--reps", type=int, default=7,
                      help="timed repetitions per contender (>= 5 for "
                      "reported numbers)")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed calls per contender after compilation")
  parser.add_argument("--pause", type=float, default=0.25,
                      help="idle seconds before each timed call, so the last "
                      "contender's worker threads stop spinning")
  config_s.add_shape_args(parser)
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: the cores XLA uses)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  args = parser.parse_args(argv)
  args.ops = common.choices_arg(parser, "ops", args.ops, OPS)
  common.check_reps(parser, args)
  if args.pause < 0:
    parser.error(f"--pause {args.pause} must be >= 0.")
  if args.tasks < 1:
    parser.error(f"--tasks {args.tasks} must be >= 1.")
  return args


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  shape = config_s.shape_from_args(args)
  if args.batch is None:  # config_s's batch is the training one
    shape = dataclasses.replace(shape,
                                batch=SMALL_BATCH if args.small else BATCH)
  if shape.batch < args.tasks:
    raise ValueError(f"batch {shape.batch} < {args.tasks} tasks: every task "
                     "needs an example in the batch.")
  threads = common.torch_threads(args.threads)
  common.note_reps(args.reps)
  batch = serving_batch(shape, args.tasks)
  base = config_s.build_hf_model(shape)
  rows, summary = [], []
  with tempfile.TemporaryDirectory() as path, warnings.catch_warnings():
    # PEFT's generate for prompt tuning drops position ids, and says so.
    warnings.filterwarnings("ignore", "Position ids are not supported")
    base.save_pretrained(path)
    peft_model, bank = build_peft(base, shape, args.tasks)
    ours = load_ours(path, bank)
    for op in args.ops:
      t0 = time.perf_counter()
      op_rows, op_summary = bench_op(op, shape, ours, peft_model, batch,
                                     args.tasks, args.reps, args.warmup,
                                     args.pause)
      rows += op_rows
      summary.append(op_summary)
      print(f"  {op}: done in {time.perf_counter() - t0:.0f} s; "
            f"mixing cost {op_summary['mixing_cost_pct']:.1f}%, ours mixed / "
            f"PEFT per-task {op_summary['ours_mixed_over_peft_per_task']:.3f}",
            flush=True)

  print(f"\nconfig {'small' if args.small else 'S'}: "
        f"{dataclasses.asdict(shape)}; {args.tasks} tasks, interleaved; "
        f"median of {args.reps} alternating reps after {args.warmup} warm-up "
        f"calls, {args.pause} s pauses; torch threads {threads}")
  table = common.print_table(rows, COLUMNS)
  print()
  summary_table = common.print_table(summary, SUMMARY_COLUMNS)
  payload = {"benchmark": "serving",
             "config": "small" if args.small else "S",
             "shape": dataclasses.asdict(shape), "tasks": args.tasks,
             "task_ids": batch["task_ids"].tolist(), "reps": args.reps,
             "warmup": args.warmup, "pause_s": args.pause,
             "torch_threads": threads,
             "contenders": CONTENDERS, "rows": rows, "summary": summary,
             "table": table, "summary_table": summary_table}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
