"""Beam search against greedy decoding and brute-force enumeration, on a tiny
hand-made Markov "model" whose state lives in the cache."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding

EOS = 1


def _markov_step(table, bonus):
  """A second-order Markov model that keeps its state in the cache.

  logits = table[prev, token] + bonus[min(count, 2)], where `prev` (the token
  fed before `token`) and `count` (how many 2s the sequence holds) come from
  the cache: a beam reading another beam's cache row gets wrong logits.
  """
  def step(tokens, cache):
    token = tokens[:, 0]
    count = cache["count"] + (token == 2)
    logits = table[cache["prev"], token] + bonus[jnp.minimum(count, 2)]
    return logits, {"prev": token, "count": count}
  return step


def _markov_logits(table, bonus, prev, token, count):
  """NumPy twin of `_markov_step` for one sequence; count includes token."""
  return table[prev, token] + bonus[min(count, 2)]


@functools.partial(jax.jit, static_argnames=("beam_size", "length", "alpha"))
def _beam(table, bonus, first, context, budgets, *, beam_size, length, alpha):
  cache = {"prev": context, "count": jnp.zeros_like(context)}
  return decoding.beam_search(
      _markov_step(table, bonus), first, cache, beam_size=beam_size,
      max_decode_len=length, eos_id=EOS, alpha=alpha, budgets=budgets)


@functools.partial(jax.jit, static_argnames=("length",))
def _greedy(table, bonus, first, context, budgets, *, length):
  cache = {"prev": context, "count": jnp.zeros_like(context)}
  return decoding.temperature_sample(
      _markov_step(table, bonus), first, cache, max_decode_len=length,
      eos_id=EOS, budgets=budgets)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.sum(np.exp(x - x.max())))


def _enumerate(table, bonus, first, context, budget, length, alpha):
  """Every complete sequence of one example -> its length-penalised score.

  A sequence is complete when it ends in EOS or reaches the budget; keys are
  the zero-padded token tuples beam search returns.
  """
  table, bonus = np.asarray(table, np.float64), np.asarray(bonus, np.float64)
  scores = {}
  if budget <= 0:
    return {(0,) * length: 0.0}

  def walk(seq, log_prob, prev, count, logits):
    log_p = _log_softmax(logits)
    for token in range(len(log_p)):
      new_seq, new_lp = seq + (token,), log_prob + log_p[token]
      if token == EOS or len(new_seq) == budget:
        penalty = ((5.0 + len(new_seq)) / 6.0) ** alpha
        scores[new_seq + (0,) * (length - len(new_seq))] = new_lp / penalty
      else:
        new_count = count + (token == 2)
        walk(new_seq, new_lp, token, new_count,
             _markov_logits(table, bonus, prev, token, new_count))

  walk((), 0.0, int(context), 0, np.asarray(first, np.float64))
  return scores


def _random_model(seed, vocab, batch, scale=2.0):
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.normal(size=(vocab, vocab, vocab)) * scale,
                      jnp.float32)
  bonus = jnp.asarray(rng.normal(size=(3, vocab)) * scale, jnp.float32)
  first = jnp.asarray(rng.normal(size=(batch, vocab)) * scale, jnp.float32)
  context = jnp.asarray(rng.integers(0, vocab, batch), jnp.int32)
  return table, bonus, first, context


def test_tile_beams_is_example_major():
  tree = {"a": jnp.arange(3), "b": jnp.arange(6).reshape(3, 2)}
  tiled = decoding.tile_beams(tree, 2)
  np.testing.assert_array_equal(tiled["a"], [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(tiled["b"][2:4], [[2, 3], [2, 3]])


@pytest.mark.parametrize("eos_reachable", [False, True])
def test_beam_size_1_equals_greedy(eos_reachable):
  """With one beam and a peaked model (so that no early EOS outscores the
  greedy path), beam search is greedy decoding, budgets included."""
  vocab, batch, length = 8, 4, 6
  rng = np.random.default_rng(0)
  successor = rng.permutation(vocab) if eos_reachable else (
      rng.integers(2, vocab, (vocab, vocab)))
  table = rng.normal(size=(vocab, vocab, vocab)) * 0.1
  peak = np.broadcast_to(successor, (vocab, vocab))
  np.put_along_axis(table, peak[..., None], 6.0, axis=-1)
  if not eos_reachable:
    table[..., EOS] = -30.0
  table = jnp.asarray(table, jnp.float32)
  bonus = jnp.zeros((3, vocab))
  first = jnp.asarray(6.0 * np.eye(vocab)[[2, 3, 5, 7]], jnp.float32)
  context = jnp.asarray([0, 4, 6, 2], jnp.int32)
  budgets = jnp.asarray([6, 2, 4, 0], jnp.int32)
  greedy, greedy_scores = _greedy(table, bonus, first, context, budgets,
                                  length=length)
  tokens, scores = _beam(table, bonus, first, context, budgets, beam_size=1,
                         length=length, alpha=0.0)
  assert tokens.shape == (batch, 1, length) and scores.shape == (batch, 1)
  np.testing.assert_array_equal(tokens[:, 0], greedy)
  np.testing.assert_allclose(scores[:, 0], greedy_scores, rtol=1e-5,
                             atol=1e-5)
  assert (np.asarray(greedy) == EOS).any() == eos_reachable


def test_finds_the_better_sequence_greedy_misses():
  """Greedy takes the likelier first token (2); the best sequence starts with
  3 and then almost surely ends. Two beams find it."""
  vocab = 4
  table = np.zeros((vocab, vocab, vocab))  # after 2: uniform
  table[:, 3] = np.log([0.025, 0.9, 0.05, 0.025])  # after 3: EOS
  first = jnp.log(jnp.array([[0.02, 0.08, 0.5, 0.4]]))
  args = (jnp.asarray(table, jnp.float32), jnp.zeros((3, vocab)), first,
          jnp.zeros((1,), jnp.int32), None)
  greedy, _ = _greedy(*args, length=3)
  tokens, scores = _beam(*args, beam_size=2, length=3, alpha=0.0)
  assert greedy[0, 0] == 2
  np.testing.assert_array_equal(tokens[0, 0], [3, EOS, 0])
  np.testing.assert_allclose(scores[0, 0], np.log(0.4 * 0.9), rtol=1e-5,
                             atol=1e-5)


def _first_order(first_probs, after):
  """Model args whose logits depend on the last token only: `after` maps a
  token to the probabilities of the next one (uniform for the others)."""
  vocab = len(first_probs)
  table = np.zeros((vocab, vocab, vocab))
  for token, probs in after.items():
    table[:, token] = np.log(probs)
  return (jnp.asarray(table, jnp.float32), jnp.zeros((3, vocab)),
          jnp.log(jnp.asarray([first_probs], jnp.float32)),
          jnp.zeros((1,), jnp.int32), None)


def _best(args, length, alpha):
  table, bonus, first, context, _ = args
  truth = _enumerate(table, bonus, first[0], context[0], length, length,
                     alpha)
  return max(truth, key=truth.get)


def test_a_beam_stays_alive_when_the_best_candidate_finishes():
  """EOS is the likeliest first token, yet with alpha=1 [2, EOS] scores
  higher: the one beam must survive alongside the finished [EOS] (hence
  2 * beam_size candidates per step)."""
  args = _first_order([0.01, 0.4, 0.35, 0.24],
                      {2: [0.0033, 0.99, 0.0033, 0.0034]})
  tokens, _ = _beam(*args, beam_size=1, length=3, alpha=1.0)
  assert _best(args, 3, 1.0) == (2, EOS, 0)
  np.testing.assert_array_equal(tokens[0, 0], [2, EOS, 0])


def test_search_goes_on_while_a_longer_sequence_can_win():
  """[EOS] (log p = -1) outscores the alive [2] (-1.2) now, but with alpha=2
  the near-certain [2, 2, 2, 2] wins at full length: stopping early needs
  the bound at the budget's penalty, not the current one's."""
  rest = (1 - np.exp(-1.0) - np.exp(-1.2)) / 2
  after_2 = np.exp([0.0, 0.0, 10.0, 0.0]) / np.sum(np.exp([0, 0, 10, 0]))
  args = _first_order([rest, np.exp(-1.0), np.exp(-1.2), rest], {2: after_2})
  tokens, scores = _beam(*args, beam_size=1, length=4, alpha=2.0)
  assert _best(args, 4, 2.0) == (2, 2, 2, 2)
  np.testing.assert_array_equal(tokens[0, 0], [2, 2, 2, 2])
  np.testing.assert_allclose(
      scores[0, 0], (-1.2 + 3 * np.log(after_2[2])) / 1.5 ** 2, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("vocab,length", [(4, 3), (5, 3), (4, 4)])
def test_best_beam_equals_brute_force(alpha, vocab, length):
  """With beam_size = (vocab - 1) ** (length - 1) every unfinished prefix
  stays alive, so the best beam must be the best complete sequence. Also
  checks every returned beam's score, and that greedy is beaten somewhere."""
  batch, beam_size = 3, (vocab - 1) ** (length - 1)
  budgets = np.array([length, length, 2], np.int32)
  greedy_beaten = 0
  for seed in range(6):
    table, bonus, first, context = _random_model(seed, vocab, batch)
    tokens, scores = _beam(table, bonus, first, context, budgets,
                           beam_size=beam_size, length=length, alpha=alpha)
    greedy, _ = _greedy(table, bonus, first, context, budgets, length=length)
    for b in range(batch):
      truth = _enumerate(table, bonus, first[b], context[b], budgets[b],
                         length, alpha)
      best = max(truth, key=truth.get)
      np.testing.assert_array_equal(tokens[b, 0], best, err_msg=f"{seed=}")
      np.testing.assert_allclose(scores[b, 0], truth[best], rtol=1e-5,
                                 atol=1e-5)
      returned = [tuple(int(t) for t in seq) for seq in np.asarray(tokens[b])]
      finite = np.isfinite(np.asarray(scores[b]))
      assert len(set(itertools.compress(returned, finite))) == finite.sum()
      for seq, score in zip(itertools.compress(returned, finite),
                            np.asarray(scores[b])[finite]):
        np.testing.assert_allclose(score, truth[seq], rtol=1e-5, atol=1e-5)
      greedy_beaten += tuple(int(t) for t in greedy[b]) != best
  assert greedy_beaten > 0  # otherwise this test could not tell them apart


def test_eos_padding_and_budgets():
  """Tokens after EOS are 0; each example stops at its own budget; a zero
  budget gives one empty sequence scored 0 and no others."""
  vocab, length, beam_size = 5, 5, 4
  table, bonus, first, context = _random_model(3, vocab, 3)
  table = table.at[..., EOS].add(1.5)  # some beams end early
  budgets = jnp.array([5, 2, 0], jnp.int32)
  tokens, scores = _beam(table, bonus, first, context, budgets,
                         beam_size=beam_size, length=length, alpha=0.6)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  ended_early = 0
  for b in range(2):
    for seq in tokens[b]:
      eos = np.flatnonzero(seq == EOS)
      end = eos[0] + 1 if eos.size else budgets[b]
      assert end <= budgets[b]
      assert (seq[end:] == 0).all()
      ended_early += end < budgets[b]
  assert ended_early > 0
  assert (tokens[1, :, 2:] == 0).all() and np.isfinite(scores[1]).all()
  assert (tokens[2] == 0).all()
  assert scores[2, 0] == 0.0 and np.isneginf(scores[2, 1:]).all()


def test_cache_rows_follow_their_beams():
  """The model's state (previous token, count of 2s) is only in the cache;
  if its rows were not reordered with the surviving beams, beams would score
  their tokens with another beam's state and the search would diverge from
  enumeration. Tight beams (2) make parents swap often."""
  vocab, length, batch = 5, 4, 4
  mismatches = 0
  for seed in range(8):
    table, bonus, first, context = _random_model(100 + seed, vocab, batch,
                                                 scale=3.0)
    budgets = np.full((batch,), length, np.int32)
    tokens, scores = _beam(table, bonus, first, context, budgets, beam_size=2,
                           length=length, alpha=0.0)
    for b in range(batch):
      truth = _enumerate(table, bonus, first[b], context[b], length, length,
                         0.0)
      for seq, score in zip(np.asarray(tokens[b]), np.asarray(scores[b])):
        seq = tuple(int(t) for t in seq)
        mismatches += not np.isclose(score, truth[seq], rtol=1e-5, atol=1e-5)
  assert mismatches == 0


def test_scores_sorted_descending():
  vocab, length, batch = 6, 5, 3
  for seed, alpha in itertools.product(range(4), (0.0, 0.6, 1.0)):
    table, bonus, first, context = _random_model(seed, vocab, batch)
    _, scores = _beam(table, bonus, first, context, None, beam_size=4,
                      length=length, alpha=alpha)
    scores = np.asarray(scores)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert (np.diff(scores, axis=1) <= 0).all()
