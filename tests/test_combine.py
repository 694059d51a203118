"""Prompt layouts: hand-written placements, and combine/drop/extend on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import combine as cb

T, F = True, False
# Two right-padded rows, both ending in EOS (id 1); P = 2, L = 5.
TOKENS = np.array([[5, 6, 1, 0, 0],
                   [7, 1, 0, 0, 0]], np.int32)
P = 2

# Expected layouts, written out by hand. Source rows 0-1 are the prompt,
# rows 2..6 are input tokens 0..4.
EXPECTED = {
    "prefix": dict(
        source=[[0, 1, 2, 3, 4, 5, 6],
                [0, 1, 2, 3, 4, 5, 6]],
        valid=[[T, T, T, T, T, F, F],
               [T, T, T, T, F, F, F]],
        is_prompt=[[T, T, F, F, F, F, F],
                   [T, T, F, F, F, F, F]],
        input_position=[[2, 3, 4, 5, 6],
                        [2, 3, 4, 5, 6]]),
    "after_bos": dict(
        source=[[2, 0, 1, 3, 4, 5, 6],
                [2, 0, 1, 3, 4, 5, 6]],
        valid=[[T, T, T, T, T, F, F],
               [T, T, T, T, F, F, F]],
        is_prompt=[[F, T, T, F, F, F, F],
                   [F, T, T, F, F, F, F]],
        input_position=[[0, 3, 4, 5, 6],
                        [0, 3, 4, 5, 6]]),
    "suffix": dict(
        source=[[2, 3, 4, 0, 1, 5, 6],
                [2, 3, 0, 1, 4, 5, 6]],
        valid=[[T, T, T, T, T, F, F],
               [T, T, T, T, F, F, F]],
        is_prompt=[[F, F, F, T, T, F, F],
                   [F, F, T, T, F, F, F]],
        input_position=[[0, 1, 2, 5, 6],
                        [0, 1, 4, 5, 6]]),
    "suffix_before_eos": dict(
        source=[[2, 3, 0, 1, 4, 5, 6],
                [2, 0, 1, 3, 4, 5, 6]],
        valid=[[T, T, T, T, T, F, F],
               [T, T, T, T, F, F, F]],
        is_prompt=[[F, F, T, T, F, F, F],
                   [F, T, T, F, F, F, F]],
        input_position=[[0, 1, 4, 5, 6],
                        [0, 3, 4, 5, 6]]),
}

# Combined token ids (prompt rows shown as -1, -2) for each layout.
EXPECTED_IDS = {
    "prefix": [[-1, -2, 5, 6, 1, 0, 0],
               [-1, -2, 7, 1, 0, 0, 0]],
    "after_bos": [[5, -1, -2, 6, 1, 0, 0],
                  [7, -1, -2, 1, 0, 0, 0]],
    "suffix": [[5, 6, 1, -1, -2, 0, 0],
               [7, 1, -1, -2, 0, 0, 0]],
    "suffix_before_eos": [[5, 6, -1, -2, 1, 0, 0],
                          [7, -1, -2, 1, 0, 0, 0]],
}


def _assert_layout(layout: cb.Layout, expected: dict) -> None:
  for field, want in expected.items():
    got = np.asarray(getattr(layout, field))
    np.testing.assert_array_equal(got, np.array(want), err_msg=field)
  assert layout.valid.dtype == jnp.bool_
  assert layout.is_prompt.dtype == jnp.bool_
  assert jnp.issubdtype(layout.source.dtype, jnp.integer)
  assert jnp.issubdtype(layout.input_position.dtype, jnp.integer)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_matches_hand_written_placement(name):
  _assert_layout(cb.get_layout(name)(jnp.asarray(TOKENS), P), EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_under_jit_matches_eager(name):
  fn = jax.jit(cb.get_layout(name), static_argnums=1)
  _assert_layout(fn(jnp.asarray(TOKENS), P), EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED_IDS))
def test_combine_places_prompt_rows(name):
  layout = cb.get_layout(name)(jnp.asarray(TOKENS), P)
  prompt = jnp.array([[-1.0], [-2.0]])  # [P, H=1]
  embedded = jnp.asarray(TOKENS, jnp.float32)[..., None]  # [batch, L, 1]
  out = cb.combine(prompt, embedded, layout)
  assert out.shape == (2, 7, 1)
  np.testing.assert_array_equal(out[..., 0], np.array(EXPECTED_IDS[name]))


def test_suffix_before_eos_appends_when_row_has_no_final_eos():
  tokens = jnp.array([[5, 6, 0],    # no EOS: prompt after the real tokens
                      [5, 6, 1],    # full row ending in EOS
                      [1, 5, 0]])   # EOS not last: not moved
  layout = cb.suffix_layout(before_eos=True)(tokens, 1)
  np.testing.assert_array_equal(layout.source, [[1, 2, 0, 3],
                                                [1, 2, 0, 3],
                                                [1, 2, 0, 3]])
  np.testing.assert_array_equal(layout.valid, [[T, T, T, F],
                                               [T, T, T, T],
                                               [T, T, T, F]])
  np.testing.assert_array_equal(layout.input_position, [[0, 1, 3],
                                                        [0, 1, 3],
                                                        [0, 1, 3]])


def test_suffix_before_eos_uses_given_eos_id():
  tokens = jnp.array([[5, 9, 0]])
  layout = cb.suffix_layout(before_eos=True, eos_id=9)(tokens, 1)
  np.testing.assert_array_equal(layout.source, [[1, 0, 2, 3]])
  np.testing.assert_array_equal(layout.input_position, [[0, 2, 3]])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_all_padding_row_puts_prompt_first(name):
  layout = cb.get_layout(name)(jnp.zeros((1, 3), jnp.int32), 2)
  np.testing.assert_array_equal(layout.source, [[0, 1, 2, 3, 4]])
  np.testing.assert_array_equal(layout.valid, [[T, T, F, F, F]])
  np.testing.assert_array_equal(layout.is_prompt, [[T, T, F, F, F]])


def test_combine_with_per_example_prompts():
  layout = cb.suffix_layout()(jnp.asarray(TOKENS), P)
  prompts = jnp.array([[[-1.0], [-2.0]],
                       [[-3.0], [-4.0]]])  # [batch, P, 1]
  embedded = jnp.asarray(TOKENS, jnp.float32)[..., None]
  out = cb.combine(prompts, embedded, layout)
  np.testing.assert_array_equal(out[..., 0], [[5, 6, 1, -1, -2, 0, 0],
                                              [7, 1, -3, -4, 0, 0, 0]])


def test_combine_keeps_embedded_dtype():
  layout = cb.prefix_layout(jnp.asarray(TOKENS), P)
  out = cb.combine(jnp.ones((P, 3), jnp.float32),
                   jnp.zeros((2, 5, 3), jnp.bfloat16), layout)
  assert out.dtype == jnp.bfloat16


def test_combine_rejects_prompt_of_wrong_length():
  layout = cb.prefix_layout(jnp.asarray(TOKENS), P)
  with pytest.raises(ValueError, match=r"prompt of shape \(2, 3, 4\).*2 prompt"):
    cb.combine(jnp.ones((3, 4)), jnp.zeros((2, 5, 4)), layout)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_drop_prompt_inverts_combine(name):
  layout = cb.get_layout(name)(jnp.asarray(TOKENS), P)
  embedded = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
  out = cb.drop_prompt(cb.combine(jnp.full((P, 3), -1.0), embedded, layout),
                       layout)
  np.testing.assert_array_equal(out, embedded)


def test_drop_prompt_on_logits_by_hand():
  layout = cb.suffix_layout(before_eos=True)(jnp.asarray(TOKENS), P)
  # Logits [batch, P+L, vocab=1] whose value is the combined position.
  logits = jnp.broadcast_to(jnp.arange(7.0)[None, :, None], (2, 7, 1))
  out = cb.drop_prompt(logits, layout)
  np.testing.assert_array_equal(out[..., 0], [[0, 1, 4, 5, 6],
                                              [0, 3, 4, 5, 6]])


def test_extend_fills_prompt_positions():
  layout = cb.suffix_layout()(jnp.asarray(TOKENS), P)
  weights = jnp.array([[10, 11, 12, 13, 14],
                       [20, 21, 22, 23, 24]], jnp.int32)
  out = cb.extend(weights, layout, 0)
  np.testing.assert_array_equal(out, [[10, 11, 12, 0, 0, 13, 14],
                                      [20, 21, 0, 0, 22, 23, 24]])
  assert out.dtype == jnp.int32


def test_extend_prefix_lm_region_covers_prompt():
  layout = cb.after_bos_layout(jnp.asarray(TOKENS), P)
  causal_attention = jnp.array([[T, T, F, F, F],
                                [T, F, F, F, F]])
  out = cb.extend(causal_attention, layout, True)
  np.testing.assert_array_equal(out, [[T, T, T, T, F, F, F],
                                      [T, T, T, F, F, F, F]])


def test_get_layout_passes_functions_through():
  fn = cb.suffix_layout(before_eos=True, eos_id=3)
  assert cb.get_layout(fn) is fn
  assert cb.get_layout("prefix") is cb.prefix_layout


def test_get_layout_unknown_name():
  with pytest.raises(ValueError, match=r"unknown prompt layout 'middle'.*"
                     r"'after_bos', 'prefix', 'suffix', 'suffix_before_eos'"):
    cb.get_layout("middle")


def test_layout_is_a_pytree():
  layout = cb.prefix_layout(jnp.asarray(TOKENS), P)
  assert len(jax.tree_util.tree_leaves(layout)) == 4
