"""The studies `run.py` runs: each a grid of arms (gin files + bindings),
the metrics it reports and the figure it draws, shaped like the paper's.

Arms are ordinary `train` runs: their gin files include the shipped run
files (`experiments/<study>/*.gin`), and the bindings pick the base, the
task and the rest of the grid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  task: str  # whose inference_eval metrics are the result
  labels: dict[str, Any]  # the table's columns for this arm
  # False: nothing trains (prompt design); the eval binary scores the base
  # itself, with runs/prompt_eval.gin before the arm's gin files.
  trained: bool = True
  # (label, task): after training, the eval binary scores the run on each
  # task too; its metrics are recorded as "<label>_<metric>".
  evals: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Study:
  title: str
  arms: Callable[[bool], list[Arm]]  # quick -> the grid
  columns: tuple[str, ...]
  metrics: tuple[str, ...]
  figure: Callable[[list[dict[str, Any]], str], None]


# ----------------------------------------------------------------------------
# A. MSP Table 1: prompt tuning vs prefix tuning vs MSP, decoder-only bases.

_MSP_METHODS = {
    # method: (gin file, task format suffix)
    "prompt tuning": ("experiments/msp_table1/prompt_tuning.gin", "_lm"),
    "prefix tuning": ("experiments/msp_table1/prefix_tuning.gin", "_lm"),
    "MSP": ("experiments/msp_table1/msp.gin", "_msp"),
    # The paper's ablations, on the smaller base.
    "MSP w/o re-encoding": ("experiments/msp_table1/msp_no_reencoding.gin",
                            "_msp"),
    "MSP w/o reparameterization": (
        "experiments/msp_table1/msp_no_reparameterization.gin", "_msp"),
}
_ABLATION_BASE = "bible_gpt2_small"
_DIRECTIONS = {"En->Es": "bible_en_es", "Es->En": "bible_es_en"}
_DECODER_ONLY_BASES = ("bible_gpt2_small", "bible_gpt2_medium")
# Steps per base; the rest is common.gin's 400. Each medium run trains at
# about 23 examples/s on 2 cores: 400 steps put the study at 2.5 hours,
# half keeps it near the two the issue allows.
_MSP_STEPS = {"bible_gpt2_medium": 200}


def _msp_arms(quick: bool) -> list[Arm]:
  arms = []
  directions = list(_DIRECTIONS.items())
  for base in _DECODER_ONLY_BASES[:1] if quick else _DECODER_ONLY_BASES:
    for direction, task_prefix in directions[:1] if quick else directions:
      for method, (gin_file, suffix) in _MSP_METHODS.items():
        if "w/o" in method and base != _ABLATION_BASE:
          continue
        task = task_prefix + suffix
        name = (f"{base}-{task_prefix[6:]}-"
                f"{method.replace(' ', '_').replace('/', '')}")
        arms.append(Arm(
            name=name, gin_files=(gin_file,),
            bindings=(f"INITIAL_CHECKPOINT_PATH = '{base}'",
                      f"MIXTURE_OR_TASK_NAME = '{task}'",
                      *((f"TRAIN_STEPS = {_MSP_STEPS[base]}",)
                        if base in _MSP_STEPS else ())),
            task=task,
            labels={"base": base, "direction": direction,
                    "method": method}))
  return arms


def _bars(rows: list[dict[str, Any]], path: str, metric: str,
          group: str, series: str, title: str) -> None:
  """Grouped bars with std error bars: one group per `group` value."""
  # Imported here: only drawing needs matplotlib.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  groups = list(dict.fromkeys(r[group] for r in rows))
  names = list(dict.fromkeys(r[series] for r in rows))
  width = 0.8 / len(names)
  # The legend sits right of the axes, clear of the bars.
  fig, ax = plt.subplots(figsize=(3.6 + 1.6 * len(groups), 3.2))
  for i, name in enumerate(names):
    # Only the groups that ran this series: a missing arm is a gap, not a
    # zero bar.
    found = [(j, r) for j, g in enumerate(groups) for r in rows
             if r[group] == g and r[series] == name]
    ax.bar([j + i * width for j, _ in found], [r[metric] for _, r in found],
           width, yerr=[r[f"{metric}_std"] for _, r in found], capsize=3,
           label=name)
  ax.set_xticks(np.arange(len(groups)) + width * (len(names) - 1) / 2)
  ax.set_xticklabels(groups, fontsize=8)
  ax.set_ylabel(metric)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _msp_figure(rows, path):
  rows = [{**row, "base / direction": f"{row['base']}\n{row['direction']}"}
          for row in rows]
  _bars(rows, path, "bleu", "base / direction", "method",
        "MSP Table 1 at small scale: BLEU on held-out verses")


# ----------------------------------------------------------------------------
# B. Lester Figure 1: prompt tuning vs model tuning vs prompt design over the
# three encoder-decoder sizes.

_T5_BASES = ("bible_t5_tiny", "bible_t5_small", "bible_t5_base")
_FIG1 = "experiments/lester_fig1"


@dataclasses.dataclass(frozen=True)
class _Task:
  label: str
  train: str  # trained on
  score: str  # scored on (a classification task's rank variant)
  design: str  # prompt design's variant, with the hand-written prompt
  lengths: str
  design_lengths: str


_TRANSLATION = _Task("En->Es translation", "bible_en_es", "bible_en_es",
                     "bible_en_es_design", "{'inputs': 64, 'targets': 64}",
                     "{'inputs': 64, 'targets': 64}")
_CANON = _Task("canon classification", "bible_canon", "bible_canon_rank",
               "bible_canon_design_rank", "{'inputs': 80, 'targets': 8}",
               "{'inputs': 112, 'targets': 8}")


def _task_bindings(task: _Task, base: str) -> tuple[str, ...]:
  return (f"INITIAL_CHECKPOINT_PATH = '{base}'",
          f"MIXTURE_OR_TASK_NAME = '{task.train}'",
          f"TASK_FEATURE_LENGTHS = {task.lengths}",
          f"infer_eval/DatasetConfig.mixture_or_task_name = '{task.score}'",
          # Translation scores 100 held-out verses; classification all.
          "train.infer_eval_examples = "
          f"{100 if task.score == task.train else None}")


def _fig1_arms(quick: bool) -> list[Arm]:
  arms = []
  for base in _T5_BASES[:1] if quick else _T5_BASES:
    for task in (_TRANSLATION, _CANON):
      short = task.train[len("bible_"):]
      labels = {"base": base, "task": task.label}
      for method in ("prompt tuning", "model tuning"):
        arms.append(Arm(
            name=f"{base}-{short}-{method.replace(' ', '_')}",
            gin_files=(f"{_FIG1}/{method.replace(' ', '_')}.gin",),
            bindings=_task_bindings(task, base), task=task.score,
            labels={**labels, "method": method}))
      arms.append(Arm(
          name=f"{base}-{short}-prompt_design",
          gin_files=(f"{_FIG1}/prompt_design.gin",),
          bindings=(f"INITIAL_CHECKPOINT_PATH = '{base}'",
                    f"MIXTURE_OR_TASK_NAME = '{task.design}'",
                    f"TASK_FEATURE_LENGTHS = {task.design_lengths}",
                    *(("evaluate.num_examples = 100",)
                      if task.score == task.train else ())),
          task=task.design, labels={**labels, "method": "prompt design"},
          trained=False))
  return arms


def _scaling_figure(rows, path):
  """Lester Figure 1's shape: score against base size (log scale), one line
  per method, one panel per task."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from prompt_tuning.checkpoints import shipped  # pylint: disable=g-import-not-at-top
  panels = (("En->Es translation", "bleu"), ("canon classification",
                                             "accuracy"))
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  for ax, (task, metric) in zip(axes, panels):
    for method in dict.fromkeys(r["method"] for r in rows):
      points = sorted(
          (shipped.find(r["base"]).info["parameters"], r[metric],
           r[f"{metric}_std"]) for r in rows
          if r["task"] == task and r["method"] == method and metric in r)
      if points:
        x, y, e = zip(*points)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("base parameters")
    ax.set_ylabel(metric)
    ax.set_title(task, fontsize=9)
    ax.legend(fontsize=7)
  fig.suptitle("Lester et al. Figure 1 at small scale (held-out verses)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------
# C. Lester Figure 3: prompt length, initialisation and LM adaptation, on the
# middle base and the canon task, one factor at a time.

_FIG3 = "experiments/lester_fig3"
_MIDDLE = "bible_t5_small"
_FIG3_DEFAULT = {"length": 20, "init": "class labels", "base": "LM-adapted"}
_FIG3_GRID = (
    *(("length", n) for n in (1, 5, 20, 100)),
    ("init", "uniform"), ("init", "sampled vocab"),
    ("base", "span corruption only"))
_CANON_CLASSES = 7
_FIG3_INIT_FILES = {"class labels": "class_labels", "uniform": "uniform",
                    "sampled vocab": "sampled_vocab"}


def _fig3_arms(quick: bool) -> list[Arm]:
  arms = []
  for factor, value in (_FIG3_GRID[3:] if quick else _FIG3_GRID):
    settings = {**_FIG3_DEFAULT, factor: value}
    if settings["length"] < _CANON_CLASSES:
      # The 7 label words do not fit a 1- or 5-row prompt; those rows come
      # from the vocabulary, the paper's fill for rows the labels leave.
      settings["init"] = "sampled vocab"
    base = ("bible_t5_small_span" if settings["base"] != "LM-adapted"
            else _MIDDLE)
    arms.append(Arm(
        name=f"{factor}-{str(value).replace(' ', '_')}",
        gin_files=(f"{_FIG3}/{_FIG3_INIT_FILES[settings['init']]}.gin",),
        bindings=(*_task_bindings(_CANON, base),
                  f"PROMPT_LENGTH = {settings['length']}"),
        task=_CANON.score,
        labels={"factor": factor, "setting": str(value), **{
            k: str(v) for k, v in settings.items()}}))
  return arms


def _fig3_figure(rows, path):
  """Figure 3's three ablations as columns of bars: canon accuracy and
  validation loss per setting of the one factor that changes."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  factors = ("length", "init", "base")
  # Top row: accuracy, as the paper's; bottom: validation loss, which
  # moves where accuracy stays at the majority class.
  fig, axes = plt.subplots(2, 3, figsize=(10, 5.6))
  for ax, factor in zip(axes.T, factors):
    # The default arm (20 rows) belongs to every panel.
    panel = [r for r in rows
             if r["factor"] == factor or r["arm"] == "length-20"]
    for row_axes, metric, label in (
        (ax[0], "accuracy", "canon accuracy (rank classification)"),
        (ax[1], "val_loss", "validation loss per target token")):
      shown = [r for r in panel if metric in r]
      row_axes.bar(range(len(shown)), [r[metric] for r in shown],
                   yerr=[r[f"{metric}_std"] for r in shown], capsize=3)
      row_axes.set_xticks(range(len(shown)))
      row_axes.set_xticklabels(
          [r[factor] + ("*" if factor == "length" and
                        r["init"] != _FIG3_DEFAULT["init"] else "")
           for r in shown], fontsize=7)
      row_axes.set_ylabel(label, fontsize=7)
    ax[0].set_title({"length": "prompt length", "init": "initialisation",
                     "base": "pretraining"}[factor], fontsize=9)
  fig.suptitle(f"Lester et al. Figure 3 at small scale ({_MIDDLE}); "
               "* sampled-vocabulary init (7 labels do not fit)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------
# D. Lester Table 2: paraphrase detection trained on one testament's pairs,
# scored zero-shot on the other's, prompt tuning vs model tuning.

_TABLE2 = "experiments/lester_table2"
_TESTAMENT = {"ot": "Old Testament", "nt": "New Testament"}
# Base: its task format. Prompt tuning acts only through the input, and
# the T5 bases' decoders take little from their encoder (benchmarks'
# conditioning gate), so the study also runs on the decoder-only base,
# which reads its input (the `_lm` format: the label after a newline).
_TABLE2_BASES = {_MIDDLE: "", "bible_gpt2_small": "_lm"}


def _table2_arms(quick: bool) -> list[Arm]:
  arms = []
  for base, fmt in _TABLE2_BASES.items():
    for source, target in (("ot", "nt"), ("nt", "ot"))[:1 if quick else 2]:
      train, evaluate = f"bible_paraphrase_{source}{fmt}", (
          f"bible_paraphrase_{target}{fmt}_rank")
      for method in ("prompt tuning", "model tuning"):
        arms.append(Arm(
            name=f"{base}-{source}_to_{target}-{method.replace(' ', '_')}",
            gin_files=(f"{_TABLE2}/{method.replace(' ', '_')}.gin",),
            bindings=(f"INITIAL_CHECKPOINT_PATH = '{base}'",
                      f"MIXTURE_OR_TASK_NAME = '{train}'",
                      "TASK_FEATURE_LENGTHS = {'inputs': 160, 'targets': 8}",
                      "infer_eval/DatasetConfig.mixture_or_task_name = "
                      f"'{train}_rank'"),
            task=f"{train}_rank",
            labels={"base": base, "train": _TESTAMENT[source],
                    "evaluate": _TESTAMENT[target], "method": method},
            evals=(("transfer", evaluate),)))
  return arms


def _table2_figure(rows, path):
  short = {"Old Testament": "OT", "New Testament": "NT"}
  rows = [{**r, "group": f"{r['base']}\n{short[r['train']]} -> "
                         f"{short[r['evaluate']]}"} for r in rows]
  _bars(rows, path, "transfer_accuracy", "group", "method",
        "Lester Table 2 at small scale: zero-shot paraphrase transfer")


STUDIES = {
    "msp_table1": Study(
        title="A. MSP Table 1: prompt tuning vs prefix tuning vs MSP",
        arms=_msp_arms, columns=("base", "direction", "method"),
        metrics=("bleu", "chrf"), figure=_msp_figure),
    "lester_fig1": Study(
        title="B. Lester Figure 1: prompt tuning vs model tuning vs prompt "
        "design across base sizes",
        arms=_fig1_arms, columns=("base", "task", "method"),
        metrics=("bleu", "chrf", "accuracy", "mean_7class_f1"),
        figure=_scaling_figure),
    "lester_fig3": Study(
        title="C. Lester Figure 3: prompt length, initialisation, LM "
        "adaptation",
        arms=_fig3_arms, columns=("factor", "length", "init", "base"),
        metrics=("accuracy", "mean_7class_f1", "val_loss"),
        figure=_fig3_figure),
    "lester_table2": Study(
        title="D. Lester Table 2: zero-shot domain transfer of paraphrase "
        "detection",
        arms=_table2_arms, columns=("base", "train", "evaluate", "method"),
        metrics=("accuracy", "transfer_accuracy", "transfer_f1", "val_loss"),
        figure=_table2_figure),
}
