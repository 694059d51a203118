"""Which parameters train: regexes over "/"-joined names, and the split.

The trainer differentiates only the trainable subtree; the frozen rest is
passed in as a constant (docs/design.md §1). Patterns must match the
whole name (`re.fullmatch`), so "prompt/prompt" does not also catch
"decoder/prompt_norm".
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax

Params = Any


def _flat(params: Params) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")


def is_trainable(name: str, patterns: Sequence[str]) -> bool:
  return any(re.fullmatch(p, name) for p in patterns)


def split(params: Params, patterns: Sequence[str]) -> tuple[Params, Params]:
  """(trainable, frozen) nested dicts; together they hold every leaf once."""
  flat = _flat(params)
  chosen = {n for n in flat if is_trainable(n, patterns)}
  if not chosen:
    raise ValueError(
        f"trainable patterns {list(patterns)} match no parameter; names look "
        f"like {sorted(flat)[:6]}. Use regexes that fully match such names.")
  unflat = lambda names: flax.traverse_util.unflatten_dict(
      {n: flat[n] for n in names}, sep="/")
  return unflat(sorted(chosen)), unflat(sorted(set(flat) - chosen))


def merge(trainable: Params, frozen: Params) -> Params:
  """Inverse of `split`."""
  flat = _flat(frozen)
  for name, value in _flat(trainable).items():
    if name in flat:
      raise ValueError(f"{name} is both trainable and frozen.")
    flat[name] = value
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def count(tree: Params) -> int:
  """Scalars in a tree of arrays or of shapes (`jax.ShapeDtypeStruct`)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def count_trainable(model) -> tuple[int, int]:
  """(trainable, frozen) scalar counts of a model, from shapes alone."""
  flat = _flat(nn.meta.unbox(model.abstract_params()))
  train = count([v for n, v in flat.items()
                 if is_trainable(n, model.trainable_patterns)])
  return train, count(list(flat.values())) - train
