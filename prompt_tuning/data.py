"""The input pipeline: seqio tasks -> model features -> arrays on the mesh.

`DatasetConfig` keeps T5X's field names. Each process reads its own shard of
the data (`seqio.ShardInfo`) and batches `batch_size // process_count`
examples; `to_global` joins the per-process rows into one global array
sharded over the mesh's 'data' axis. With sharding by example and no
shuffling, the global batch holds the same examples for any process count
(in another row order), so results match a single-process run.

TensorFlow and seqio are imported here and in `prompt_tuning.tasks` only
(docs/design.md §5): `import prompt_tuning` stays light.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Iterator, Mapping, Optional

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import model_wrappers

_AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow here

Batch = dict[str, np.ndarray]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """One split of a seqio task or mixture, as the model sees it.

  batch_size is the global batch size over all processes.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool
  seed: Optional[int] = None
  use_cached: bool = False
  # T5X's packing: several examples per row, with segment ids and
  # per-example positions that the networks mask and position by. Model
  # tuning and prefix tuning take it; soft-prompt methods and MSP refuse.
  # Evaluation and inference never pack.
  pack: bool = False
  module: Optional[str] = None  # Imported first: it registers the task.

  def __post_init__(self):
    """Bad values fail here, with the gin name to fix, before anything
    reads data or writes files."""
    if not isinstance(self.mixture_or_task_name, str) or not (
        self.mixture_or_task_name):
      raise ValueError(
          f"MIXTURE_OR_TASK_NAME={self.mixture_or_task_name!r} must be a "
          "task or mixture name, e.g. --gin.MIXTURE_OR_TASK_NAME=\"'my_task'\"")
    lengths = self.task_feature_lengths
    if not isinstance(lengths, Mapping) or not lengths or not all(
        isinstance(k, str) and _positive_int(v) for k, v in lengths.items()):
      raise ValueError(
          f"TASK_FEATURE_LENGTHS={lengths!r} must map each feature to a "
          "positive length, e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, "
          "'targets': 8}\"")
    if not _positive_int(self.batch_size):
      raise ValueError(
          f"BATCH_SIZE={self.batch_size!r} must be a whole number >= 1 (the "
          "global batch size), e.g. --gin.BATCH_SIZE=32")
    if not isinstance(self.split, str) or not self.split:
      raise ValueError(f"DatasetConfig.split={self.split!r} must be a split "
                       "name such as 'train' or 'validation'")


def _positive_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(
      value, bool) and value >= 1


def _hide_accelerators_from_tensorflow() -> None:
  """The input pipeline runs on the host; without this, TensorFlow would
  reserve GPU memory that JAX needs (T5X does the same)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already placed ops; too late to hide.
    pass


def get_task(name: str, module: Optional[str] = None) -> Any:
  """The registered seqio Task or Mixture; a clear error when unknown."""
  _hide_accelerators_from_tensorflow()
  import seqio  # pylint: disable=g-import-not-at-top
  importlib.import_module("prompt_tuning.tasks")
  if module:
    importlib.import_module(module)
  names = sorted(set(seqio.TaskRegistry.names()) |
                 set(seqio.MixtureRegistry.names()))
  if name not in names:
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"unknown task or mixture {name!r} ({len(names)} registered).{hint} "
        "Set MIXTURE_OR_TASK_NAME to a registered name, or set "
        "DatasetConfig.module to the module that registers it.")
  return seqio.get_mixture_or_task(name)


def feature_converter(model: model_wrappers.BaseModel, pack: bool = False):
  """seqio's converter for the model's T5X features.

  Encoder-decoder features for models that read `encoder_input_tokens`
  (T5, and MSP's decoder-only translator); otherwise the decoder-only
  converter (a prefix LM when the task has inputs, loss on targets only).
  With `pack` the converter adds `*_segment_ids` and `*_positions`, which
  the model wrappers pass to the network; a method that cannot take packed
  rows raises its error here, before any data is read.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  if pack and model.method is not None:
    model.method.check_packing("DatasetConfig.pack=True")
  if "encoder_input_tokens" in model.FEATURES:
    return seqio.EncDecFeatureConverter(pack=pack)
  return seqio.DecoderFeatureConverter(pack=pack)


def check_dataset(cfg: DatasetConfig, model: model_wrappers.BaseModel
                  ) -> Any:
  """The task or mixture `cfg` names, once `model` can take its lengths."""
  task = get_task(cfg.mixture_or_task_name, cfg.module)
  check_feature_lengths(model, cfg.task_feature_lengths)
  return task


def check_text_encoding(cfg: DatasetConfig, limit: Optional[int] = None
                        ) -> None:
  """Fails when a text field of the split is not UTF-8: the metrics and the
  JSON lines read it as text, so it would fail only after the whole
  evaluation (or training) had run. Reads the split's first `limit`
  examples (None: all), unshuffled.

  Raises:
    ValueError: naming the task, split, example and field, and the fix.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  source = get_task(cfg.mixture_or_task_name, cfg.module)
  tasks = (source.tasks if isinstance(source, seqio.Mixture) else [source])
  for task in tasks:
    if cfg.split not in task.splits:
      continue
    ds = task.get_dataset(None, split=cfg.split, shuffle=False,
                          use_cached=cfg.use_cached)
    if limit is not None:
      ds = ds.take(limit)
    for index, example in enumerate(numpy_iterator(ds)):
      for field, value in example.items():
        if isinstance(value, bytes):
          try:
            value.decode("utf-8")
          except UnicodeDecodeError as e:
            raise ValueError(
                f"task {task.name!r}, split {cfg.split!r}, example {index}: "
                f"field {field!r} is not UTF-8 text (byte "
                f"0x{value[e.start]:02x} at {e.start}: {value[:40]!r}); "
                "re-encode the task's source files as UTF-8 (e.g. iconv -f "
                "latin1 -t utf-8).") from None


def check_feature_lengths(model: model_wrappers.BaseModel,
                          lengths: Mapping[str, int]) -> None:
  """Rejects lengths the model cannot take once the method's prompt is in.

  A soft prompt occupies positions: with learned absolute positions (GPT-2)
  the prompt plus the longest sequence must fit in the position table.
  """
  for key, value in lengths.items():
    if int(value) < 1:
      raise ValueError(f"TASK_FEATURE_LENGTHS[{key!r}]={value} must be >= 1.")
  method = model.method
  budget = method.positions_taken() if method is not None else 0
  config = model.config
  if config.position_embedding != "absolute":
    return
  if "encoder_input_tokens" in model.FEATURES:
    longest = max(lengths.values())
  else:
    longest = sum(lengths.values())
  if longest + budget > config.max_position_embeddings:
    raise ValueError(
        f"TASK_FEATURE_LENGTHS {dict(lengths)} plus the prompt's {budget} "
        f"positions need {longest + budget} positions, but the model has "
        f"{config.max_position_embeddings}. Shorten the feature lengths or "
        "PROMPT_LENGTH.")


def check_vocabularies(model: model_wrappers.BaseModel, task: Any) -> None:
  """Token ids of every feature must index the model's embedding table."""
  from prompt_tuning.tasks import vocabularies  # pylint: disable=g-import-not-at-top
  for key, feature in task.output_features.items():
    vocabularies.check_fits(feature.vocabulary, model.config.vocab_size,
                            name=f"the {key!r} vocabulary of {task.name!r}")


def get_dataset(cfg: DatasetConfig, model: model_wrappers.BaseModel, *,
                shard_id: Optional[int] = None,
                num_shards: Optional[int] = None,
                num_epochs: Optional[int] = None,
                drop_remainder: bool = True) -> Any:
  """A tf.data.Dataset of this process's batches of model features.

  num_epochs None repeats forever (training); eval passes 1.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  # First: a method that refuses packing fails before the task is read.
  converter = feature_converter(model, cfg.pack)
  shard_id = jax.process_index() if shard_id is None else shard_id
  num_shards = jax.process_count() if num_shards is None else num_shards
  if cfg.batch_size % num_shards:
    raise ValueError(
        f"BATCH_SIZE={cfg.batch_size} is not divisible by the {num_shards} "
        "processes; use a multiple of the process count.")
  task = check_dataset(cfg, model)
  missing = [k for k in task.output_features
             if k not in cfg.task_feature_lengths
             and task.output_features[k].required]
  if missing:
    raise ValueError(
        f"TASK_FEATURE_LENGTHS {dict(cfg.task_feature_lengths)} has no "
        f"length for the features {missing} of {cfg.mixture_or_task_name!r}.")
  check_vocabularies(model, task)
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, cfg.task_feature_lengths,
      feature_converter=converter,
      dataset_split=cfg.split, use_cached=cfg.use_cached,
      shuffle=cfg.shuffle, num_epochs=num_epochs,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
      seed=cfg.seed, verbose=False)
  return ds.batch(cfg.batch_size // num_shards, drop_remainder=drop_remainder)


def without_autotune(ds: Any) -> Any:
  """ds with tf.data's autotuning off.

  Destroying an iterator waits for the autotuner's thread, and that wait
  idled 25-45 s at the end of 400-step training runs (the main thread
  blocked in the iterator's destructor, both cores idle). Our pipelines read
  in-memory text hundreds of times faster than a training step consumes
  it, so there is nothing to tune.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def numpy_iterator(ds: Any) -> Iterator[Any]:
  """ds's elements as numpy (tf.data reads ahead on its own threads)."""
  return without_autotune(ds).as_numpy_iterator()


def iterate(ds: Any, skip: int = 0) -> Iterator[Batch]:
  """numpy batches, after skipping `skip` (the data position on resume).

  tf.data prepares the next batches on its own threads while a step runs.
  """
  if skip:
    ds = ds.skip(skip)
  return numpy_iterator(ds.prefetch(_AUTOTUNE))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


def to_global(local_batch: Mapping[str, np.ndarray],
              mesh: Mesh) -> dict[str, jax.Array]:
  """Joins each process's rows into global arrays sharded over 'data'."""
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    rows = value.shape[0] * jax.process_count()
    if rows % mesh.shape["data"]:
      raise ValueError(
          f"the global batch of {rows} rows does not split over the mesh's "
          f"data axis of {mesh.shape['data']}; make BATCH_SIZE a multiple "
          "of it.")
    out[key] = jax.make_array_from_process_local_data(
        batch_sharding(mesh, value.ndim), value,
        (rows,) + value.shape[1:])
  return out


def shard_full_batch(batch: Mapping[str, np.ndarray],
                     mesh: Mesh) -> dict[str, jax.Array]:
  """Places a batch that every process holds in full (evaluation)."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_callback(
        value.shape, batch_sharding(mesh, value.ndim),
        lambda index, v=value: v[index])
  return out
