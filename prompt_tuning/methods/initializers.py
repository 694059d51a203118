"""Initial values for learned prompt tensors (soft prompts, prefixes, MSP).

Every initializer here is `init(rng, shape, embedding=None) -> float32
jax.Array`, where `embedding` is the frozen model's token table [vocab, H]
when the caller has it. Initializers that start from real token embeddings
(sampled vocabulary, class labels, text) need it; the rest ignore it, so they
also work where flax passes a dtype in that slot. Wherever an initializer is
accepted, a Flax/JAX one `(key, shape, dtype)` such as
`nn.initializers.zeros` works too (`initialize` tells them apart). Choosing
an initializer is configuration (gin), so each factory checks what it can
when built and the rest when called, with an error that names the bad value
and the fix.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import warnings
from typing import Callable, Optional, Protocol, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import npy
from prompt_tuning.checkpoints import t5x

__all__ = [
    "Initializer", "Vocabulary", "from_array", "from_class_labels", "from_npy",
    "from_sampled_vocab", "from_t5x_checkpoint", "from_text", "initialize",
    "normal", "read_t5x_variable", "t5x_variable_name", "uniform",
    "xavier_uniform_per_slice",
]

Initializer = Callable[..., jax.Array]
# Ours: (rng, shape, embedding=None) -> float32 [*shape]; or a Flax/JAX
# initializer (key, shape, dtype) -> [*shape].

# A string to tokenize, or its token ids.
TokensOrText = Union[str, Sequence[int], np.ndarray]


class Vocabulary(Protocol):
  """Anything that tokenizes: a seqio vocabulary, a SentencePieceProcessor."""

  def encode(self, s: str) -> Sequence[int]:
    ...


def _takes_embedding(init: Initializer) -> bool:
  """Ours name their third parameter `embedding`; Flax's take a dtype."""
  try:
    return "embedding" in inspect.signature(init).parameters
  except (TypeError, ValueError):  # no signature to read: a Flax-style one
    return False


def initialize(init: Initializer, rng: jax.Array, shape: Sequence[int],
               embedding: Optional[jax.Array] = None) -> jax.Array:
  """`init`'s float32 array of `shape`: ours get the token table [vocab, H]
  (or None), a Flax/JAX initializer gets dtype float32 instead."""
  shape = tuple(shape)
  third = embedding if _takes_embedding(init) else jnp.float32
  value = jnp.asarray(init(rng, shape, third), jnp.float32)
  if value.shape != shape:
    raise ValueError(
        f"the initializer {getattr(init, '__name__', init)!r} returned shape "
        f"{value.shape} for a parameter of shape {shape}; make it return an "
        "array of the shape it is given.")
  return value


def _check_shape(got: Sequence[int], want: Sequence[int], what: str) -> None:
  if tuple(got) != tuple(want):
    raise ValueError(
        f"{what} has shape {tuple(got)} but the prompt parameter has shape "
        f"{tuple(want)}; save or configure a {tuple(want)} array, or change "
        "the prompt length/width to match.")


def _require_embedding(embedding, who: str) -> jax.Array:
  """The [vocab, H] token table, or a clear error saying how to get one."""
  if embedding is None:
    raise ValueError(
        f"{who} needs the model's token embedding; load the model with "
        "pt.load_pretrained(...) and pass its token embedding table "
        "[vocab, H] as `embedding`, or read it from a checkpoint with "
        f"from_t5x_checkpoint(path, 'token_embedder/embedding', then={who}).")
  if np.ndim(embedding) != 2:
    raise ValueError(
        f"{who}: `embedding` must be the token table [vocab, H], got shape "
        f"{np.shape(embedding)}.")
  return embedding


def _require_table_shape(shape: Sequence[int], embedding, who: str) -> None:
  if len(shape) != 2 or shape[1] != embedding.shape[1]:
    raise ValueError(
        f"{who} makes a [P, H] prompt with H = the embedding width "
        f"{embedding.shape[1]}, but was asked for shape {tuple(shape)}; use "
        "it for a [P, H] soft prompt of the model's width.")


def _token_ids(value: TokensOrText, vocabulary: Optional[Vocabulary],
               what: str) -> list[int]:
  """Token ids of a string (via `vocabulary`) or of an id sequence."""
  if isinstance(value, str):
    if vocabulary is None:
      raise ValueError(
          f"{what} {value!r} is a string but no `vocabulary` was given; pass "
          "one with .encode(str) (a seqio vocabulary or a "
          "SentencePieceProcessor), or give token ids instead.")
    ids = np.asarray(list(vocabulary.encode(value)))
  else:
    ids = np.asarray(value)
  if ids.size and (ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer)):
    raise ValueError(
        f"{what} {value!r} must be a string or a 1-D sequence of int token "
        f"ids, got an array of shape {ids.shape} and dtype {ids.dtype}.")
  if ids.size == 0:
    raise ValueError(
        f"{what} {value!r} tokenizes to no tokens; give it some text or at "
        "least one token id.")
  if ids.min() < 0:
    raise ValueError(f"{what} {value!r} has a negative token id {ids.min()}.")
  return [int(i) for i in ids]


def _check_ids_in_vocab(ids: Sequence[int], embedding, what: str) -> None:
  if max(ids) >= embedding.shape[0]:
    raise ValueError(
        f"{what} has token id {max(ids)} but the embedding has only "
        f"{embedding.shape[0]} rows; use the model's own vocabulary.")


def _embed(ids: Sequence[int], embedding) -> jax.Array:
  """Rows of `embedding` for `ids`: [len(ids), H] float32."""
  return jnp.take(jnp.asarray(embedding), jnp.asarray(ids, jnp.int32),
                  axis=0).astype(jnp.float32)


# ----------------------------------------------------------------------------
# Random.
# ----------------------------------------------------------------------------


def uniform(scale: float = 0.5) -> Initializer:
  """U(-scale, scale), Lester et al.'s default for soft prompts."""
  if not scale > 0:
    raise ValueError(f"uniform: scale must be > 0, got {scale}.")

  def init(rng, shape, embedding=None):
    del embedding
    return jax.random.uniform(rng, tuple(shape), jnp.float32, -scale, scale)

  return init


def normal(stddev: float = 0.5) -> Initializer:
  """N(0, stddev^2)."""
  if not stddev > 0:
    raise ValueError(f"normal: stddev must be > 0, got {stddev}.")

  def init(rng, shape, embedding=None):
    del embedding
    return stddev * jax.random.normal(rng, tuple(shape), jnp.float32)

  return init


def xavier_uniform_per_slice(length_axis: int = -3) -> Initializer:
  """Glorot-uniform with fans taken from one [P, H'] slice, not the whole.

  Stacked prompts such as MSP's [stages, layers, 2, P, heads, head_dim] are
  many independent [P, heads * head_dim] tables; flax's xavier_uniform would
  fold the leading axes into the fans and shrink the scale. Here
  fan_in = shape[length_axis], fan_out = prod(shape[length_axis + 1:]) and
  every entry is drawn from U(-limit, limit), limit = sqrt(6 / (fan_in +
  fan_out)). Use length_axis=-2 for a plain [..., P, H] table.
  """

  def init(rng, shape, embedding=None):
    del embedding
    shape = tuple(shape)
    if not -len(shape) <= length_axis < len(shape):
      raise ValueError(
          f"xavier_uniform_per_slice: length_axis {length_axis} is out of "
          f"range for shape {shape}; use -2 for [..., P, H] or -3 for "
          "[..., P, heads, head_dim].")
    axis = length_axis % len(shape)
    fan_in = shape[axis]
    fan_out = int(np.prod(shape[axis + 1:]))
    limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return jax.random.uniform(rng, shape, jnp.float32, -limit, limit)

  return init


# ----------------------------------------------------------------------------
# From the model's vocabulary.
# ----------------------------------------------------------------------------


def from_sampled_vocab(population_size: int = 5000) -> Initializer:
  """Rows of [P, H] copied from random embeddings of the first tokens.

  SentencePiece vocabularies are roughly frequency ordered, so the first
  `population_size` ids are common tokens (Lester et al. use 5,000). Rows are
  distinct unless P exceeds the population, which draws with replacement and
  warns.
  """
  if population_size < 1:
    raise ValueError(
        f"from_sampled_vocab: population_size must be >= 1, got "
        f"{population_size}.")

  def init(rng, shape, embedding=None):
    embedding = _require_embedding(embedding, "from_sampled_vocab()")
    _require_table_shape(shape, embedding, "from_sampled_vocab()")
    length = shape[0]
    population = min(population_size, embedding.shape[0])
    replace = length > population
    if replace:
      warnings.warn(
          f"from_sampled_vocab: prompt length {length} exceeds the population "
          f"of {population} tokens, so tokens are sampled with replacement "
          "and some prompt rows start equal; raise population_size to avoid "
          "it.", stacklevel=2)
    ids = jax.random.choice(rng, population, (length,), replace=replace)
    return jnp.take(jnp.asarray(embedding[:population]), ids,
                    axis=0).astype(jnp.float32)

  return init


def _leading_rows(who: str, n: int, too_long: Callable[[int], str],
                  id_checks: Sequence[tuple[Sequence[int], str]],
                  rows: Callable[[jax.Array], jax.Array],
                  fallback: Optional[Initializer]) -> Initializer:
  """An initializer of a [P, H] prompt: `rows(embedding)` [n, H] first, the
  rest from `fallback` (default from_sampled_vocab()).

  When called it checks the table and width (naming `who`), that n rows fit
  P (else ValueError(too_long(P))) and each (ids, what) of `id_checks`
  against the vocabulary size.
  """
  fallback = fallback or from_sampled_vocab()

  def init(rng, shape, embedding=None):
    embedding = _require_embedding(embedding, who)
    _require_table_shape(shape, embedding, who)
    if n > shape[0]:
      raise ValueError(too_long(shape[0]))
    for ids, what in id_checks:
      _check_ids_in_vocab(ids, embedding, what)
    base = initialize(fallback, rng, shape, embedding)
    return base.at[:n].set(rows(embedding)) if n else base

  return init


def from_class_labels(labels: Sequence[TokensOrText],
                      vocabulary: Optional[Vocabulary] = None,
                      fallback: Optional[Initializer] = None) -> Initializer:
  """Row i is the mean of label i's subword embeddings; other rows: fallback.

  Lester et al. start prompts from the verbalizers of the task's classes so
  the model sees the answer words from step 0.

  Args:
    labels: one string (tokenized with `vocabulary`) or token id sequence per
      class, at most P of them.
    vocabulary: anything with `.encode(str) -> list[int]`; needed for strings.
    fallback: fills rows len(labels)..P-1 (default from_sampled_vocab()).
  """
  if isinstance(labels, str):
    raise ValueError(
        f"from_class_labels: labels must be a list of labels, got the single "
        f"string {labels!r}; wrap it in a list.")
  label_ids = [_token_ids(label, vocabulary, "from_class_labels: label")
               for label in labels]
  n = len(label_ids)
  return _leading_rows(
      "from_class_labels(...)", n,
      lambda length: (f"from_class_labels: {n} labels do not fit a prompt of "
                      f"length {length}; use a prompt length >= {n}."),
      [(ids, f"from_class_labels: label {label!r}")
       for label, ids in zip(labels, label_ids)],
      lambda embedding: jnp.stack([_embed(ids, embedding).mean(axis=0)
                                   for ids in label_ids]),
      fallback)


def from_text(text: TokensOrText, vocabulary: Optional[Vocabulary] = None,
              fallback: Optional[Initializer] = None) -> Initializer:
  """The embeddings of `text`'s tokens first, the remaining rows: fallback.

  Args:
    text: a string (tokenized with `vocabulary`) or its token ids, at most P.
    vocabulary: anything with `.encode(str) -> list[int]`; needed for strings.
    fallback: fills rows after the text (default from_sampled_vocab()).
  """
  ids = _token_ids(text, vocabulary, "from_text: text")
  return _leading_rows(
      "from_text(...)", len(ids),
      lambda length: (f"from_text: {text!r} is {len(ids)} tokens, longer "
                      f"than the prompt length {length}; shorten the text or "
                      f"use a prompt length >= {len(ids)}."),
      [(ids, f"from_text: {text!r}")],
      lambda embedding: _embed(ids, embedding),
      fallback)


# ----------------------------------------------------------------------------
# From saved values.
# ----------------------------------------------------------------------------


def from_array(array) -> Initializer:
  """Exactly `array` (as float32), e.g. a prompt learned elsewhere."""
  array = np.asarray(array)

  def init(rng, shape, embedding=None):
    del rng, embedding
    _check_shape(array.shape, shape, "from_array: the array")
    npy.check_finite(array, "from_array: the array",
                     "start from a prompt whose values are all finite")
    return jnp.asarray(array, jnp.float32)

  return init


def from_npy(path: Union[str, os.PathLike]) -> Initializer:
  """A prompt saved with numpy.save (how prompt-tuning exports prompts).

  The file is read when the initializer runs, not when it is configured.
  """
  path = os.fspath(path)

  def init(rng, shape, embedding=None):
    del rng, embedding
    array = npy.load(path, "from_npy: the prompt file")
    _check_shape(array.shape, shape, f"from_npy: {path!r}")
    npy.check_finite(array, f"from_npy: {path!r}",
                     "start from a prompt whose values are all finite")
    return jnp.asarray(array, jnp.float32)

  return init


def t5x_variable_name(variable: str) -> str:
  """`variable` as a key of read_t5x_checkpoint: without a leading "/" or
  "target/" (the prompt-tuning project writes both)."""
  return re.sub(r"^/?(target/)?", "", variable)


def read_t5x_variable(path: Union[str, os.PathLike], variable: str,
                      who: str) -> np.ndarray:
  """float32 value of one T5X checkpoint variable; a missing name is an
  error (prefixed by `who`) listing the closest names there."""
  path, variable = os.fspath(path), t5x_variable_name(variable)
  arrays = t5x.read_t5x_checkpoint(path)
  if variable not in arrays:
    names = sorted(arrays)
    shown = (difflib.get_close_matches(variable, names, n=5, cutoff=0.3)
             or names[:5])
    raise ValueError(
        f"{who}: no variable {variable!r} in {path!r}; "
        f"available names include {shown} ({len(names)} in all).")
  return lazy.read_all(arrays[variable]).astype(np.float32)


def from_t5x_checkpoint(path: Union[str, os.PathLike], variable: str,
                        then: Optional[Initializer] = None) -> Initializer:
  """A variable of a T5X checkpoint, as the value or as `then`'s embedding.

  With `then=None` the variable (e.g. "prompt/prompt" of an earlier run) must
  have the requested shape and is returned. Otherwise it is handed to `then`
  as the embedding table, e.g.
  `from_t5x_checkpoint(ckpt, "token_embedder/embedding",
  then=from_sampled_vocab())`.

  Args:
    path: a checkpoint_N dir, its `checkpoint` file, or a run dir (newest
      checkpoint), local or gs://.
    variable: "/"-joined parameter name under optimizer/target; a leading
      "target/" (as the prompt-tuning project writes it) is optional.
    then: an initializer that needs an embedding, or None.
  """
  path = os.fspath(path)
  variable = t5x_variable_name(variable)

  def init(rng, shape, embedding=None):
    del embedding  # replaced by the checkpoint's variable
    value = read_t5x_variable(path, variable, "from_t5x_checkpoint")
    if then is None:
      _check_shape(value.shape, shape,
                   f"from_t5x_checkpoint: {variable!r} in {path!r}")
      return jnp.asarray(value)
    return initialize(then, rng, shape, value)

  return init
