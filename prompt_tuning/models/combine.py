"""Where a soft prompt [P, H] goes among the embedded inputs.

A layout function looks at the token ids and returns a `Layout`: for every
combined position, which row of concat([prompt, inputs]) sits there. The
embedded sequence, the validity mask, the prefix-LM region and the removal
of prompt positions from logits all derive from that one object, so they
cannot disagree about where the prompt is.

Every layout inserts the prompt at one point per row and keeps padding at
the end (decoder-only masks rely on right padding). Inputs are right-padded
with id 0; the real tokens of a row are its leading run of non-zero ids.
All functions here are jit-compatible: `prompt_length` is static, the rest
is array arithmetic.
"""

from __future__ import annotations

import functools
from typing import Callable, Union

import flax
import jax
import jax.numpy as jnp

__all__ = [
    "LAYOUTS", "Layout", "LayoutFn", "after_bos_layout", "combine",
    "drop_prompt", "extend", "get_layout", "prefix_layout", "suffix_layout",
]


@flax.struct.dataclass
class Layout:
  """Placement of P prompt rows and L input tokens in P + L positions."""

  # int32 [batch, P+L]: row of concat([prompt (rows 0..P-1)], [inputs (rows
  # P..P+L-1)]) placed at each combined position.
  source: jax.Array
  # bool [batch, P+L]: a prompt row or a real (non-padding) input token.
  valid: jax.Array
  # bool [batch, P+L]: a prompt row.
  is_prompt: jax.Array
  # int32 [batch, L]: the combined position each input token went to.
  input_position: jax.Array


# (tokens int [batch, L] with 0 = padding, prompt_length) -> Layout.
LayoutFn = Callable[[jax.Array, int], Layout]


def _num_real(tokens: jax.Array) -> jax.Array:
  """int32 [batch]: length of each row's leading run of non-padding ids."""
  return jnp.sum(jnp.cumprod(tokens != 0, axis=1), axis=1).astype(jnp.int32)


def _insert_at(tokens: jax.Array, prompt_length: int,
               insert: jax.Array) -> Layout:
  """The prompt goes after the first `insert[b]` input tokens of row b.

  Args:
    tokens: int [batch, L], right-padded with 0.
    prompt_length: P (static).
    insert: int [batch], 0 <= insert[b] <= number of real tokens of row b, so
      that padding stays at the end.
  """
  if prompt_length < 0:
    raise ValueError(f"prompt_length must be >= 0, got {prompt_length}.")
  length = tokens.shape[1]
  insert = insert.astype(jnp.int32)[:, None]  # [batch, 1]
  pos = jnp.arange(prompt_length + length, dtype=jnp.int32)[None, :]
  is_prompt = (pos >= insert) & (pos < insert + prompt_length)
  # Inputs before the insertion point keep their index, later ones shift by
  # P; input i is source row P + i.
  source = jnp.where(pos < insert, prompt_length + pos,
                     jnp.where(is_prompt, pos - insert, pos))
  num_real = _num_real(tokens)[:, None]
  valid = is_prompt | (source - prompt_length < num_real)
  i = jnp.arange(length, dtype=jnp.int32)[None, :]
  input_position = jnp.where(i < insert, i, i + prompt_length)
  return Layout(source=source, valid=valid, is_prompt=is_prompt,
                input_position=input_position)


def prefix_layout(tokens: jax.Array, prompt_length: int) -> Layout:
  """[prompt, tokens...]: Lester et al.'s default."""
  return _insert_at(tokens, prompt_length,
                    jnp.zeros(tokens.shape[:1], jnp.int32))


def after_bos_layout(tokens: jax.Array, prompt_length: int) -> Layout:
  """[tokens[0], prompt, tokens[1:]...]: keeps a BOS token first.

  An all-padding row gets the prompt first, so padding stays at the end.
  """
  return _insert_at(tokens, prompt_length,
                    jnp.minimum(1, _num_real(tokens)))


def _suffix(tokens: jax.Array, prompt_length: int, *, before_eos: bool,
            eos_id: int) -> Layout:
  num_real = _num_real(tokens)
  insert = num_real
  if before_eos:
    last = jnp.take_along_axis(
        tokens, jnp.maximum(num_real - 1, 0)[:, None], axis=1)[:, 0]
    insert = num_real - ((num_real > 0) & (last == eos_id)).astype(jnp.int32)
  return _insert_at(tokens, prompt_length, insert)


def suffix_layout(before_eos: bool = False, eos_id: int = 1) -> LayoutFn:
  """[real tokens, prompt, padding], or [..., prompt, EOS, padding].

  Args:
    before_eos: if a row's last real token is `eos_id`, put the prompt right
      before it; rows without a final EOS get the prompt after their tokens.
    eos_id: the EOS id (1 for T5's vocabulary).
  """
  return functools.partial(_suffix, before_eos=before_eos, eos_id=eos_id)


LAYOUTS: dict[str, LayoutFn] = {
    "prefix": prefix_layout,
    "after_bos": after_bos_layout,
    "suffix": suffix_layout(),
    "suffix_before_eos": suffix_layout(before_eos=True),
}


def get_layout(name_or_fn: Union[str, LayoutFn]) -> LayoutFn:
  """A layout function by name (see LAYOUTS) or the function itself."""
  if callable(name_or_fn):
    return name_or_fn
  if name_or_fn not in LAYOUTS:
    raise ValueError(
        f"unknown prompt layout {name_or_fn!r}; use one of {sorted(LAYOUTS)} "
        "or pass a function (tokens, prompt_length) -> Layout.")
  return LAYOUTS[name_or_fn]


def _take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [batch, N, ...] and int index [batch, M] -> [batch, M, ...]."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _prompt_length(layout: Layout, input_length: int) -> int:
  return layout.source.shape[1] - input_length


def combine(prompt: jax.Array, embedded: jax.Array,
            layout: Layout) -> jax.Array:
  """Places the prompt among the embedded inputs.

  Args:
    prompt: [P, H], or [batch, P, H] for per-example (multitask) prompts.
    embedded: [batch, L, H] embedded input tokens.
    layout: from a LayoutFn on the same [batch, L] tokens and P.
  Returns:
    [batch, P+L, H] in `embedded`'s dtype.
  """
  batch, length, features = embedded.shape
  expected = _prompt_length(layout, length)
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt, (batch,) + prompt.shape)
  if prompt.shape != (batch, expected, features):
    raise ValueError(
        f"prompt of shape {prompt.shape} does not fit a layout for "
        f"{expected} prompt positions and inputs {embedded.shape}; expected "
        f"[{expected}, {features}] or [{batch}, {expected}, {features}].")
  rows = jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1)
  return _take_rows(rows, layout.source)


def drop_prompt(x: jax.Array, layout: Layout) -> jax.Array:
  """x [batch, P+L, ...] -> [batch, L, ...] at the input positions.

  E.g. removes prompt positions from a decoder-only model's logits so they
  line up with the targets again.
  """
  return _take_rows(x, layout.input_position)


def extend(values: jax.Array, layout: Layout, prompt_value) -> jax.Array:
  """A per-input-token array [batch, L, ...] -> [batch, P+L, ...].

  Prompt positions get `prompt_value`, e.g. 1 in decoder_causal_attention so
  the prefix-LM region covers the prompt, or 0 in loss weights.
  """
  values = jnp.asarray(values)
  batch = values.shape[0]
  fill = jnp.full((batch, layout.source.shape[1] - values.shape[1])
                  + values.shape[2:], prompt_value, values.dtype)
  return _take_rows(jnp.concatenate([fill, values], axis=1), layout.source)
