"""Pretraining objectives as seqio preprocessors, and the tasks built on them.

Three objectives, each over one text field tokenized into `targets`:

* `span_corruption`: T5's denoising objective (Raffel et al., 2020). About
  15% of the tokens, in spans of mean length 3, are dropped from `inputs`,
  each span replaced by one sentinel; `targets` lists the dropped spans,
  each after its sentinel. Sentinels are the vocabulary's extra ids from the
  top: `<extra_id_0>` = vocab_size - 1, then vocab_size - 2, ...
* `prefix_lm`: the "LM adaptation" objective that made T5.1.1's lm100k
  checkpoints (Lester et al., 2021): `inputs` = a random prefix of the text,
  `targets` = its continuation.
* `causal_lm`: for decoder-only models, `targets` = the text itself, cut
  into consecutive chunks of the target length.

Everything random is a stateless TF op seeded through seqio's
`map_over_dataset(num_seeds=...)`, so a task's examples are the same for the
same `get_dataset(seed=...)` and differ for another seed.

`register_pretraining_tasks` registers the three tasks for one text source.
The corpus module will call it like this (no task is registered here):

  source = seqio.FunctionDataSource(read_jsonl, splits=("train",
                                                        "validation"))
  vocabulary = seqio.SentencePieceVocabulary(
      str(DATA_DIR / "bible_spm.model"), extra_ids=100)
  pretraining.register_pretraining_tasks("pretrain_bible", source,
                                         vocabulary)
  # -> pretrain_bible_span_corruption, pretrain_bible_prefix_lm,
  #    pretrain_bible_causal_lm; each source example has a "text" field.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

# Tokens of one document that the encoder-decoder objectives look at: a
# random window of this size (T5's bound), so a huge document cannot make
# one enormous example.
MAX_DOCUMENT_TOKENS = 65536
# Documents concatenated before span corruption (T5's batch), so short
# texts fill whole 512-token inputs instead of padding.
CONCATENATE_DOCUMENTS = 128

SeedPair = Sequence[tf.Tensor] | tf.Tensor
Lengths = Mapping[str, int]
Features = Mapping[str, seqio.Feature]


# ------------------------------------------------------------------ lengths


def noise_counts(length: int, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """(noise tokens, noise spans) that span corruption draws for `length`
  tokens; the TF mask computes the same numbers (tests check both agree).

  At least one noise and one non-noise token and one span; never more spans
  than either kind has tokens (T5 omits this bound, which only matters for
  extreme densities, where its segmentation would break). Under 2 tokens,
  nothing is noise, as in T5.
  """
  if length < 2 or noise_density == 0:
    return 0, 0
  noise = min(max(round(length * noise_density), 1), length - 1)
  spans = round(noise / mean_noise_span_length)
  return noise, min(max(spans, 1), noise, length - noise)


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0
                            ) -> tuple[int, int]:
  """(raw tokens length, targets length) for span corruption.

  The raw length is the largest number of text tokens whose corrupted
  inputs (non-noise tokens, one sentinel per span, EOS) fit `inputs_length`;
  the targets length (noise tokens, one sentinel per span, EOS) is what
  such a chunk needs. T5's `random_spans_helper` numbers: 512 -> (568, 114).
  Both lengths grow with the raw length, so shorter chunks fit as well.
  """
  if inputs_length < 2:
    raise ValueError(f"span corruption needs an inputs length of at least 2 "
                     f"(a token and EOS), got {inputs_length}.")

  def corrupted(n: int) -> tuple[int, int]:
    noise, spans = noise_counts(n, noise_density, mean_noise_span_length)
    return n - noise + spans + 1, noise + spans + 1

  tokens_length = inputs_length - 1  # inputs never exceed raw length + 1
  while corrupted(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, corrupted(tokens_length)[1]


# ------------------------------------------------- span corruption, pure


def _noise_counts_tf(length: tf.Tensor, noise_density: float,
                     mean_noise_span_length: float
                     ) -> tuple[tf.Tensor, tf.Tensor]:
  """`noise_counts` in TF, in float64 so it rounds exactly like Python."""
  noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density),
                  tf.int32)
  noise = tf.clip_by_value(noise, 1, length - 1)
  spans = tf.cast(tf.round(tf.cast(noise, tf.float64)
                           / mean_noise_span_length), tf.int32)
  spans = tf.clip_by_value(spans, 1, tf.minimum(noise, length - noise))
  return noise, spans


def _shuffle(values: tf.Tensor, seed: SeedPair) -> tf.Tensor:
  """A seeded uniform permutation of a 1-D tensor."""
  keys = tf.random.stateless_uniform(tf.shape(values), seed=seed)
  return tf.gather(values, tf.argsort(keys))


def random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor,
                        seed: SeedPair) -> tf.Tensor:
  """Lengths of a uniformly random split of `num_items` items into
  `num_segments` non-empty runs (1 <= num_segments <= num_items): the
  first item of each run after the first is a random choice of
  num_segments - 1 of the num_items - 1 gaps."""
  starts = _shuffle(tf.cast(tf.range(num_items - 1) < num_segments - 1,
                            tf.int32), seed)
  segment_ids = tf.cumsum(tf.pad(starts, [[1, 0]]))
  return tf.math.segment_sum(tf.ones_like(segment_ids), segment_ids)


def random_spans_noise_mask(length: int | tf.Tensor, seeds: Sequence[SeedPair],
                            noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tf.Tensor:
  """T5's noise mask: bool[length], True = noise.

  `noise_counts` tokens are noise, in that many spans of random lengths,
  interleaved with as many non-noise spans of random lengths, starting with
  non-noise (so the text's start is always kept in the inputs). seeds[0]
  draws the noise spans' lengths, seeds[1] the non-noise spans'.
  """
  length = tf.convert_to_tensor(length, tf.int32)
  if noise_density == 0:
    return tf.zeros([length], tf.bool)
  # Under 2 tokens, compute for 2 and keep the first (non-noise) one, as T5.
  padded = tf.maximum(length, 2)
  noise, spans = _noise_counts_tf(padded, noise_density,
                                  mean_noise_span_length)
  noise_lengths = random_segmentation(noise, spans, seeds[0])
  kept_lengths = random_segmentation(padded - noise, spans, seeds[1])
  interleaved = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1),
                           [-1])
  is_noise_span = tf.tile([False, True], [spans])
  return tf.repeat(is_noise_span, interleaved)[:length]


def _replace_spans(tokens: tf.Tensor, noise_mask: tf.Tensor,
                   keep_noise: bool, vocab_size: int) -> tf.Tensor:
  """Puts the i-th noise span's sentinel (vocab_size - 1 - i) before where
  that span starts, then keeps the noise or the non-noise tokens."""
  previous = tf.concat([[False], noise_mask], 0)[:-1]
  span_starts = tf.logical_and(noise_mask, tf.logical_not(previous))
  sentinels = vocab_size - tf.cumsum(tf.cast(span_starts, tokens.dtype))
  keep = noise_mask if keep_noise else tf.logical_not(noise_mask)
  # Row i = [sentinel before token i, token i]; flattening keeps the order.
  values = tf.stack([sentinels, tokens], axis=1)
  return tf.boolean_mask(values, tf.stack([span_starts, keep], axis=1))


def spans_to_sentinels(tokens: tf.Tensor, noise_mask: tf.Tensor,
                       vocab_size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(inputs, targets) of span corruption for a given mask (pure).

  inputs = the non-noise tokens with each noise span replaced by its
  sentinel; targets = each noise span after its sentinel. Correct for any
  mask (T5's version assumes it starts with non-noise).
  """
  tokens = tf.convert_to_tensor(tokens)
  noise_mask = tf.convert_to_tensor(noise_mask, tf.bool)
  return (_replace_spans(tokens, noise_mask, False, vocab_size),
          _replace_spans(tokens, noise_mask, True, vocab_size))


# ------------------------------------------------------- prefix LM, pure


def random_prefix_length(length: int | tf.Tensor, seed: SeedPair,
                         max_inputs_length: int,
                         max_targets_length: int) -> tf.Tensor:
  """A uniform split point k: inputs = tokens[:k], targets = tokens[k:],
  both non-empty and within their lengths (needs 2 <= length <=
  max_inputs_length + max_targets_length)."""
  length = tf.convert_to_tensor(length, tf.int32)
  low = tf.maximum(1, length - max_targets_length)
  high = tf.minimum(length - 1, max_inputs_length)
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1,
                                     dtype=tf.int32)


# ------------------------------------------------ chunking (dataset level)


def _non_empty(example: Mapping[str, tf.Tensor]) -> tf.Tensor:
  return tf.size(example["targets"]) > 0


@seqio.map_over_dataset(num_seeds=1)
def _random_window(example: Mapping[str, tf.Tensor], seed: SeedPair, *,
                   max_length: int) -> dict[str, tf.Tensor]:
  tokens = example["targets"]
  windows = (tf.size(tokens) + max_length - 1) // max_length
  start = max_length * tf.random.stateless_uniform(
      [], seed, maxval=windows, dtype=tf.int32)
  return {"targets": tokens[start:start + max_length]}


def select_random_chunk(dataset: tf.data.Dataset,
                        max_length: int = MAX_DOCUMENT_TOKENS
                        ) -> tf.data.Dataset:
  """Keeps one random aligned window of `max_length` tokens per document
  (T5's pre-step); drops empty documents."""
  return _random_window(dataset.filter(_non_empty), max_length=max_length)


def concatenate_examples(dataset: tf.data.Dataset,
                         batch_size: int = CONCATENATE_DOCUMENTS
                         ) -> tf.data.Dataset:
  """Joins the `targets` of each run of `batch_size` documents into one."""
  return dataset.ragged_batch(batch_size).map(
      lambda batch: {"targets": batch["targets"].flat_values},
      num_parallel_calls=tf.data.AUTOTUNE)


def _to_rows(example: Mapping[str, tf.Tensor],
             max_length: int) -> dict[str, tf.Tensor]:
  tokens = example["targets"]
  size = tf.size(tokens)
  rows = (size + max_length - 1) // max_length
  padded = tf.pad(tokens, [[0, rows * max_length - size]])
  return {"tokens": tf.reshape(padded, [rows, max_length]),
          "length": tf.minimum(max_length,
                               size - tf.range(rows) * max_length)}


def split_tokens(dataset: tf.data.Dataset,
                 max_length: int) -> tf.data.Dataset:
  """Cuts each `targets` into consecutive chunks of exactly `max_length`
  tokens (the last one shorter), one example each; nothing is dropped."""
  if max_length < 1:
    raise ValueError(f"chunks need at least one token, got {max_length}.")
  return (dataset.filter(_non_empty)
          .map(functools.partial(_to_rows, max_length=max_length),
               num_parallel_calls=tf.data.AUTOTUNE)
          .unbatch()
          .map(lambda row: {"targets": row["tokens"][:row["length"]]},
               num_parallel_calls=tf.data.AUTOTUNE))


# ------------------------------------------------------------ objectives


def _lengths(sequence_length: Optional[Lengths], keys: Sequence[str],
             objective: str) -> list[int]:
  missing = [k for k in keys if not sequence_length or k not in
             sequence_length or sequence_length[k] is None]
  if missing:
    raise ValueError(f"{objective} cuts text to the feature lengths, so it "
                     f"needs sequence_length with {list(keys)}; got "
                     f"{sequence_length!r}.")
  return [int(sequence_length[k]) for k in keys]


@seqio.map_over_dataset(num_seeds=2)
def _corrupt(example: Mapping[str, tf.Tensor], seeds: Sequence[SeedPair], *,
             vocab_size: int, noise_density: float,
             mean_noise_span_length: float) -> dict[str, tf.Tensor]:
  tokens = example["targets"]
  mask = random_spans_noise_mask(tf.size(tokens), seeds, noise_density,
                                 mean_noise_span_length)
  inputs, targets = spans_to_sentinels(tokens, mask, vocab_size)
  return {"inputs": inputs, "targets": targets}


def span_corruption(dataset: tf.data.Dataset,
                    sequence_length: Optional[Lengths],
                    output_features: Features,
                    noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0,
                    merge_examples_to_reduce_padding: bool = True
                    ) -> tf.data.Dataset:
  """T5's span corruption of tokenized `targets` (EOS not yet appended).

  As T5: a random window of each document, documents concatenated (unless
  `merge_examples_to_reduce_padding` is False), cut into chunks whose
  corrupted inputs + EOS fit sequence_length["inputs"] (see
  `span_corruption_lengths`), each chunk corrupted with its own seeds.
  Raises if the targets length or the vocabulary's extra ids are too few
  for that chunk length, rather than cutting targets or reusing real
  tokens as sentinels.
  """
  inputs_length, targets_length = _lengths(
      sequence_length, ("inputs", "targets"), "span corruption")
  tokens_length, needed = span_corruption_lengths(
      inputs_length, noise_density, mean_noise_span_length)
  if targets_length < needed:
    raise ValueError(
        f"span corruption with inputs length {inputs_length} makes targets "
        f"of up to {needed} tokens (EOS included), but the targets length "
        f"is {targets_length}; set it to at least {needed}.")
  vocabulary = output_features["targets"].vocabulary
  _, spans = noise_counts(tokens_length, noise_density,
                          mean_noise_span_length)
  if vocabulary.extra_ids < spans:
    raise ValueError(
        f"span corruption of {tokens_length}-token chunks needs up to "
        f"{spans} sentinels, but {vocabulary!r} has {vocabulary.extra_ids} "
        "extra ids; use a vocabulary with extra_ids=100, as T5.")
  dataset = select_random_chunk(dataset)
  if merge_examples_to_reduce_padding:
    dataset = concatenate_examples(dataset)
  dataset = split_tokens(dataset, tokens_length)
  return _corrupt(dataset, vocab_size=vocabulary.vocab_size,
                  noise_density=noise_density,
                  mean_noise_span_length=mean_noise_span_length)


@seqio.map_over_dataset(num_seeds=1)
def _split_prefix(example: Mapping[str, tf.Tensor], seed: SeedPair, *,
                  max_inputs_length: int,
                  max_targets_length: int) -> dict[str, tf.Tensor]:
  tokens = example["targets"]
  split = random_prefix_length(tf.size(tokens), seed, max_inputs_length,
                               max_targets_length)
  return {"inputs": tokens[:split], "targets": tokens[split:]}


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Optional[Lengths],
              output_features: Features) -> tf.data.Dataset:
  """T5's LM adaptation: `inputs` = a random prefix, `targets` = the rest.

  A random window of each document is cut into chunks of the combined raw
  length (both lengths less the EOS each feature gets); each chunk of at
  least 2 tokens splits at a uniform point where both parts are non-empty
  and fit (a 1-token chunk cannot split, so it is dropped).
  """
  lengths = _lengths(sequence_length, ("inputs", "targets"), "prefix LM")
  raw = [n - int(output_features[k].add_eos)
         for n, k in zip(lengths, ("inputs", "targets"))]
  if min(raw) < 1:
    raise ValueError(f"prefix LM needs room for a token in both inputs and "
                     f"targets besides EOS; got {sequence_length!r}.")
  dataset = split_tokens(select_random_chunk(dataset), sum(raw))
  dataset = dataset.filter(lambda ex: tf.size(ex["targets"]) >= 2)
  return _split_prefix(dataset, max_inputs_length=raw[0],
                       max_targets_length=raw[1])


def _append_document_eos(dataset: tf.data.Dataset,
                         eos_id: int) -> tf.data.Dataset:
  return dataset.map(
      lambda ex: {"targets": tf.concat(
          [ex["targets"], tf.constant([eos_id], ex["targets"].dtype)], 0)},
      num_parallel_calls=tf.data.AUTOTUNE)


def causal_lm(dataset: tf.data.Dataset, sequence_length: Optional[Lengths],
              output_features: Features) -> tf.data.Dataset:
  """Decoder-only LM: each text, ended by EOS, cut into consecutive chunks
  of exactly sequence_length["targets"] tokens (the last shorter).

  EOS marks where a text ends, not where a chunk ends, so the model never
  learns to stop mid-text and no token is lost; the targets feature thus
  has add_eos=False. (With add_eos=True the chunks leave room for a
  per-chunk EOS instead, T5's `lm` convention, and no EOS is added here.)
  """
  (length,) = _lengths(sequence_length, ("targets",), "causal LM")
  feature = output_features["targets"]
  if feature.add_eos:
    return split_tokens(dataset, length - 1)
  return split_tokens(
      _append_document_eos(dataset.filter(_non_empty),
                           feature.vocabulary.eos_id), length)


# ---------------------------------------------------------- registration


def _task_preprocessors(text_key: str, objective: Callable[..., tf.data.Dataset]
                        ) -> list[Callable[..., tf.data.Dataset]]:
  return [
      functools.partial(seqio.preprocessors.rekey,
                        key_map={"targets": text_key}),
      seqio.preprocessors.tokenize,
      objective,
      seqio.preprocessors.append_eos_after_trim,
  ]


def register_pretraining_tasks(
    name_prefix: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
    *, text_key: str = "text", noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0) -> tuple[str, str, str]:
  """Registers `<prefix>_span_corruption`, `<prefix>_prefix_lm` and
  `<prefix>_causal_lm` over `source`'s `text_key` field; returns the names.

  Idempotent like the demo tasks (a name already registered is kept), so a
  module that calls this at import can be imported again. No metrics: the
  train binary's training_eval reports the loss. Span corruption needs a
  vocabulary with extra ids (100, as T5) for its sentinels.
  """
  corruption = functools.partial(
      span_corruption, noise_density=noise_density,
      mean_noise_span_length=mean_noise_span_length)
  both = {k: seqio.Feature(vocabulary, add_eos=True)
          for k in ("inputs", "targets")}
  tasks = {
      f"{name_prefix}_span_corruption": (corruption, both),
      f"{name_prefix}_prefix_lm": (prefix_lm, both),
      f"{name_prefix}_causal_lm": (
          causal_lm, {"targets": seqio.Feature(vocabulary, add_eos=False)}),
  }
  for name, (objective, features) in tasks.items():
    if name not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(
          name, source=source,
          preprocessors=_task_preprocessors(text_key, objective),
          output_features=features, metric_fns=[])
  return tuple(tasks)
