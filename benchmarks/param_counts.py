"""Trainable parameter counts per method at mGPT size (the MSP paper's table).

mGPT: 24 layers, 1024 wide, 16 heads; prompt/prefix length P = 128. Counts
come from `jax.eval_shape`, so nothing is materialised.

  python benchmarks/param_counts.py
"""

from __future__ import annotations

import jax

import prompt_tuning as pt
from prompt_tuning import trainable
from prompt_tuning.models import configs

PAPER = {  # Tan et al. 2022, Table 1 (approximate, as printed)
    "prompt_tuning": "131K", "prefix_tuning (MLP)": "26M", "msp": "19M",
}


def methods(length: int = 128) -> dict[str, object]:
  return {
      "prompt_tuning": pt.PromptTuning(length=length),
      "prefix_tuning (MLP)": pt.PrefixTuning(length=length,
                                             reparameterization="mlp"),
      "msp": pt.MultiStagePrompting(length=length),
  }


def trainable_counts(config=None, length: int = 128) -> dict[str, int]:
  """{method name: number of trainable scalars} for `config` (mGPT)."""
  config = config or configs.mgpt()
  counts = {}
  for name, method in methods(length).items():
    model = pt.build_model(config, method=method)
    shapes = {k: (1, 1) for k in ("encoder_input_tokens",
                                  "decoder_input_tokens")
              if k in model.FEATURES}
    abstract = jax.eval_shape(lambda m=model: m.get_initial_variables(
        jax.random.PRNGKey(0), shapes))
    params = jax.tree.map(lambda x: x, abstract["params"],
                          is_leaf=lambda x: hasattr(x, "unbox"))
    params = jax.tree.map(lambda b: b.value if hasattr(b, "unbox") else b,
                          params, is_leaf=lambda x: hasattr(x, "unbox"))
    train, _ = trainable.split(params, model.trainable_patterns)
    counts[name] = trainable.count(train)
  return counts


def main():
  print(f"{'method':24s} {'trainable params':>18s} {'paper':>8s}")
  for name, n in trainable_counts().items():
    print(f"{name:24s} {n:18,d} {PAPER[name]:>8s}")


if __name__ == "__main__":
  main()
