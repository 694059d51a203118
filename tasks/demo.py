"""`demo_reverse_words`: a small synthetic task for the README demo.

Synthetic on purpose: it needs no download, so the demo runs offline and
in a couple of minutes. Each example is four words drawn from a fixed list
of 200 common English words by a seeded RNG; the model must say them in
reverse order:

  inputs:  "reverse: apple river stone green"
  targets: "green stone river apple"

Examples are fixed (the same on every machine and every run); no
validation or test example also appears in train. Bytes are the vocabulary
(seqio.ByteVocabulary: 256 bytes + pad/eos/unk = 259 ids), so any model with
at least 259 embedding rows can run it. With 7-letter words at most, inputs
fit in 48 tokens and targets in 32, EOS included.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics

TASK_NAME = "demo_reverse_words"
WORDS_PER_EXAMPLE = 4
# Examples per split; each split has its own seed.
SPLITS = {"train": (20000, 0), "validation": (64, 1), "test": (64, 2)}
VOCABULARY = seqio.ByteVocabulary()
FEATURE_LENGTHS = {"inputs": 48, "targets": 32}

WORDS = tuple("""
about above after again apple april arm art baby back ball bank bear bed
bell bird black blue boat body bone book box boy bread bridge brown cake
call car card cat chair city class clock cloud coat cold cook corn cow cup
dance day deep desk dog door dream dress drink duck earth east egg end eye
face farm fast fire fish flag floor flower fly food foot forest fox friend
frog fruit game garden gate girl glass gold good grass green hand happy hat
head heart hill home horse house ice iron jump key king lake lamp land leaf
light lion long lunch map milk moon morning mouse music name night north
ocean orange paper park party pen pencil pig plane plant queen rain red
ring river road rock roof room rose run salt sand school sea seed sheep
ship shoe shop silver sing sister sky sleep slow smile snow song south
spoon spring star stone storm street summer sun table tall tea teeth tiger
time today town toy train tree truck under uncle water west whale wheel
white wind window winter wolf wood world yellow young zebra zero bus kite
nest owl pear rabbit tent wave lemon
""".split())


def reverse_words(text: str) -> str:
  """The target for an input's word list: the same words, last first."""
  return " ".join(reversed(text.split()))


@functools.lru_cache(maxsize=None)
def examples(split: str) -> tuple[tuple[str, str], ...]:
  """The split's (inputs, targets) pairs, generated once per process."""
  if split not in SPLITS:
    raise ValueError(f"{TASK_NAME} has no split {split!r}; it has "
                     f"{sorted(SPLITS)}.")
  held_out = set()
  if split == "train":
    for other in SPLITS:
      if other != "train":
        held_out.update(inputs for inputs, _ in examples(other))
  count, seed = SPLITS[split]
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < count:
    picks = rng.integers(0, len(WORDS), size=WORDS_PER_EXAMPLE)
    words = " ".join(WORDS[i] for i in picks)
    inputs = f"reverse: {words}"
    if inputs in held_out:
      continue
    out.append((inputs, reverse_words(words)))
  return tuple(out)


def _dataset_fn(split: str, shuffle_files: bool,
                seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples.
  inputs, targets = zip(*examples(split))
  return tf.data.Dataset.from_tensor_slices(
      {"inputs": list(inputs), "targets": list(targets)})


def register() -> str:
  """Registers the task once (idempotent); returns its name."""
  if TASK_NAME not in seqio.TaskRegistry.names():
    features = {
        key: seqio.Feature(VOCABULARY, add_eos=True)
        for key in ("inputs", "targets")
    }
    seqio.TaskRegistry.add(
        TASK_NAME,
        source=seqio.FunctionDataSource(
            _dataset_fn, splits=tuple(SPLITS),
            num_input_examples={k: v[0] for k, v in SPLITS.items()}),
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=features,
        metric_fns=[metrics.sequence_accuracy, metrics.bleu],
    )
  return TASK_NAME


register()
