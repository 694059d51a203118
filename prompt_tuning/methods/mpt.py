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
from prompt_tuning.methods import combine as combine_lib
from prompt_tuning.methods import initializers
from prompt_tuning.methods import multitask
from prompt_tuning.methods.prompt_tuning import PROMPT_AXES
from prompt_tuning.methods.prompt_tuning import PromptDecoderOnly
from prompt_tuning.methods.prompt_tuning import PromptEncoderDecoder
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
class MultitaskPromptTuning(base.Method):
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

  def positions_taken(self) -> int:
    return self.length

  def layout_fn(self) -> combine_lib.LayoutFn:
    return combine_lib.get_layout(self.combine)

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    if (config.architecture == "decoder_only"
        and self.combine not in ("prefix", "after_bos")):
      raise ValueError(
          f"combine={self.combine!r}: decoder-only models take the prompt "
          "before their tokens ('prefix') or after BOS ('after_bos').")

  def check_batch(self, batch) -> None:
    """Out-of-range task ids are an error here, where values are concrete;
    under a caller's jit they give NaN scores."""
    ids = batch.get(TASK_IDS)
    if ids is not None and not isinstance(ids, jax.core.Tracer):
      # MultiTaskPrompt's check, so both methods word the error alike.
      multitask._check_task_ids(  # pylint: disable=protected-access
          np.asarray(ids), self.num_tasks, None)

  def soft_prompt(self, config: TransformerConfig) -> MptSoftPrompt:
    return MptSoftPrompt(self, config.emb_dim, name="prompt")

  def networks(self) -> Mapping[str, type[nn.Module]]:
    return {"encoder_decoder": MptEncoderDecoder,
            "decoder_only": MptDecoderOnly}


class MptSoftPrompt(nn.Module):
  """Per-example prompts [batch, P, H] from the three MPT parameters."""

  method: MultitaskPromptTuning
  features: int

  @nn.compact
  def __call__(self, task_ids: jax.Array,
               embedding: Optional[jax.Array] = None) -> jax.Array:
    """task_ids: int [batch]; embedding: the token table [vocab, H]."""
    m = self.method
    shared = base.method_param(self, SHARED, m.initializer,
                               (m.length, self.features), PROMPT_AXES,
                               embedding)
    cols = base.method_param(
        self, COLS, m.cols_initializer or m.task_initializer,
        (m.num_tasks, m.length, m.num_ranks), COLS_AXES, embedding)
    rows = base.method_param(
        self, ROWS, m.rows_initializer or m.task_initializer,
        (m.num_tasks, m.num_ranks, self.features), ROWS_AXES, embedding)
    # Every task's prompt, then one per example: [tasks, P, H] is cheaper
    # than a product per example when the batch outnumbers the tasks.
    scales = jnp.einsum("tpr,trh->tph", cols, rows,
                        precision=jax.lax.Precision.HIGHEST)
    prompts = shared[None] * scales
    # NaN rows for ids out of range; jnp.take alone would wrap negative ids.
    in_range = (task_ids >= 0) & (task_ids < m.num_tasks)
    chosen = jnp.take(prompts, jnp.clip(task_ids, 0, m.num_tasks - 1), axis=0)
    return jnp.where(in_range[:, None, None], chosen, jnp.nan)


class _MptHooks:
  """The `soft_prompt` hook of PromptEncoderDecoder / PromptDecoderOnly per
  example: reads `task_ids`, returns a [batch, P, H] prompt."""

  # Batch features the model wrappers pass to every call.
  extra_features = (TASK_IDS,)

  def _embedding_table(self) -> jax.Array:
    raise NotImplementedError

  def _task_ids(self, batch: int, features: Mapping[str, jax.Array]
                ) -> jax.Array:
    if TASK_IDS in features:
      task_ids = jnp.asarray(features[TASK_IDS])
      if task_ids.shape not in ((batch,), (batch, 1)):
        raise ValueError(f"task_ids must be int [batch] = [{batch}]; got "
                         f"shape {task_ids.shape}.")
      if not jnp.issubdtype(task_ids.dtype, jnp.integer):
        raise ValueError(f"task_ids must be integers; got {task_ids.dtype}.")
      return task_ids.reshape(batch).astype(jnp.int32)
    if self.is_initializing():
      # `module.init` runs without batch features; any task builds params.
      return jnp.zeros((batch,), jnp.int32)
    raise KeyError(
        "batch lacks task_ids: MultitaskPromptTuning(num_tasks="
        f"{self.method.num_tasks}) picks each example's prompt by the int "
        "feature 'task_ids' [batch]; add it to the batch (e.g. the task's "
        "index from a seqio preprocessor).")

  def soft_prompt(self, tokens: jax.Array, features: Mapping[str, jax.Array]
                  ) -> tuple[jax.Array, jax.Array]:
    task_ids = self._task_ids(tokens.shape[0], features)
    return tokens, self.prompt(task_ids, self._embedding_table())

  def init_method_params(self) -> None:
    # Called by load_pretrained without a batch: task 0 builds every param.
    self.prompt(jnp.zeros((1,), jnp.int32), self._embedding_table())


class MptEncoderDecoder(_MptHooks, PromptEncoderDecoder):
  """EncoderDecoder whose encoder input carries each example's MPT prompt."""

  def _embedding_table(self) -> jax.Array:
    return self.token_embedder.embedding


class MptDecoderOnly(_MptHooks, PromptDecoderOnly):
  """DecoderOnly whose input carries each example's MPT prompt."""

  def _embedding_table(self) -> jax.Array:
    return self.decoder.token_embedder.embedding
