r"""Pretrains one shipped base with the ordinary `train` binary, then ships it.

  python scripts/pretrain_base.py bible_t5_small            # pretrain + ship
  python scripts/pretrain_base.py bible_t5_small --ship_only  # re-ship runs

Each base is a `models/<name>.gin` architecture and one or two recipe runs
(`recipes/pretrain_bible_t5.gin` then `..._lm_adapt.gin` for T5.1.1-shaped
bases, `recipes/pretrain_bible_gpt2.gin` for GPT-2-shaped ones), run as
subprocesses exactly as a user would run them, under `pretrain/<name>/`. A
killed run resumes where it stopped when the command is repeated.

Shipping writes `prompt_tuning/bases/<name>/`: the last checkpoint as a T5X
checkpoint (bfloat16, zstd), `base.json` and `MODEL_CARD.md` with what was
measured: steps, tokens seen, wall time, and the held-out pretraining loss
of the shipped (bfloat16) weights next to a random init of the same shape.
The folder is staged and renamed, so it is complete or absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNS = ROOT / "pretrain"
BASES = ROOT / "prompt_tuning" / "bases"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run of the train binary."""

  name: str  # Sub-folder of pretrain/<base>/.
  recipe: str
  steps: int
  objective: str
  flags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
  stages: tuple[Stage, ...]
  eval_task: str  # Held-out loss of the shipped base is measured on this.
  eval_lengths: dict[str, int]
  model: Optional[str] = None  # models/<model>.gin; the base's name if None.


def _t5(span_steps: int, lm_steps: int, batch: int) -> Plan:
  batch_flag = f"--gin.BATCH_SIZE={batch}"
  return Plan(
      stages=(
          Stage("span_corruption", "recipes/pretrain_bible_t5.gin",
                span_steps, "T5 span corruption (noise 0.15, mean span 3)",
                (batch_flag,)),
          Stage("lm_adapt", "recipes/pretrain_bible_t5_lm_adapt.gin",
                lm_steps, "prefix-LM LM adaptation",
                (batch_flag, f"--gin.rsqrt_decay.warmup_steps={span_steps}")),
      ),
      eval_task="bible_prefix_lm", eval_lengths={"inputs": 64, "targets": 64})


def _span_only(steps: int, batch: int, model: str) -> Plan:
  """Stage 1 of `_t5` alone: a span-corruption base without LM adaptation
  (Lester et al. 2021's off-the-shelf T5.1.1), held-out loss on its own
  objective."""
  return dataclasses.replace(
      _t5(steps, 0, batch), stages=_t5(steps, 0, batch).stages[:1],
      eval_task="bible_span_corruption",
      eval_lengths={"inputs": 128, "targets": 32}, model=model)


def _gpt2(steps: int, batch: int) -> Plan:
  return Plan(
      stages=(Stage("causal_lm", "recipes/pretrain_bible_gpt2.gin", steps,
                    "causal LM, packed", (f"--gin.BATCH_SIZE={batch}",)),),
      eval_task="bible_causal_lm", eval_lengths={"targets": 256})


# Steps sized so each base pretrains in at most about 30 minutes on 2 CPU
# cores (measured: bible_t5_base 1.2 s/step, bible_t5_small 0.75,
# bible_gpt2_medium 1.5). The T5s take the same steps, so they differ in
# size only, as the prompt-tuning paper's scaling curve needs.
PLANS = {
    "bible_t5_tiny": _t5(span_steps=900, lm_steps=600, batch=32),
    "bible_t5_small": _t5(span_steps=900, lm_steps=600, batch=32),
    "bible_t5_base": _t5(span_steps=900, lm_steps=600, batch=32),
    # bible_t5_small before LM adaptation: the same recipe, seed and steps
    # as its stage 1, for the prompt-tuning paper's LM-adaptation ablation.
    "bible_t5_small_span": _span_only(steps=900, batch=32,
                                      model="bible_t5_small"),
    "bible_gpt2_small": _gpt2(steps=2000, batch=16),
    "bible_gpt2_medium": _gpt2(steps=1100, batch=16),
}


def run_stage(name: str, model: str, stage: Stage,
              previous: Optional[pathlib.Path]) -> float:
  """Runs (or resumes) one stage; returns its wall seconds this time."""
  model_dir = RUNS / name / stage.name
  command = [sys.executable, "-m", "prompt_tuning.train",
             f"--gin_file=models/{model}.gin", f"--gin_file={stage.recipe}",
             f"--gin.MODEL_DIR='{model_dir}'",
             f"--gin.TRAIN_STEPS={stage.steps}", *stage.flags]
  if previous is not None:
    command.append(f"--gin.INITIAL_CHECKPOINT_PATH='{previous}'")
  print("$", " ".join(command), flush=True)
  start = time.time()
  subprocess.run(command, cwd=ROOT, check=True)
  return time.time() - start


def _timings(name: str) -> dict[str, float]:
  path = RUNS / name / "timings.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def pretrain(name: str, plan: Plan) -> None:
  timings = _timings(name)
  previous = None
  for stage in plan.stages:
    seconds = run_stage(name, plan.model or name, stage, previous)
    # A resumed stage adds to the time it already took.
    timings[stage.name] = timings.get(stage.name, 0.0) + seconds
    (RUNS / name / "timings.json").write_text(json.dumps(timings, indent=1))
    previous = RUNS / name / stage.name


def _target_tokens(model_dir: pathlib.Path, log_period: int) -> int:
  """Loss-bearing tokens seen, from the train summaries (each line's loss
  is the mean summed loss per step; loss / loss_per_token = tokens)."""
  total, last_step = 0.0, 0
  with open(model_dir / "train" / "metrics.jsonl", encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      steps = row["step"] - last_step
      last_step = row["step"]
      total += steps * row["loss"] / row["loss_per_token"]
  return int(total)


def _heldout_loss(model: Any, params: Any, plan: Plan, batches: int) -> float:
  from prompt_tuning import data, evaluation, partitioning  # pylint: disable=g-import-not-at-top
  cfg = data.DatasetConfig(
      mixture_or_task_name=plan.eval_task,
      task_feature_lengths=plan.eval_lengths, split="validation",
      batch_size=32, shuffle=False)
  mesh = partitioning.make_mesh()
  return float(evaluation.training_eval(model, params, cfg, mesh,
                                        batches)["cross_ent_loss"])


def ship(name: str, plan: Plan, eval_batches: int = 20) -> dict[str, Any]:
  """Writes prompt_tuning/bases/<name>/ from the last stage's run."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  from prompt_tuning import tasks  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_tuning.checkpoints import loader, shipped, t5x  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import configs  # pylint: disable=g-import-not-at-top

  gin_model = plan.model or name
  config = configs.from_gin(gin_model)
  last = RUNS / name / plan.stages[-1].name
  model, variables = pt.load_pretrained(str(last), config=config)
  params = jax.device_get(variables["params"])
  step = int(pathlib.Path(loader.orbax_params.find_run_checkpoint(
      str(last))).name.split("_")[1])
  # What users load: the bfloat16-rounded weights.
  rounded = jax.tree.map(
      lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32),
      params)
  heldout = _heldout_loss(model, rounded, plan, eval_batches)
  random = loader.random_params(config, seed=0)
  random_heldout = _heldout_loss(model, random, plan, eval_batches)

  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  total = sum(int(np.size(v)) for _, v in leaves)
  embedding = sum(int(np.size(v)) for k, v in leaves if any(
      getattr(p, "key", "") in ("token_embedder", "logits_dense",
                                "position_embedder") for p in k))
  timings = _timings(name)
  stages = []
  for stage in plan.stages:
    run_dir = RUNS / name / stage.name
    info = json.loads((run_dir / "model_info.json").read_text())
    stages.append({
        "run": stage.name, "recipe": stage.recipe, "objective": stage.objective,
        "steps": stage.steps, "batch": info["batch"],
        "target_tokens_seen": _target_tokens(run_dir, 100),
        "seconds": round(timings.get(stage.name, float("nan")), 1),
        "command": (f"python -m prompt_tuning.train --gin_file=models/"
                    f"{gin_model}.gin --gin_file={stage.recipe} --gin.TRAIN_STEPS="
                    f"{stage.steps} " + " ".join(stage.flags)),
    })
  info = {
      "name": name, "checkpoint": f"checkpoint_{step}",
      "config": shipped.config_to_json(config), "gin_model": gin_model,
      "vocabulary": "bible", "parameters": total,
      "non_embedding_parameters": total - embedding,
      "stages": stages,
      "heldout_task": plan.eval_task, "heldout_lengths": plan.eval_lengths,
      "heldout_loss": round(heldout, 4),
      "random_init_heldout_loss": round(random_heldout, 4),
      "date": datetime.date.today().isoformat(),
      "license": "Apache-2.0 (weights); corpus public domain",
  }
  BASES.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=BASES))
  t5x.write_t5x_checkpoint(params, str(staging / info["checkpoint"]),
                           compression="zstd", dtype="bfloat16")
  (staging / shipped.INFO_FILE).write_text(
      json.dumps(info, indent=1, sort_keys=True) + "\n")
  (staging / shipped.CARD_FILE).write_text(model_card(info))
  final = BASES / name
  if final.exists():
    shutil.rmtree(final)
  os.rename(staging, final)
  return info


def model_card(info: dict[str, Any]) -> str:
  c = info["config"]
  shape = (f"{c['num_encoder_layers']}+{c['num_decoder_layers']} layers"
           if c["architecture"] == "encoder_decoder"
           else f"{c['num_decoder_layers']} layers")
  rows = "\n".join(
      f"| {s['run']} | {s['objective']} | {s['steps']:,} | "
      f"{s['batch'].split()[0]} | {s['target_tokens_seen']:,} | "
      f"{s['seconds'] / 60:.1f} |" for s in info["stages"])
  commands = "\n".join(s["command"] for s in info["stages"])
  return f"""# {info['name']}

A {c['architecture'].replace('_', '-')} base pretrained by this project on
2 CPU cores, shipped so that prompt tuning, prefix tuning and MSP can be seen
working offline. It is small: a demonstration base, not a general model.

* **Shape:** width {c['emb_dim']}, {c['num_heads']} heads x {c['head_dim']},
  MLP {c['mlp_dim']} ({', '.join(c['mlp_activations'])}), {shape},
  vocabulary {c['vocab_size']} rows (`models/{info['gin_model']}.gin`).
* **Parameters:** {info['parameters']:,} ({info['non_embedding_parameters']:,}
  outside the embedding and logits tables).
* **Data:** the shipped Bible corpus (WEB, KJV, Reina-Valera 1909; public
  domain), `tasks/data/pretrain_bible.jsonl.gz`; 27% of its documents are
  short bilingual passages (English then Spanish or the reverse, with no
  instruction words) and 18% parallel English ones (a WEB passage beside
  the KJV's); 55% of its words are monolingual. Verses held out for
  downstream tasks never appear in it (`tasks/data/README.md`).
* **Vocabulary:** `bible` (SentencePiece, 8,000 pieces + 100 sentinels).
* **Held-out loss** (`{info['heldout_task']}`, validation chapters,
  cross-entropy per target token, bfloat16 weights): **{info['heldout_loss']}**;
  a random init of the same shape: {info['random_init_heldout_loss']}.
* **Format:** T5X checkpoint, bfloat16, zstd (`{info['checkpoint']}`).
* **License:** {info['license']}.
{('* **Note:** ' + info['note']) if info.get('note') else ''}

| run | objective | steps | batch | target tokens seen | minutes |
|---|---|---|---|---|---|
{rows}

Reproduce (`python scripts/pretrain_base.py {info['name']}` runs these):

```
{commands}
```
"""


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", choices=sorted(PLANS))
  parser.add_argument("--ship_only", action="store_true",
                      help="skip pretraining; ship the existing runs")
  parser.add_argument("--max_steps", type=int, default=None,
                      help="cap every stage's steps (a quick trial run)")
  args = parser.parse_args(argv)
  plan = PLANS[args.name]
  if args.max_steps:
    plan = dataclasses.replace(plan, stages=tuple(
        dataclasses.replace(s, steps=min(s.steps, args.max_steps))
        for s in plan.stages))
  if not args.ship_only:
    pretrain(args.name, plan)
  info = ship(args.name, plan)
  print(json.dumps({k: info[k] for k in (
      "name", "parameters", "non_embedding_parameters", "heldout_loss",
      "random_init_heldout_loss")}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
