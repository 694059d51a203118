"""Trainable parameter counts per method at mGPT size (the MSP paper's table).

mGPT: 24 layers, 1024 wide, 16 heads; prompt/prefix length P = 128. Counts
come from shapes (`jax.eval_shape`), so nothing is materialised.

  python benchmarks/param_counts.py
"""

from __future__ import annotations

import prompt_tuning as pt
from prompt_tuning import param_split
from prompt_tuning.models import configs

# Tan et al. 2022 (MSP), parameter counts as printed for mGPT.
PAPER = {"prompt_tuning": "131K", "prefix_tuning (MLP)": "26M",
         "msp": "19M"}


def mgpt_counts(length: int = 128) -> dict[str, tuple[int, int]]:
  """{method: (trainable, frozen)} on mGPT."""
  methods = {
      "prompt_tuning": pt.PromptTuning(length=length),
      "prefix_tuning (MLP)": pt.PrefixTuning(length=length,
                                             reparameterization="mlp"),
      "msp": pt.MultiStagePrompting(length=length),
  }
  return {name: param_split.count_trainable(
      pt.build_model(configs.mgpt(), method=method))
          for name, method in methods.items()}


def main():
  print(f"{'method (mGPT, P=128)':24s} {'trainable':>12s} {'frozen':>14s} "
        f"{'paper':>6s}")
  for name, (train, frozen) in mgpt_counts().items():
    print(f"{name:24s} {train:12,d} {frozen:14,d} {PAPER[name]:>6s}")


if __name__ == "__main__":
  main()
