"""Model tuning: the frozen model itself, with chosen weights trainable.

The paper's baseline trains every weight; `trainable` narrows it to any set
of regexes over "/"-joined names (e.g. only layer norms, or the last decoder
layer), so the same trainer runs every variant. Packed batches (pack=True,
as pretraining uses) are supported: the networks mask each packed example
off its neighbours and restart its positions.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import gin

from prompt_tuning.methods import base


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelTuning(base.Method):
  """All weights train (or those matching `trainable`)."""

  trainable: Optional[Sequence[str]] = None
  default_trainable = (".*",)

  def __post_init__(self):
    if self.trainable is not None:
      object.__setattr__(self, "trainable", tuple(self.trainable))
