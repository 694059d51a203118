"""Packing (T5X's pack=True): several examples per row, kept apart exactly.

Four examples of different lengths are run unpacked (one per padded row) and
packed two per row, with segment ids (1, 2 per example, 0 = padding) and
positions restarting at 0 per example, laid out as seqio's packing feature
converters do. Every packed example must get the same per-example loss (sum
of its token losses) and the same logits at every real position as unpacked.

Why T5's relative position buckets stay exact: the networks compute them
from the per-example positions (`*_positions`), so a query and a key of one
example get bucket(pos_k - pos_q) exactly as unpacked; pairs across
examples get meaningless distances but are masked by the segment ids.
seqio packs each example as one contiguous run, so row distances agree within
a segment as well: `test_relative_buckets_only_see_distances_within_a_segment`
checks that row positions give the same result for T5, while GPT-2's absolute
position embeddings do need the restarted positions.

Compiled functions are shared: each plain model is built and initialised
once (`_plain`, behind the module-scoped `setup` fixture), so its jitted
forward compiles once per batch structure for the whole module.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import losses
from prompt_tuning.models import configs
from prompt_tuning.models import masks

# T5.1.1 tiny: gated GELU, RMS norm, relative position buckets; few buckets
# and a short max distance, so distances beyond 2 share log-spaced buckets.
T5 = configs.t5_1_1("tiny", vocab_size=64, emb_dim=8, head_dim=4,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=6)
CONFIGS = {
    "t5": T5,
    "decoder_lm": T5.replace(architecture="decoder_only"),
    "prefix_lm": T5.replace(architecture="decoder_only", prefix_lm=True),
    "gpt2": configs.gpt2("small", vocab_size=64, emb_dim=8, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=2,
                         max_position_embeddings=32),
}

# (inputs, targets), ids >= 2 with EOS = 1 last; lengths all differ.
EXAMPLES = [
    ([3, 4, 5, 6, 1], [7, 8, 1]),
    ([9, 1], [10, 11, 12, 1]),
    ([13, 14, 15, 1], [16, 1]),
    ([17, 18, 1], [19, 20, 21, 22, 1]),
]
ROWS = [[0, 1], [2, 3]]  # the examples of each packed row, in order
UNPACKED_LENGTH = 10  # > every example: unpacked rows end in padding
PACKED_LENGTH = 16  # > every packed row: packed rows end in padding


def _pad(values, length):
  return np.array(list(values) + [0] * (length - len(values)), np.int32)


def _decoder_inputs(targets):
  """seqio's autoregressive inputs: BOS (0), then targets shifted right."""
  return [0] + list(targets[:-1])


def _encdec_example(inputs, targets):
  return {
      "encoder_input_tokens": inputs,
      "decoder_input_tokens": _decoder_inputs(targets),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": [1] * len(targets),
  }


def _decoder_example(inputs, targets, prefix_lm):
  """One LM sequence inputs + targets; a prefix LM's bidirectional region
  covers the inputs and the first target's input position (seqio's
  PrefixLMFeatureConverter), and its loss covers the targets only."""
  sequence = inputs + targets
  n = len(inputs)
  example = {
      "decoder_input_tokens": _decoder_inputs(sequence),
      "decoder_target_tokens": sequence,
      "decoder_loss_weights": ([0] * n + [1] * len(targets) if prefix_lm
                               else [1] * len(sequence)),
  }
  if prefix_lm:
    example["decoder_causal_attention"] = [1] * (n + 1) + [0] * (
        len(targets) - 1)
  return example


def _examples(name):
  config = CONFIGS[name]
  if config.architecture == "encoder_decoder":
    return [_encdec_example(i, t) for i, t in EXAMPLES]
  return [_decoder_example(i, t, config.prefix_lm) for i, t in EXAMPLES]


def unpacked_batch(examples):
  """One example per row, right-padded."""
  return {key: np.stack([_pad(ex[key], UNPACKED_LENGTH) for ex in examples])
          for key in examples[0]}


def packed_batch(examples, rows=ROWS):
  """The examples of each row concatenated, with T5X's packing features."""
  batch = {}
  for key in examples[0]:
    prefix = "encoder" if key.startswith("encoder") else "decoder"
    batch[key] = np.stack([
        _pad(sum((list(examples[e][key]) for e in row), []), PACKED_LENGTH)
        for row in rows])
    if f"{prefix}_segment_ids" not in batch:
      batch[f"{prefix}_segment_ids"] = np.stack([
          _pad(sum(([s + 1] * len(examples[e][key])
                    for s, e in enumerate(row)), []), PACKED_LENGTH)
          for row in rows])
      batch[f"{prefix}_positions"] = np.stack([
          _pad(sum((list(range(len(examples[e][key]))) for e in row), []),
               PACKED_LENGTH) for row in rows])
  return batch


def token_losses(logits, batch):
  """Weighted per-token cross-entropy [rows, length] (numpy)."""
  log_likelihood = losses.token_log_likelihood(
      logits, batch["decoder_target_tokens"])
  return -np.asarray(log_likelihood) * batch["decoder_loss_weights"]


def per_example(values, batch, segments):
  """values [rows, length] -> each example's [length_e, ...] slice, keyed by
  example index; `segments` None: row e is example e (unpacked)."""
  values = np.asarray(values)
  if segments is None:
    lengths = (batch["decoder_target_tokens"] > 0).sum(-1)
    return {e: values[e, :n] for e, n in enumerate(lengths)}
  out = {}
  for r, row in enumerate(segments):
    ids = batch["decoder_segment_ids"][r]
    for s, e in enumerate(row):
      out[e] = values[r, ids == s + 1]
  return out


def example_losses(logits, batch, segments=None):
  """Per-example summed token losses, [num examples]."""
  parts = per_example(token_losses(logits, batch), batch, segments)
  return np.array([parts[e].sum() for e in sorted(parts)])


def _init(config, method=None, seed=0):
  model = pt.build_model(config, method=method)
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(seed), shapes)["params"])
  return model, params


@functools.cache
def _plain(name):
  """The model without a method and its params, one per module."""
  return _init(CONFIGS[name])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
  """(name, model, params, unpacked batch, its logits, packed batch)."""
  name = request.param
  model, params = _plain(name)
  examples = _examples(name)
  unpacked = unpacked_batch(examples)
  return (name, model, params, unpacked,
          np.asarray(model.compute_logits(params, unpacked)),
          packed_batch(examples))


def test_packed_examples_equal_unpacked_ones(setup):
  """Per-example losses (to 1e-5) and logits at every real position."""
  name, model, params, unpacked, unpacked_logits, packed = setup
  packed_logits = np.asarray(model.compute_logits(params, packed))
  np.testing.assert_allclose(
      example_losses(packed_logits, packed, ROWS),
      example_losses(unpacked_logits, unpacked), rtol=0, atol=1e-5,
      err_msg=name)
  got = per_example(packed_logits, packed, ROWS)
  want = per_example(unpacked_logits, unpacked, None)
  for e in range(len(EXAMPLES)):
    np.testing.assert_allclose(got[e], want[e], rtol=0, atol=1e-5,
                               err_msg=f"{name}: example {e}")
  # The wrapper's loss over the packed batch is the unpacked one.
  packed_loss = model.loss_fn(params, packed, None)[0]
  unpacked_loss = model.loss_fn(params, unpacked, None)[0]
  np.testing.assert_allclose(packed_loss, unpacked_loss, rtol=1e-6)


def test_packed_rows_without_segment_ids_mix_examples(setup):
  """Negative control: positions alone leave the examples attending to
  their neighbours, so the test above can fail."""
  name, model, params, unpacked, unpacked_logits, packed = setup
  no_segments = {k: v for k, v in packed.items()
                 if not k.endswith("segment_ids")}
  logits = np.asarray(model.compute_logits(params, no_segments))
  want = example_losses(unpacked_logits, unpacked)
  got = example_losses(logits, packed, ROWS)
  # The first example of each row sees no neighbour in causal decoders (its
  # neighbour comes later); the second one always does.
  assert np.all(np.abs(got[[1, 3]] - want[[1, 3]]) > 1e-4), (name, got, want)


def test_relative_buckets_only_see_distances_within_a_segment(setup):
  """With segment masks, row positions (0..L-1) instead of the restarted
  ones change nothing for T5's relative buckets (within a contiguous
  segment the distances agree), but do change GPT-2's absolute positions."""
  name, model, params, _, _, packed = setup
  rows = np.broadcast_to(np.arange(PACKED_LENGTH, dtype=np.int32),
                         packed["decoder_positions"].shape)
  row_positions = {k: (rows if k.endswith("_positions") else v)
                   for k, v in packed.items()}
  a = np.asarray(model.compute_logits(params, packed))
  b = np.asarray(model.compute_logits(params, row_positions))
  real = packed["decoder_segment_ids"] > 0
  if CONFIGS[name].position_embedding == "relative":
    np.testing.assert_allclose(a[real], b[real], rtol=0, atol=1e-5)
  else:
    assert not np.allclose(a[real], b[real], atol=1e-4)


@pytest.mark.parametrize("name", ["t5", "gpt2"])
def test_prefix_tuning_packs_exactly(name):
  """Prefix tuning takes packed rows: the prefix is the same keys/values for
  every example, and its shifted positions follow each example's own."""
  model, params = _init(CONFIGS[name], pt.PrefixTuning(length=2))
  examples = _examples(name)
  unpacked, packed = unpacked_batch(examples), packed_batch(examples)
  np.testing.assert_allclose(
      example_losses(model.compute_logits(params, packed), packed, ROWS),
      example_losses(model.compute_logits(params, unpacked), unpacked),
      rtol=0, atol=1e-5)


def test_model_tuning_takes_packing():
  model = pt.build_model(T5, method=pt.ModelTuning())
  model.method.check_packing("DatasetConfig.pack=True")  # no error
  converter = data.feature_converter(model, pack=True)
  assert converter.pack


def test_masks_keep_segments_apart():
  segments = np.array([[1, 1, 2, 2, 2, 0]])
  region = np.array([[1, 0, 1, 1, 0, 0]])
  got = np.asarray(masks.decoder_self_mask(1, 6, region, segments))[0, 0]
  expected = np.array([
      [1, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0],
      [0, 0, 1, 1, 0, 0],  # example 2's prefix: bidirectional in itself
      [0, 0, 1, 1, 0, 0],
      [0, 0, 1, 1, 1, 0],
      [0, 0, 0, 0, 0, 1],  # padding sees padding only
  ], bool)
  np.testing.assert_array_equal(got, expected)
  cross = masks.attention_mask(np.ones((1, 2), bool),
                               np.array([[True, True, True, False]]),
                               np.array([[1, 2]]), np.array([[1, 2, 2, 0]]))
  np.testing.assert_array_equal(cross[0, 0], [[1, 0, 0, 0], [0, 1, 1, 0]])
  with pytest.raises(ValueError, match="both queries and keys"):
    masks.attention_mask(np.ones((1, 2), bool), np.ones((1, 2), bool),
                         np.array([[1, 2]]))


def test_average_per_sequence_averages_per_packed_example():
  """AVERAGE_PER_SEQUENCE divides by each packed example's weight, as
  T5X does, so a packed batch's loss equals the unpacked one's."""
  rng = np.random.default_rng(0)
  examples = _examples("t5")
  unpacked, packed = unpacked_batch(examples), packed_batch(examples)
  unpacked_logits = rng.normal(size=(4, UNPACKED_LENGTH, 64)).astype(
      np.float32)
  # The same logits at every real token of the packed rows.
  packed_logits = rng.normal(size=(2, PACKED_LENGTH, 64)).astype(np.float32)
  for r, row in enumerate(ROWS):
    for s, e in enumerate(row):
      at = packed["decoder_segment_ids"][r] == s + 1
      packed_logits[r, at] = unpacked_logits[e, :at.sum()]
  def loss(logits, batch, segment_ids):
    return losses.weighted_cross_entropy(
        logits, batch["decoder_target_tokens"],
        batch["decoder_loss_weights"],
        loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
        segment_ids=segment_ids)[0]
  want = loss(unpacked_logits, unpacked, None)
  np.testing.assert_allclose(
      loss(packed_logits, packed, packed["decoder_segment_ids"]), want,
      rtol=1e-6)
  assert abs(loss(packed_logits, packed, None) - want) > 1e-3  # per row


# ---------------------------------------------------------------------------
# seqio's own packing converters, consumed as they are.


def _seqio_batches(converter_cls, lengths):
  """(unpacked, packed) numpy batches of EXAMPLES from seqio's converter."""
  tf = pytest.importorskip("tensorflow")
  seqio = pytest.importorskip("seqio")

  def dataset():
    return tf.data.Dataset.from_generator(
        lambda: iter([{"inputs": i, "targets": t} for i, t in EXAMPLES]),
        output_signature={k: tf.TensorSpec([None], tf.int32)
                          for k in ("inputs", "targets")})

  out = []
  for pack in (False, True):
    ds = converter_cls(pack=pack)(dataset(), lengths)
    out.append(next(ds.batch(len(EXAMPLES)).as_numpy_iterator()))
  return out


def _seqio_rows(unpacked, packed):
  """Which unpacked row (example) each packed segment is, by its targets."""
  rows = []
  for r in range(packed["decoder_target_tokens"].shape[0]):
    ids = packed["decoder_segment_ids"][r]
    row = []
    for s in range(1, ids.max() + 1):
      targets = packed["decoder_target_tokens"][r, ids == s]
      row.append(next(
          e for e, t in enumerate(unpacked["decoder_target_tokens"])
          if list(t[t > 0]) == list(targets[targets > 0])))
    rows.append(row)
  assert sorted(sum(rows, [])) == list(range(len(EXAMPLES)))
  return rows


@pytest.mark.parametrize("name", ["t5", "prefix_lm"])
def test_seqio_packed_batches_are_consumed_as_they_are(name):
  """seqio's EncDecFeatureConverter / DecoderFeatureConverter (prefix LM)
  with pack=True: their output keys go to the model unchanged and every
  example's loss equals its loss in seqio's unpacked batch."""
  seqio = pytest.importorskip("seqio")
  model, params = _plain(name)
  if name == "t5":
    converter, lengths = seqio.EncDecFeatureConverter, {"inputs": 8,
                                                        "targets": 8}
    expected_keys = {"encoder_segment_ids", "encoder_positions",
                     "decoder_segment_ids", "decoder_positions"}
  else:
    converter, lengths = seqio.DecoderFeatureConverter, {"inputs": 8,
                                                         "targets": 8}
    expected_keys = {"decoder_segment_ids", "decoder_positions",
                     "decoder_causal_attention"}
  unpacked, packed = _seqio_batches(converter, lengths)
  assert expected_keys <= set(packed)
  assert converter is type(data.feature_converter(model, pack=True))
  rows = _seqio_rows(unpacked, packed)
  assert max(len(row) for row in rows) > 1  # really packed
  packed_logits = model.compute_logits(params, packed)
  unpacked_logits = model.compute_logits(params, unpacked)
  got = per_example(token_losses(packed_logits, packed), packed, rows)
  want = per_example(token_losses(unpacked_logits, unpacked), unpacked, None)
  np.testing.assert_allclose([got[e].sum() for e in sorted(got)],
                             [want[e].sum() for e in sorted(want)],
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(model.loss_fn(params, packed, None)[0],
                             model.loss_fn(params, unpacked, None)[0],
                             rtol=1e-6)


def test_get_dataset_packs_for_model_tuning():
  """DatasetConfig.pack=True reaches seqio's converter: the batches carry
  segment ids and positions, several examples per row, and model tuning's
  loss_fn takes them as they are."""
  seqio_test_tasks = pytest.importorskip("seqio_test_tasks")
  config = T5.replace(vocab_size=260)  # seqio.ByteVocabulary's 259 ids fit
  model, params = _init(config, pt.ModelTuning())
  # Room for three or more examples per row (each fits the task's lengths).
  lengths = {k: 3 * v for k, v in seqio_test_tasks.FEATURE_LENGTHS.items()}
  cfg = data.DatasetConfig(seqio_test_tasks.COPY, lengths, "validation",
                           batch_size=2, shuffle=False, pack=True)
  batch = next(data.iterate(data.get_dataset(cfg, model, num_epochs=1,
                                             shard_id=0, num_shards=1)))
  assert set(batch) >= set(pt.models.transformer.PACKING_FEATURES)
  assert batch["decoder_segment_ids"].max() > 1  # several examples per row
  loss, metrics = model.loss_fn(params, batch, None)
  assert np.isfinite(loss)
  assert metrics["weight_sum"] == batch["decoder_loss_weights"].sum()


# ---------------------------------------------------------------------------
# Methods that cannot take packed rows: one clear error each.


def _assert_refuses(model, params, batch, what):
  with pytest.raises(ValueError, match=what) as info:
    model.loss_fn(params, batch, None)
  message = str(info.value)
  assert "cannot take packed batches" in message
  assert "decoder_segment_ids" in message
  assert "--gin.DatasetConfig.pack=False" in message
  with pytest.raises(ValueError, match=what):
    data.feature_converter(model, pack=True)
  # get_dataset refuses before it even looks the task up.
  cfg = data.DatasetConfig("no_such_task", {"inputs": 8, "targets": 8},
                           "train", batch_size=2, shuffle=False, pack=True)
  with pytest.raises(ValueError, match="DatasetConfig.pack=True"):
    data.get_dataset(cfg, model, shard_id=0, num_shards=1)
  return message


def test_prompt_tuning_refuses_packing():
  packed = packed_batch(_examples("t5"))
  model, params = _init(T5, pt.PromptTuning(length=2))
  _assert_refuses(model, params, packed, "one soft prompt per row")
  # Called directly, the network raises the same error.
  with pytest.raises(ValueError, match="one soft prompt per row"):
    model.module.apply(
        {"params": params}, packed["encoder_input_tokens"],
        packed["decoder_input_tokens"],
        encoder_segment_ids=packed["encoder_segment_ids"])
  gpt2, gpt2_params = _init(CONFIGS["gpt2"], pt.PromptTuning(length=2))
  _assert_refuses(gpt2, gpt2_params, packed_batch(_examples("gpt2")),
                  "one soft prompt per row")


def test_multitask_prompts_refuse_packing():
  packed = dict(packed_batch(_examples("t5")), task_ids=np.array([0, 1]))
  model, params = _init(T5, pt.MultiTaskPrompt(num_tasks=2, length=2))
  _assert_refuses(model, params, packed, "possibly of different tasks")


def test_msp_refuses_packing():
  packed = packed_batch(_examples("t5"))  # MSP reads encoder-decoder features
  model, params = _init(CONFIGS["gpt2"].replace(num_decoder_layers=3),
                        pt.MultiStagePrompting(length=2, separator_id=63))
  _assert_refuses(model, params, packed, "MSP carries each row's source")


def test_scoring_and_decoding_refuse_packed_batches():
  """Inference is unpacked: scoring and decoding say so instead of treating
  a packed row as one example."""
  model, params = _plain("t5")
  examples = _examples("t5")
  unpacked, packed = unpacked_batch(examples), packed_batch(examples)
  with pytest.raises(ValueError, match="score_batch takes one example per"):
    model.score_batch(params, packed)
  with pytest.raises(ValueError, match="predict_batch takes one example per"):
    model.predict_batch(params, packed)
  assert model.score_batch(params, unpacked).shape == (len(EXAMPLES),)
