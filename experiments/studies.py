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
}
_DIRECTIONS = {"En->Es": "bible_en_es", "Es->En": "bible_es_en"}
_DECODER_ONLY_BASES = ("bible_gpt2_small", "bible_gpt2_medium")


def _msp_arms(quick: bool) -> list[Arm]:
  arms = []
  directions = list(_DIRECTIONS.items())
  for base in _DECODER_ONLY_BASES[:1] if quick else _DECODER_ONLY_BASES:
    for direction, task_prefix in directions[:1] if quick else directions:
      for method, (gin_file, suffix) in _MSP_METHODS.items():
        task = task_prefix + suffix
        name = f"{base}-{task_prefix[6:]}-{method.replace(' ', '_')}"
        arms.append(Arm(
            name=name, gin_files=(gin_file,),
            bindings=(f"INITIAL_CHECKPOINT_PATH = '{base}'",
                      f"MIXTURE_OR_TASK_NAME = '{task}'"),
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
  fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 3.2))
  for i, name in enumerate(names):
    values = [next((r for r in rows if r[group] == g and r[series] == name),
                   None) for g in groups]
    ax.bar(np.arange(len(groups)) + i * width,
           [v[metric] if v else 0 for v in values], width,
           yerr=[v[f"{metric}_std"] if v else 0 for v in values],
           capsize=3, label=name)
  ax.set_xticks(np.arange(len(groups)) + width * (len(names) - 1) / 2)
  ax.set_xticklabels(groups, fontsize=8)
  ax.set_ylabel(metric)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _msp_figure(rows, path):
  rows = [{**row, "base / direction": f"{row['base']}\n{row['direction']}"}
          for row in rows]
  _bars(rows, path, "bleu", "base / direction", "method",
        "MSP Table 1 at small scale: BLEU on held-out verses")


STUDIES = {
    "msp_table1": Study(
        title="A. MSP Table 1: prompt tuning vs prefix tuning vs MSP",
        arms=_msp_arms, columns=("base", "direction", "method"),
        metrics=("bleu", "chrf"), figure=_msp_figure),
}
