"""Multitask prompt tuning, MPT (Wang et al., ICLR 2023).

One prompt is shared by all tasks and each task rescales it element-wise by
a low-rank matrix of its own:

  prompt_t = prompt_embeddings * (prefix_task_cols[t] @ prefix_task_rows[t])
             [P, H]               [P, r]                 [r, H]

The parameters carry the names and shapes of Hugging Face PEFT's
`MultitaskPromptTuningConfig` (`prompt/prompt_embeddings`,
`prompt/prefix_task_cols`, `prompt/prefix_task_rows`), so a PEFT source
checkpoint maps onto them name for name. Each example names its task by the
int feature `task_ids` [batch], so one batch can mix tasks, as with
`MultiTaskPrompt`. The per-example prompts [batch, P, H] go where `combine`
puts them, as in `PromptTuning`: PEFT's placement is "prefix", the encoder
input of T5 (PEFT with num_transformer_submodules=1; its seq2seq default of
2 also feeds a second prompt to the decoder in `forward` but not in
`generate`, which this method does not copy) and the decoder input of
decoder-only models.

The paper's second stage starts a target task from the source tasks:
`MultitaskPromptTuning.from_source` builds that method from a source run's
parameters (or PEFT's saved adapter tensors, which use the same names).

Task ids outside [0, num_tasks) are an error where the ids are concrete and
give NaN prompts (so NaN scores) under a caller's jit, as for
`MultiTaskPrompt`; they are never clipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import base
from prompt_tuning.methods import initializers
from prompt_tuning.methods import multitask
from prompt_tuning.methods import soft_prompt
from prompt_tuning.methods.soft_prompt import PROMPT_AXES
from prompt_tuning.models import combine as combine_lib
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models.configs import TransformerConfig

__all__ = ["MultitaskPromptTuning", "SOURCE_INITS"]

SHARED = "prompt_embeddings"
COLS = "prefix_task_cols"
ROWS = "prefix_task_rows"
# "tasks" and "prompt_rank" have no partitioning rule: they replicate, like
# every prompt axis.
COLS_AXES = ("tasks", "prompt", "prompt_rank")
ROWS_AXES = ("tasks", "prompt_rank", "prompt_embed")
TASK_IDS = multitask.TASK_IDS
# PEFT's MultitaskPromptTuningInit values for starting a target task.
SOURCE_INITS = ("average_source_tasks", "exact_source_task",
                "only_source_shared")


@gin.configurable
@dataclasses.dataclass(frozen=True, eq=False)
class MultitaskPromptTuning(base.SoftPromptMethod):
  """MPT: a shared prompt times a rank-`num_ranks` matrix per task.

  Attributes:
    num_tasks: how many tasks (PEFT's num_tasks).
    length: P, the prompt rows (PEFT's num_virtual_tokens).
    num_ranks: r of each task's [P, r] @ [r, H] matrix (PEFT's num_ranks).
    initializer: of the shared prompt `prompt_embeddings` [P, H] (see
      `prompt_tuning.methods.initializers`; from_text is PEFT's TEXT init).
    task_initializer: of `prefix_task_cols` [tasks, P, r] and
      `prefix_task_rows` [tasks, r, H]; PEFT's default normal(0.02).
    cols_initializer, rows_initializer: override task_initializer for one
      of the two.
    combine: where the prompt goes among the inputs, as in PromptTuning
      (PEFT: "prefix").
    trainable: regexes overriding which parameters train (default: the
      three MPT parameters).
  """

  num_tasks: int = 1
  length: int = 100
  num_ranks: int = 1
  initializer: initializers.Initializer = initializers.uniform(0.5)
  task_initializer: initializers.Initializer = initializers.normal(0.02)
  cols_initializer: Optional[initializers.Initializer] = None
  rows_initializer: Optional[initializers.Initializer] = None
  combine: Union[str, combine_lib.LayoutFn] = "prefix"
  trainable: Optional[Sequence[str]] = None
  default_trainable = (r"prompt/.*",)
  extra_features = (TASK_IDS,)
  export_formats = ("peft",)
  packing_unsupported = (
      "multitask prompt tuning places one prompt per row, chosen by the "
      "row's task_ids; a packed row holds several examples, possibly of "
      "different tasks")

  def __post_init__(self):
    for name in ("num_tasks", "length", "num_ranks"):
      if getattr(self, name) < 1:
        raise ValueError(f"MultitaskPromptTuning {name}="
                         f"{getattr(self, name)} must be >= 1.")
    combine_lib.get_layout(self.combine)  # fails early on unknown names

  @classmethod
  def from_source(cls, source: Mapping[str, Any],
                  init: str = "average_source_tasks", task: int = 0,
                  **kwargs) -> "MultitaskPromptTuning":
    """A target-task method started from a trained source MPT.

    Args:
      source: {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
        arrays: a source run's params["prompt"], or the tensors of PEFT's
        adapter_model.safetensors (the same names).
      init: PEFT's MultitaskPromptTuningInit, either case:
        "average_source_tasks" (the shared prompt and the mean over source
        tasks of cols and rows), "exact_source_task" (source task `task`'s
        cols and rows) or "only_source_shared" (the shared prompt only;
        cols and rows drawn by task_initializer).
      task: the source task of "exact_source_task".
      **kwargs: other fields (num_tasks defaults to 1; with more, every
        target task starts from the same cols and rows).

    Returns:
      The method, its initializers set from `source`; length and num_ranks
      come from the source's shapes.
    """
    init = init.lower()
    if init not in SOURCE_INITS:
      raise ValueError(f"from_source init={init!r}; choose one of "
                       f"{SOURCE_INITS}.")
    needed = (SHARED,) if init == "only_source_shared" else (SHARED, COLS,
                                                             ROWS)
    missing = [name for name in needed if name not in source]
    if missing:
      raise ValueError(f"from_source: the source lacks {missing}; it has "
                       f"{sorted(source)}.")
    shared = np.asarray(source[SHARED], np.float32)
    kwargs.setdefault("num_tasks", 1)
    kwargs.update(length=shared.shape[0],
                  initializer=initializers.from_array(shared))
    if init != "only_source_shared":
      cols = np.asarray(source[COLS], np.float32)
      rows = np.asarray(source[ROWS], np.float32)
      if init == "average_source_tasks":
        cols, rows = cols.mean(0), rows.mean(0)
      else:
        if not 0 <= task < cols.shape[0]:
          raise ValueError(f"from_source task={task}: the source has "
                           f"{cols.shape[0]} tasks.")
        cols, rows = cols[task], rows[task]
      tasks = kwargs["num_tasks"]
      kwargs.update(
          num_ranks=cols.shape[1],
          cols_initializer=initializers.from_array(
              np.broadcast_to(cols, (tasks,) + cols.shape)),
          rows_initializer=initializers.from_array(
              np.broadcast_to(rows, (tasks,) + rows.shape)))
    return cls(**kwargs)

  def check_batch(self, batch) -> None:
    """Out-of-range task ids are an error here, where values are concrete;
    under a caller's jit they give NaN scores."""
    ids = batch.get(TASK_IDS)
    if ids is not None and not isinstance(ids, jax.core.Tracer):
      # MultiTaskPrompt's check, so both methods word the error alike.
      multitask._check_task_ids(  # pylint: disable=protected-access
          np.asarray(ids), self.num_tasks, None)

  def hooks(self, config: TransformerConfig) -> "MptSoftPrompt":
    return MptSoftPrompt(config, self)

  def peft_adapter(self, params, model):
    """PEFT's MULTITASK_PROMPT_TUNING adapter: the three tensors under
    their own names (PEFT's saved names are ours)."""
    adapter = soft_prompt.peft_prompt_config(self, model.config,
                                             "MULTITASK_PROMPT_TUNING")
    adapter.update(num_tasks=self.num_tasks, num_ranks=self.num_ranks)
    prompt = params.get("prompt", {})
    missing = [n for n in (SHARED, COLS, ROWS) if n not in prompt]
    if missing:
      raise ValueError(f"the params lack prompt/{missing[0]}; export the "
                       "params of this MultitaskPromptTuning model.")
    return adapter, {name: np.asarray(prompt[name], np.float32)
                     for name in (SHARED, COLS, ROWS)}


class MptSoftPrompt(hooks_lib.MethodHooks):
  """MPT's hooks: per-example prompts [batch, P, H] from the three MPT
  parameters, chosen by `task_ids`."""

  @nn.compact
  def __call__(self, task_ids: jax.Array,
               embedding: Optional[jax.Array] = None) -> jax.Array:
    """task_ids: int [batch]; embedding: the token table [vocab, H]."""
    m, width = self.method, self.config.emb_dim
    shared = base.method_param(self, SHARED, m.initializer, (m.length, width),
                               PROMPT_AXES, embedding)
    cols = base.method_param(
        self, COLS, m.cols_initializer or m.task_initializer,
        (m.num_tasks, m.length, m.num_ranks), COLS_AXES, embedding)
    rows = base.method_param(
        self, ROWS, m.rows_initializer or m.task_initializer,
        (m.num_tasks, m.num_ranks, width), ROWS_AXES, embedding)
    # Every task's prompt, then one per example: [tasks, P, H] is cheaper
    # than a product per example when the batch outnumbers the tasks.
    scales = jnp.einsum("tpr,trh->tph", cols, rows,
                        precision=jax.lax.Precision.HIGHEST)
    return multitask.choose_task_rows(shared[None] * scales, task_ids)

  def input_prompt(self, tokens, features, embedding):
    task_ids = multitask.task_ids_feature(
        self, tokens.shape[0], features,
        f"MultitaskPromptTuning(num_tasks={self.method.num_tasks}) picks "
        "each example's prompt by the int feature 'task_ids' [batch]; add it "
        "to the batch (e.g. the task's index from a seqio preprocessor).")
    return hooks_lib.InputPrompt(tokens, self(task_ids, embedding),
                                 self.method.layout)

  def init_params(self, embedding: jax.Array) -> None:
    # Called by load_pretrained without a batch: task 0 builds every param.
    self(jnp.zeros((1,), jnp.int32), embedding)
