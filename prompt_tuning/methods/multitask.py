"""Multitask prompts: a shared prompt plus per-task parts, chosen per example,
so one frozen model serves many tasks in one mixed batch.

Each example names its task by the int feature `task_ids` [batch], or (for
encoder-decoder models) by a leading task token, as in google-research's
prompt-tuning multitask setup: task K's examples start with the sentinel
`<extra_id_K>`, and with `task_token_offset` = the id of `<extra_id_0>`
(seqio puts it last: vocab_size - 1) the task index is task_token_offset
minus the first encoder token. The token is removed before embedding.

The per-task parts are one table `prompt/tasks` [tasks, P_task, H_task]
(logical axes "tasks", "prompt", "prompt_embed"; "tasks" has no rule, so it
replicates like every prompt axis); the shared part is `prompt/shared`. How
they join into the [P, H] prompt of one example (`mode`):

  "add"              shared [P, H] + task [P, H];
  "concat_length"    [shared [P1, H]; task [P2, H]], P = P1 + P2;
  "concat_features"  [shared [P, H1] | task [P, H - H1]];
  "task_only"        task [P, H], no shared part.

A prompt bank (`MultiTaskPrompt.from_files`) is "task_only" with the table a
constant built from many single-task prompts: nothing trains, and one batch
mixes all of them. `MultiTaskPrompt.from_prompt_tuning` builds one from a
multitask prompt trained with google-research/prompt-tuning (see
multitask_bank). The per-example prompts [batch, P, H] then go where
`combine` puts them, exactly as in `PromptTuning`.

Task ids outside [0, num_tasks): an error when the ids are concrete (the
model wrappers check every batch before their compiled forward pass); under
a caller's `jax.jit` they cannot be checked, and the example's prompt becomes NaN so its loss is NaN and the
mistake shows instead of silently reusing another task's prompt. Never
clipped. Padding rows in task-token mode (first token 0) use task 0.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import base
from prompt_tuning.methods import initializers
from prompt_tuning.methods import multitask_bank
from prompt_tuning.methods.soft_prompt import PROMPT_AXES
from prompt_tuning.methods.soft_prompt import load_prompt
from prompt_tuning.models import combine as combine_lib
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models.configs import TransformerConfig

__all__ = ["MODES", "MultiTaskPrompt", "per_task"]

MODES = ("add", "concat_length", "concat_features", "task_only")
TASK_AXES = ("tasks",) + PROMPT_AXES
TASK_IDS = "task_ids"

PromptSource = Union[str, os.PathLike, np.ndarray, jax.Array]


def per_task(*inits: initializers.Initializer) -> initializers.Initializer:
  """A [tasks, P, H] initializer from [P, H] ones, each task its own draw.

  Vocabulary-based initializers (from_sampled_vocab, from_class_labels,
  from_text) make [P, H] tables; `per_task(init)` applies one to every task
  with a separate rng, `per_task(init_0, init_1, ...)` one per task (e.g.
  each task's class labels).
  """
  if not inits:
    raise ValueError("per_task: give one initializer, or one per task.")

  def init(rng, shape, embedding=None):
    num_tasks, part = shape[0], tuple(shape[1:])
    if len(inits) not in (1, num_tasks):
      raise ValueError(
          f"per_task: {len(inits)} initializers for {num_tasks} tasks; give "
          "one for all tasks or exactly one per task.")
    rngs = jax.random.split(rng, num_tasks)
    return jnp.stack([
        initializers.initialize(inits[i % len(inits)], rngs[i], part,
                                embedding) for i in range(num_tasks)])

  return init


def _load_bank(prompts: Any) -> np.ndarray:
  """float32 [tasks, P, H] from a [tasks, P, H] array or a sequence of
  [P, H] arrays / .npy paths, with errors naming the offending entry."""
  if isinstance(prompts, (np.ndarray, jax.Array)) and np.ndim(prompts) == 3:
    return np.asarray(prompts, np.float32)
  if isinstance(prompts, (str, os.PathLike)) or not isinstance(
      prompts, (list, tuple)):
    raise ValueError(
        "a prompt bank takes a list of [P, H] prompts (arrays or .npy paths) "
        f"or one [tasks, P, H] array; got {type(prompts).__name__}.")
  if not prompts:
    raise ValueError("a prompt bank needs at least one prompt.")
  arrays, names = [], []
  for i, source in enumerate(prompts):
    name = (repr(os.fspath(source)) if isinstance(source, (str, os.PathLike))
            else "(an array)")
    array = load_prompt(source, f"prompt bank: task {i}'s prompt")
    if arrays and array.shape != arrays[0].shape:
      raise ValueError(
          f"prompt bank: task {i}'s prompt {name} has shape {array.shape}, "
          f"but task 0's ({names[0]}) has {arrays[0].shape}; every prompt of "
          "a bank must have the same length and width (serve prompts of "
          "other lengths from separate banks).")
    arrays.append(array)
    names.append(name)
  return np.stack(arrays)


@gin.configurable
@dataclasses.dataclass(frozen=True, eq=False)
class MultiTaskPrompt(base.SoftPromptMethod):
  """A shared prompt plus per-task parts for `num_tasks` tasks.

  Attributes:
    num_tasks: how many tasks (rows of `prompt/tasks`); taken from `prompts`
      for a bank.
    mode: how shared and task parts join (see MODES and the module doc);
      default "add", or "task_only" for a bank.
    length: P of the joined prompt ("add", "concat_features", "task_only";
      default 100). For "concat_length" it is shared_length + task_length.
    shared_length, task_length: P1 and P2 of "concat_length".
    shared_features: H1 of "concat_features"; the task part is H - H1 wide.
    shared_initializer: of `prompt/shared` [P_shared, H_shared].
    task_initializer: of `prompt/tasks` [tasks, P_task, H_task]; wrap [P, H]
      initializers with `per_task`. None: zeros for "add" (every task starts
      as the shared prompt, at the paper's scale, and learns a deviation),
      uniform(0.5) otherwise.
    task_token_offset: None: tasks come from the `task_ids` feature. An int:
      the id of `<extra_id_0>` (vocabulary size - 1, 32099 for T5); the
      first encoder token t names task offset - t (`<extra_id_K>` is task K)
      and is removed (encoder-decoder only).
    combine: where the prompt goes among the inputs, as in PromptTuning.
    prompts: serve fixed per-task prompts (a bank): a list of [P, H] arrays
      or .npy paths, or one [tasks, P, H] array. They become a constant (no
      parameters, nothing trains); mode is "task_only".
    trainable: regexes overriding which parameters train.
  """

  num_tasks: Optional[int] = None
  mode: Optional[str] = None
  length: Optional[int] = None
  shared_length: Optional[int] = None
  task_length: Optional[int] = None
  shared_features: Optional[int] = None
  shared_initializer: initializers.Initializer = initializers.uniform(0.5)
  task_initializer: Optional[initializers.Initializer] = None
  task_token_offset: Optional[int] = None
  combine: Union[str, combine_lib.LayoutFn] = "prefix"
  prompts: Optional[Any] = None
  trainable: Optional[Sequence[str]] = None
  default_trainable = (r"prompt/.*",)

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    if self.prompts is not None:
      self._init_bank(set_)
    if self.mode is None:
      set_("mode", "add")
    if self.mode not in MODES:
      raise ValueError(f"MultiTaskPrompt mode={self.mode!r}; choose one of "
                       f"{MODES}.")
    if self.num_tasks is None or self.num_tasks < 1:
      raise ValueError(f"MultiTaskPrompt num_tasks={self.num_tasks} must be "
                       ">= 1 (or pass `prompts` for a bank).")
    concat_length = self.mode == "concat_length"
    if concat_length:
      if (self.shared_length or 0) < 1 or (self.task_length or 0) < 1:
        raise ValueError(
            f"mode='concat_length' needs shared_length >= 1 and task_length "
            f">= 1; got {self.shared_length} and {self.task_length}.")
      total = self.shared_length + self.task_length
      if self.length is not None and self.length != total:
        raise ValueError(
            f"length={self.length} disagrees with shared_length + "
            f"task_length = {total}; leave length unset for 'concat_length'.")
      set_("length", total)
    elif self.shared_length is not None or self.task_length is not None:
      raise ValueError(
          f"shared_length/task_length apply to mode='concat_length', not "
          f"{self.mode!r}; set `length` instead.")
    if self.length is None:
      set_("length", 100)
    if self.length < 1:
      raise ValueError(f"MultiTaskPrompt length={self.length} must be >= 1.")
    if (self.shared_features is None) == (self.mode == "concat_features"):
      raise ValueError(
          "shared_features (H1, the shared part's width) is required by "
          "mode='concat_features' and applies to no other mode; got "
          f"mode={self.mode!r}, shared_features={self.shared_features}.")
    if (self.task_token_offset is not None
        and self.task_token_offset < self.num_tasks):
      raise ValueError(
          f"task_token_offset={self.task_token_offset} is too small for "
          f"{self.num_tasks} tasks: task K's token is offset - K and id 0 is "
          "padding; set it to the id of <extra_id_0> (vocabulary size - 1, "
          "32099 for T5).")
    combine_lib.get_layout(self.combine)  # fails early on unknown names

  def _init_bank(self, set_) -> None:
    bank = _load_bank(self.prompts)
    num_tasks, length, _ = bank.shape
    if self.mode not in (None, "task_only"):
      raise ValueError(f"a prompt bank serves whole per-task prompts "
                       f"(mode='task_only'), not mode={self.mode!r}.")
    for name, value in (("num_tasks", num_tasks), ("length", length)):
      if getattr(self, name) not in (None, value):
        raise ValueError(f"{name}={getattr(self, name)} disagrees with the "
                         f"prompt bank's {value}; leave it unset.")
    set_("prompts", bank)
    set_("mode", "task_only")
    set_("num_tasks", num_tasks)
    set_("length", length)
    if self.trainable is None:
      set_("trainable", ())

  @classmethod
  def from_files(cls, prompts: Sequence[PromptSource],
                 **kwargs) -> "MultiTaskPrompt":
    """An inference-only bank: task i is served with prompts[i] ([P, H]
    .npy paths or arrays, e.g. single-task prompts from pt.export_prompt)."""
    return cls(prompts=list(prompts), **kwargs)

  @classmethod
  def from_prompt_tuning(cls, checkpoint: Optional[PromptSource] = None, *,
                         mode: str, shared: Optional[PromptSource] = None,
                         tasks: Optional[PromptSource] = None,
                         frozen: bool = True,
                         shared_variable: str = multitask_bank.SHARED_VARIABLE,
                         tasks_variable: str = multitask_bank.TASKS_VARIABLE,
                         **kwargs) -> "MultiTaskPrompt":
    """A multitask prompt trained with google-research/prompt-tuning.

    Reads their shared prompt and flattened task table from `checkpoint`
    (T5X, or numpy_checkpoints/checkpoint_N) or from the `shared` and
    `tasks` .npy files / arrays; `mode` is theirs (one of
    multitask_bank.MODES or their class name). frozen=True: a bank whose
    row K is the prompt their model gives task K (every mode). False: this
    mode's parameters initialized to their values, to keep training (not
    "project"). Pass task_token_offset (the id of <extra_id_0>) to read
    their leading task tokens; kwargs go to MultiTaskPrompt.
    """
    sources = dict(shared=shared, tasks=tasks,
                   shared_variable=shared_variable,
                   tasks_variable=tasks_variable)
    if frozen:
      return cls(prompts=multitask_bank.bank_from_prompt_tuning(
          checkpoint, mode=mode, **sources), **kwargs)
    parts = multitask_bank.read_parts(checkpoint, **sources)
    return cls(**multitask_bank.method_kwargs(*parts, mode), **kwargs)

  @property
  def extra_features(self) -> tuple[str, ...]:
    return () if self.task_token_offset is not None else (TASK_IDS,)

  def part_shapes(self, emb_dim: int
                  ) -> tuple[Optional[tuple[int, int]], tuple[int, int]]:
    """([P_shared, H_shared] or None, [P_task, H_task])."""
    if self.mode == "task_only":
      return None, (self.length, emb_dim)
    if self.mode == "concat_length":
      return ((self.shared_length, emb_dim), (self.task_length, emb_dim))
    if self.mode == "concat_features":
      return ((self.length, self.shared_features),
              (self.length, emb_dim - self.shared_features))
    return (self.length, emb_dim), (self.length, emb_dim)

  def task_init(self) -> initializers.Initializer:
    if self.task_initializer is not None:
      return self.task_initializer
    return (nn.initializers.zeros if self.mode == "add"
            else initializers.uniform(0.5))

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    if (self.mode == "concat_features"
        and not 0 < self.shared_features < config.emb_dim):
      raise ValueError(
          f"shared_features={self.shared_features} must be in (0, "
          f"{config.emb_dim}): the shared and task parts share the model's "
          f"{config.emb_dim} embedding features.")
    if self.prompts is not None and self.prompts.shape[2] != config.emb_dim:
      raise ValueError(
          f"the bank's prompts are [P, H] = {self.prompts.shape[1:]}, but the "
          f"model's embeddings are {config.emb_dim} wide.")
    if (self.task_token_offset is not None
        and self.task_token_offset >= config.vocab_size):
      raise ValueError(
          f"task_token_offset={self.task_token_offset} is outside the model's "
          f"vocabulary of {config.vocab_size}; set it to the id of "
          "<extra_id_0> in the task's vocabulary (its size - 1).")
    if (config.architecture == "decoder_only"
        and self.task_token_offset is not None):
      raise ValueError(
          "task_token_offset reads the task from a leading encoder token; "
          "decoder-only models take it from the `task_ids` feature: leave "
          "task_token_offset=None and add task_ids [batch] to the batch.")

  packing_unsupported = (
      "multitask prompts place one prompt per row, chosen by the row's task "
      "(task_ids [batch] or a leading task token); a packed row holds "
      "several examples, possibly of different tasks")

  def check_batch(self, batch) -> None:
    """Out-of-range task ids (or task tokens) are an error here, where the
    values are concrete; under a caller's jit they give NaN scores."""
    if self.task_token_offset is not None:
      tokens = batch.get("encoder_input_tokens")
      if tokens is None or isinstance(tokens, jax.core.Tracer):
        return
      first = np.asarray(tokens)[:, 0]
      ids = np.where(first == 0, 0, self.task_token_offset - first)
    else:
      ids = batch.get(TASK_IDS)
      if ids is None or isinstance(ids, jax.core.Tracer):
        return
    _check_task_ids(np.asarray(ids), self.num_tasks, self.task_token_offset)

  def hooks(self, config: TransformerConfig) -> "MultiTaskSoftPrompt":
    return MultiTaskSoftPrompt(config, self)


def _check_task_ids(task_ids: jax.Array, num_tasks: int,
                    token_offset: Optional[int]) -> None:
  """Raises on out-of-range ids when they are concrete (not under jit)."""
  if isinstance(task_ids, jax.core.Tracer):
    return
  ids = np.asarray(task_ids)
  bad = ids[(ids < 0) | (ids >= num_tasks)]
  if bad.size:
    source = ("" if token_offset is None else
              f" (read as task_token_offset={token_offset} minus the first "
              "encoder token: does every input start with its task token "
              f"<extra_id_K>, ids {token_offset - num_tasks + 1}.."
              f"{token_offset}, and is the offset the id of <extra_id_0>?)")
    raise ValueError(
        f"task ids {sorted(set(bad.tolist()))} are out of range for "
        f"{num_tasks} tasks{source}; ids must be in [0, {num_tasks}).")


def task_ids_feature(module: nn.Module, batch: int,
                     features: Mapping[str, jax.Array],
                     missing: str) -> jax.Array:
  """int32 [batch] task ids from the `task_ids` feature ([batch] or
  [batch, 1]); task 0 while `module.init` builds the parameters without a
  batch; otherwise a KeyError that ends with `missing`."""
  if TASK_IDS in features:
    task_ids = jnp.asarray(features[TASK_IDS])
    if task_ids.shape not in ((batch,), (batch, 1)):
      raise ValueError(f"task_ids must be int [batch] = [{batch}]; got "
                       f"shape {task_ids.shape}.")
    if not jnp.issubdtype(task_ids.dtype, jnp.integer):
      raise ValueError(f"task_ids must be integers; got {task_ids.dtype}.")
    return task_ids.reshape(batch).astype(jnp.int32)
  if module.is_initializing():
    return jnp.zeros((batch,), jnp.int32)
  raise KeyError(f"batch lacks task_ids: {missing}")


def choose_task_rows(prompts: jax.Array, task_ids: jax.Array) -> jax.Array:
  """prompts [tasks, P, H] -> each example's [batch, P, H]; NaN rows for ids
  out of range (see the module doc): jnp.take alone would wrap negative ids
  around."""
  num_tasks = prompts.shape[0]
  in_range = (task_ids >= 0) & (task_ids < num_tasks)
  chosen = jnp.take(prompts, jnp.clip(task_ids, 0, num_tasks - 1), axis=0)
  return jnp.where(in_range[:, None, None], chosen, jnp.nan)


class MultiTaskSoftPrompt(hooks_lib.MethodHooks):
  """MultiTaskPrompt's hooks: per-example prompts [batch, P, H] from
  `prompt/shared` and `prompt/tasks` (or the bank's constant table)."""

  @nn.compact
  def __call__(self, task_ids: jax.Array,
               embedding: Optional[jax.Array] = None) -> jax.Array:
    """task_ids: int [batch]; embedding: the token table [vocab, H]."""
    m = self.method
    shared_shape, task_shape = m.part_shapes(self.config.emb_dim)
    shared = None
    if shared_shape is not None:
      shared = base.method_param(self, "shared", m.shared_initializer,
                                 shared_shape, PROMPT_AXES, embedding)
    if m.prompts is not None:
      tasks = jnp.asarray(m.prompts, jnp.float32)
    else:
      tasks = base.method_param(
          self, "tasks", m.task_init(), (m.num_tasks,) + task_shape,
          TASK_AXES, embedding)
    chosen = choose_task_rows(tasks, task_ids)  # [batch, P_task, H_task]
    if shared is None:
      return chosen
    if m.mode == "add":
      return shared[None] + chosen
    shared = jnp.broadcast_to(shared, chosen.shape[:1] + shared.shape)
    axis = 1 if m.mode == "concat_length" else 2
    return jnp.concatenate([shared, chosen], axis=axis)

  def _task_ids(self, tokens: jax.Array, features: Mapping[str, jax.Array]
                ) -> tuple[jax.Array, jax.Array]:
    """(input tokens without any task token, int32 task ids [batch])."""
    m = self.method
    batch = tokens.shape[0]
    if m.task_token_offset is None:
      return tokens, task_ids_feature(
          self, batch, features,
          f"MultiTaskPrompt(num_tasks={m.num_tasks}) picks each example's "
          "prompt by the int feature 'task_ids' [batch]; add it to the batch "
          "(e.g. the task's index from a seqio preprocessor), or, for "
          "encoder-decoder models, set task_token_offset to read the task "
          "from a leading input token.")
    first, tokens = tokens[:, 0], tokens[:, 1:]
    # Padding rows (no tokens at all) get task 0 rather than an error.
    task_ids = jnp.where(first == 0, 0, m.task_token_offset - first)
    if self.is_initializing():
      task_ids = jnp.zeros((batch,), jnp.int32)
    return tokens, task_ids.astype(jnp.int32)

  def input_prompt(self, tokens, features, embedding):
    tokens, task_ids = self._task_ids(tokens, features)
    return hooks_lib.InputPrompt(tokens, self(task_ids, embedding),
                                 self.method.layout)

  def init_params(self, embedding: jax.Array) -> None:
    # Called by load_pretrained without a batch: task 0 builds every param.
    self(jnp.zeros((1,), jnp.int32), embedding)
