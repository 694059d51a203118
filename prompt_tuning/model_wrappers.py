"""T5X-style model wrappers: loss_fn, score_batch, predict_batch(_with_aux).

They speak T5X's feature names (`encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
`decoder_causal_attention`) and take params explicitly, so the trainer can
differentiate with respect to any subtree and keep the rest frozen.

Packed batches (T5X's `pack=True`) also carry `encoder_segment_ids`,
`encoder_positions`, `decoder_segment_ids` and `decoder_positions`; the
teacher-forced paths (`compute_logits`, `loss_fn`) hand them to the network,
whose masks and positions then keep every packed example to itself. Scoring
and decoding take one example per row (inference is unpacked) and refuse
packed batches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding
from prompt_tuning import losses
from prompt_tuning.models import transformer
from prompt_tuning.models.configs import TransformerConfig

Batch = Mapping[str, jax.Array]
Params = Any

# The forward pass and the whole decoding loop are compiled once per model,
# batch structure and decoding options, so calling the model from a notebook
# (or a test) does not pay op-by-op dispatch or re-trace the decoding loop;
# inside a caller's own jit these simply inline.
_jit_forward = functools.partial(jax.jit, static_argnums=0)
_jit_predict = functools.partial(
    jax.jit, static_argnames=("self", "options", "prompt_with_targets",
                              "num_decodes"))


# The features holding token ids: integers in [0, vocab_size).
TOKEN_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens")
# Per-token features, shaped like the tokens of their stack.
_ROW_FEATURES = {
    "encoder_segment_ids": "encoder_input_tokens",
    "encoder_positions": "encoder_input_tokens",
    "decoder_loss_weights": "decoder_target_tokens",
    "decoder_causal_attention": "decoder_input_tokens",
    "decoder_segment_ids": "decoder_target_tokens",
    "decoder_positions": "decoder_target_tokens",
}


def _no_inputs(inputs: Any, targets: Any, xp: Any = np) -> Any:
  """Whether a batch has targets (or loss weights) but not one input token.

  Single rows without input are allowed: a padding row (T5X pads its last
  eval batch so), or an example whose only input is a method's soft prompt.
  """
  return xp.all(inputs == 0) & xp.any(targets != 0)


@jax.jit
def _token_stats(arrays: tuple[jax.Array, ...], inputs: Optional[jax.Array],
                 targets: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(int32 [n, 2]: min and max of each array, whether any example has
  targets but no input): one small compiled call instead of pulling the ids
  to the host."""
  stats = jnp.stack([jnp.stack([jnp.min(a).astype(jnp.int32),
                                jnp.max(a).astype(jnp.int32)])
                     for a in arrays])
  empty = (_no_inputs(inputs, targets, jnp) if inputs is not None
           else jnp.bool_(False))
  return stats, empty


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _first_row(mask: np.ndarray) -> int:
  """The first row of a [batch, length] (or [batch]) mask holding a True."""
  rows = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]
  return int(rows[0]) if rows.size else 0


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodingOptions:
  """How `predict_batch` picks tokens.

  temperature 0 is greedy, above 0 samples (with optional top-k / top-p);
  beam_size > 1 runs beam search with T5X's length penalty
  ((5 + length) / 6) ** alpha.
  """

  temperature: float = 0.0
  topk: int = 0
  topp: float = 0.0
  beam_size: int = 1
  alpha: float = 0.6

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0.")
    if self.beam_size < 1:
      raise ValueError(f"beam_size={self.beam_size} must be >= 1.")
    if self.beam_size > 1 and self.temperature > 0:
      raise ValueError(f"beam_size={self.beam_size} with temperature="
                       f"{self.temperature}: beam search is deterministic; "
                       "set temperature=0 or beam_size=1.")
    if self.topk < 0 or not 0.0 <= self.topp <= 1.0:
      raise ValueError(f"topk={self.topk} must be >= 0 and topp={self.topp} "
                       "in [0, 1].")


class BaseModel:
  """What both wrappers share: the module, loss options and scoring."""

  FEATURES: tuple[str, ...] = ()
  # The packing features the network reads (a subset of
  # transformer.PACKING_FEATURES).
  PACKING_FEATURES: tuple[str, ...] = ()

  def __init__(self, config: TransformerConfig, *,
               module: Optional[nn.Module] = None,
               eos_id: int = 1, label_smoothing: float = 0.0,
               z_loss: float = 0.0,
               loss_normalizing_factor: losses.LossNormalizer = None,
               decoding_options: DecodingOptions = DecodingOptions(),
               method: Any = None):
    losses.check_normalizer(loss_normalizing_factor)
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1).")
    self.config = config
    self.module = module or transformer.build_module(config)
    self.eos_id = eos_id
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    self.decoding_options = decoding_options
    self.method = method
    # Where the frozen base was read from (set by `load_pretrained`).
    self.base_path: Optional[str] = None

  @property
  def trainable_patterns(self) -> tuple[str, ...]:
    """Regexes of the parameters that train (all of them without a method:
    model tuning)."""
    return (".*",) if self.method is None else self.method.trainable_patterns()

  def _check_method_batch(self, batch: Batch) -> None:
    self._packing_features(batch)  # a method refusing packed rows raises
    if self.method is not None:
      self.method.check_batch(batch)

  def _packing_features(self, batch: Batch) -> dict[str, jax.Array]:
    """The packing features of a packed batch ({} for an unpacked one).

    A method that cannot take packed rows raises its error here (it depends
    only on which keys the batch has, so it also works under jit).
    """
    packed = {k: batch[k] for k in transformer.PACKING_FEATURES
              if batch.get(k) is not None}
    if packed and self.method is not None:
      self.method.check_packing(f"the batch has {', '.join(packed)}")
    return {k: v for k, v in packed.items() if k in self.PACKING_FEATURES}

  @staticmethod
  def _refuse_packed(batch: Batch, what: str) -> None:
    """Scoring and decoding treat each row as one example."""
    packed = [k for k in transformer.PACKING_FEATURES
              if batch.get(k) is not None]
    if packed:
      raise ValueError(
          f"{what} takes one example per row, but this batch is packed (it "
          f"has {', '.join(packed)}): packed rows are for teacher-forced "
          "training and loss; build this batch with pack=False (seqio's "
          "feature converter with pack=False, as evaluation and inference "
          "do).")

  def _features(self, batch: Batch) -> dict[str, jax.Array]:
    """The extra batch features the method's module reads (e.g. task_ids)."""
    return {k: batch[k] for k in self.module.extra_features if k in batch}

  def _check_batch(self, batch: Batch, required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in batch]
    if missing:
      raise KeyError(
          f"batch lacks {missing}; {type(self).__name__} needs the T5X "
          f"features {list(required)} (got {sorted(batch)}).")

  def _check_inputs(self, batch: Batch, what: str,
                    required: tuple[str, ...] = ()) -> Batch:
    """Checks a batch's features before the compiled call; returns it (with
    lists turned into arrays).

    Shapes and dtypes are checked always (they are known under jit too);
    token id values only for concrete arrays (numpy, or jax arrays on this
    process's devices), since a caller's jit passes tracers. Unchecked, an
    out-of-vocabulary id gives NaN scores, a negative one silently reads
    another row of the embedding table, and a float id fails deep in jax.

    Raises:
      KeyError: a `required` feature is missing.
      TypeError: the batch is not a mapping, or a feature is text or holds
        non-integer token ids.
      ValueError: a feature is not [batch, length], the batch is empty,
        features disagree on the batch size or length, an id is outside the
        vocabulary, or (encoder-decoder) the inputs hold no token at all.
    """
    if not isinstance(batch, Mapping):
      raise TypeError(
          f"{what}: the batch must be a dict of T5X features (e.g. "
          f"{{'encoder_input_tokens': ids, ...}}); got "
          f"{type(batch).__name__}.")
    self._check_batch(batch, required)
    known = (TOKEN_FEATURES + tuple(_ROW_FEATURES)
             + tuple(self.module.extra_features))
    converted = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for key in known:
      value = batch.get(key)
      if value is None:
        continue
      if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{what}: {key} is text ({value[:40]!r}), not token ids; encode "
            "it with the model's vocabulary (e.g. vocab.encode(text)) and "
            "pass an int32 array [batch, length].")
      if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        try:
          value = np.asarray(value)
        except (TypeError, ValueError) as e:
          raise TypeError(
              f"{what}: {key} is not an array ({type(value).__name__}: "
              f"{e}); pass an int32 array [batch, length].") from e
        if value.dtype.kind in "OUS":
          raise TypeError(
              f"{what}: {key} holds {value.dtype.name} values, not numbers"
              " (ragged rows or text?); pad every row to one length and pass"
              " an int32 array [batch, length].")
        converted[key] = value
      shape = tuple(value.shape)
      shapes[key] = shape
      if key in TOKEN_FEATURES or key in _ROW_FEATURES:
        if len(shape) != 2:
          fix = ("add the batch axis (np.asarray([ids]) for one example)"
                 if len(shape) == 1 else "pass one row of ids per example")
          raise ValueError(
              f"{what}: {key} has shape {shape}, but features are [batch, "
              f"length]; {fix}.")
        if key in TOKEN_FEATURES and not (
            np.issubdtype(value.dtype, np.integer)):
          raise TypeError(
              f"{what}: {key} holds {np.dtype(value.dtype).name} values, but "
              f"token ids must be integers; pass an int32 array (e.g. "
              f"ids.astype(np.int32)).")
    self._check_shapes(shapes, what)
    if converted:
      batch = {**batch, **converted}
    self._check_ids(batch, what)
    return batch

  def _check_shapes(self, shapes: Mapping[str, tuple[int, ...]],
                    what: str) -> None:
    """Every feature has the same rows, at least one, and per-token features
    the length of their tokens."""
    sizes = {k: s[0] for k, s in shapes.items() if s}
    if len(set(sizes.values())) > 1:
      listed = ", ".join(f"{k} {n}" for k, n in sizes.items())
      raise ValueError(
          f"{what}: the features disagree on the batch size (rows: {listed});"
          " give every feature one row per example.")
    for key, shape in shapes.items():
      if key not in TOKEN_FEATURES:
        continue
      if shape[0] == 0:
        raise ValueError(
            f"{what}: the batch is empty ({key} has shape {shape}); pass at "
            "least one example.")
      if shape[1] == 0:
        raise ValueError(
            f"{what}: {key} has no positions (shape {shape}); pad every row "
            "to the feature length (at least 1).")
    pairs = [("decoder_input_tokens", "decoder_target_tokens")] + [
        (k, tokens) for k, tokens in _ROW_FEATURES.items()]
    for key, other in pairs:
      if key in shapes and other in shapes and shapes[key] != shapes[other]:
        raise ValueError(
            f"{what}: {key} has shape {shapes[key]}, but {other} has "
            f"{shapes[other]}; they are per-token features of the same "
            "positions and must have the same [batch, length].")

  def _check_ids(self, batch: Batch, what: str) -> None:
    """Token ids inside the vocabulary; (encoder-decoder) inputs not all
    padding when there are targets."""
    keys, arrays = [], []
    for key in TOKEN_FEATURES:
      value = batch.get(key)
      if value is None or _is_tracer(value):
        continue
      if isinstance(value, jax.Array) and not value.is_fully_addressable:
        continue  # Other processes hold part of it; checked where built.
      keys.append(key)
      arrays.append(value)
    if not keys:
      return
    inputs = targets = None
    if "encoder_input_tokens" in self.FEATURES and (
        "encoder_input_tokens" in keys):
      targets = batch.get("decoder_loss_weights")
      if targets is None:
        targets = batch.get("decoder_target_tokens")
      if targets is not None and not _is_tracer(targets) and not (
          isinstance(targets, jax.Array)
          and not targets.is_fully_addressable):
        inputs = batch["encoder_input_tokens"]
      else:
        targets = None
    if all(isinstance(a, np.ndarray) for a in arrays + [targets]
           if a is not None):
      stats = np.array([[a.min(), a.max()] for a in arrays], np.int64)
      empty = inputs is not None and bool(
          _no_inputs(inputs, np.asarray(targets)))
    else:
      stats, empty = _token_stats(
          tuple(jnp.asarray(a) for a in arrays),
          None if inputs is None else jnp.asarray(inputs),
          None if targets is None else jnp.asarray(targets))
      stats, empty = np.asarray(stats), bool(empty)
    vocab = self.config.vocab_size
    for key, array, (low, high) in zip(keys, arrays, stats):
      if low >= 0 and high < vocab:
        continue
      ids = np.asarray(array)
      if low < 0:
        raise ValueError(
            f"{what}: {key} holds the negative id {int(ids.min())} (row "
            f"{_first_row(ids < 0)}); token ids are 0..{vocab - 1} (0 is "
            "padding).")
      raise ValueError(
          f"{what}: {key} holds the id {int(ids.max())} (row "
          f"{_first_row(ids >= vocab)}), but the model's vocabulary has "
          f"{vocab} ids (0..{vocab - 1}); encode the text with the "
          "vocabulary this base was trained with, not another model's.")
    if empty:
      raise ValueError(
          f"{what}: encoder_input_tokens {tuple(inputs.shape)} holds no "
          "tokens at all (every id is 0, padding), but the batch has "
          "targets; an encoder-decoder model reads its inputs there: pass "
          f"the encoded inputs (seqio's tasks end each with EOS, id "
          f"{self.eos_id}).")

  def abstract_params(self) -> Params:
    """Boxed ShapeDtypeStructs (logical names, no arrays) of every param."""
    shapes = {k: (1, 1) for k in ("encoder_input_tokens",
                                  "decoder_input_tokens")
              if k in self.FEATURES}
    return jax.eval_shape(lambda: self.get_initial_variables(
        jax.random.PRNGKey(0), shapes))["params"]

  @_jit_forward
  def compute_logits(self, params: Params, batch: Batch,
                     dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """float32 logits [batch, length, vocab]; dropout iff an rng is given."""
    self._check_batch(batch, self.FEATURES)
    args, kwargs = self._network_inputs(batch)
    return self.module.apply(
        {"params": params}, *args, enable_dropout=dropout_rng is not None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        **kwargs, **self._packing_features(batch), **self._features(batch))

  def _network_inputs(self, batch: Batch
                      ) -> tuple[tuple[jax.Array, ...], dict[str, Any]]:
    """The network's positional and keyword inputs from a batch's T5X
    features."""
    raise NotImplementedError

  def loss_fn(self, params: Params, batch: Batch,
              dropout_rng: Optional[jax.Array]
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted token cross-entropy (+ z-loss); dropout iff an rng is given."""
    batch = self._check_inputs(batch, "loss_fn", self.FEATURES)
    self._check_method_batch(batch)
    logits = self.compute_logits(params, batch, dropout_rng)
    stats, _ = self.token_stats(logits, batch, self.loss_normalizing_factor)
    loss, z_loss, weight_sum = (stats["loss"], stats["z_loss"],
                                stats["weight_sum"])
    metrics = {
        "loss": loss, "z_loss": z_loss, "cross_ent_loss": loss - z_loss,
        "weight_sum": weight_sum,
        "accuracy": stats["correct"] / jnp.maximum(weight_sum, 1.0),
    }
    return loss, metrics

  def token_stats(self, logits: jax.Array, batch: Batch,
                  loss_normalizing_factor: losses.LossNormalizer
                  ) -> tuple[dict[str, jax.Array], jax.Array]:
    """({loss, z_loss, weight_sum, correct}, weights [b, L]) over the
    batch's weighted targets, with the model's loss options: the one
    formula of `loss_fn` and evaluation (which sums: factor None)."""
    targets = batch["decoder_target_tokens"]
    weights = losses.maybe_weights(targets, batch.get("decoder_loss_weights"))
    loss, z_loss, weight_sum = losses.weighted_cross_entropy(
        logits, targets, weights, label_smoothing=self.label_smoothing,
        z_loss=self.z_loss, loss_normalizing_factor=loss_normalizing_factor,
        segment_ids=batch.get("decoder_segment_ids"))
    correct = jnp.sum(losses.token_accuracy(logits, targets) * weights)
    return {"loss": loss, "z_loss": z_loss, "weight_sum": weight_sum,
            "correct": correct}, weights

  def score_batch(self, params: Params, batch: Batch,
                  return_intermediates: bool = False) -> jax.Array:
    """Per-example summed log-likelihood of the weighted targets: [batch]."""
    if return_intermediates:
      raise NotImplementedError("return_intermediates is not supported yet.")
    batch = self._check_inputs(batch, "score_batch", self.FEATURES)
    self._refuse_packed(batch, "score_batch")
    self._check_method_batch(batch)
    logits = self.compute_logits(params, batch, None)
    targets = batch["decoder_target_tokens"]
    weights = losses.maybe_weights(targets, batch.get("decoder_loss_weights"))
    return jnp.sum(losses.token_log_likelihood(logits, targets) * weights, -1)

  def predict_batch(self, params: Params, batch: Batch,
                    rng: Optional[jax.Array] = None) -> jax.Array:
    return self.predict_batch_with_aux(params, batch, rng)[0]

  def predict_batch_with_aux(
      self, params: Params, batch: Batch, rng: Optional[jax.Array] = None,
      decoder_params: Optional[Mapping[str, Any]] = None,
      return_all_decodes: bool = False, num_decodes: int = 1,
      prompt_with_targets: bool = False, *,
      budgets: Optional[jax.Array] = None,
      temperatures: Optional[jax.Array] = None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Decodes; returns (tokens [batch, length], {"scores": [batch]}).

    T5X's signature. `decoder_params` overrides `decoding_options` fields
    (temperature, topk, topp, beam_size, alpha) for this call. As in T5X,
    `num_decodes` is the beam size under beam search (temperature 0 with
    num_decodes > 1 turns beam search on) and the number of samples when
    sampling. With `return_all_decodes` the outputs are [batch, num_decodes,
    length] and [batch, num_decodes], best first; otherwise the best one.
    Beam scores are length-penalised log-probs; sample scores are summed
    log-probs.

    Beyond T5X, for callers that batch unrelated requests (a server), where
    each row must decode as it would alone:
      rng: one key, or one key per example ([batch] keys; see
        `decoding.is_key_batch`), so a row's samples do not depend on the
        other rows.
      budgets: int [batch], the most tokens each example may produce (at
        most the output width; for decoder-only models also at most the
        width left after its prompt), so rows of different lengths share
        one output width and stop where they would alone.
      temperatures: float [batch] > 0, each example's sampling temperature
        (overrides `temperature`; not with beam search).
    """
    if num_decodes < 1:
      raise ValueError(f"num_decodes={num_decodes} must be >= 1.")
    batch = self._check_inputs(batch, "predict_batch")
    self._refuse_packed(batch, "predict_batch")
    self._check_method_batch(batch)
    options = dataclasses.replace(self.decoding_options,
                                  **dict(decoder_params or {}))
    if num_decodes > 1 and options.temperature == 0.0:
      options = dataclasses.replace(options, beam_size=num_decodes)
    elif options.beam_size > 1:
      num_decodes = options.beam_size
    if temperatures is not None and options.beam_size > 1:
      raise ValueError(
          f"temperatures with beam_size={options.beam_size}: beam search is "
          "deterministic; pass temperatures only when sampling.")
    tokens, scores = self._predict(params, batch, rng, options=options,
                                   prompt_with_targets=prompt_with_targets,
                                   num_decodes=num_decodes, budgets=budgets,
                                   temperatures=temperatures)
    if return_all_decodes:
      return tokens, {"scores": scores}
    return tokens[:, 0], {"scores": scores[:, 0]}

  def _predict(self, params, batch, rng, options, prompt_with_targets,
               num_decodes, budgets=None, temperatures=None):
    """Returns tokens [batch, num_decodes, length], scores [batch, n]."""
    raise NotImplementedError

  def _decode(self, make_step, first_logits, cache, max_decode_len, budgets,
              rng, opts: DecodingOptions, num_decodes: int,
              temperatures: Optional[jax.Array] = None):
    """Beam search or sampling of `num_decodes` per example.

    `make_step(n)` builds the step function with its closed-over
    per-example tensors tiled n times (`decoding.tile_beams`), since the
    decoding loops run over [batch * n] rows. Per-example keys are split
    into `num_decodes` keys each (one key per example is kept as it is, so
    a row samples as it would alone).
    """
    batch = first_logits.shape[0]
    if opts.beam_size > 1:
      return decoding.beam_search(
          make_step(opts.beam_size), first_logits, cache,
          beam_size=opts.beam_size, max_decode_len=max_decode_len,
          eos_id=self.eos_id, alpha=opts.alpha, budgets=budgets)
    tile = lambda tree: decoding.tile_beams(tree, num_decodes)
    if (rng is not None and num_decodes > 1
        and decoding.is_key_batch(rng)):
      rng = jax.vmap(lambda key: jax.random.split(key, num_decodes))(rng)
      rng = rng.reshape((batch * num_decodes,) + rng.shape[2:])
    tokens, scores = decoding.temperature_sample(
        make_step(num_decodes), tile(first_logits), tile(cache),
        max_decode_len=max_decode_len, eos_id=self.eos_id,
        budgets=None if budgets is None else tile(budgets), rng=rng,
        temperature=(opts.temperature if temperatures is None
                     else tile(jnp.asarray(temperatures, jnp.float32))),
        topk=opts.topk, topp=opts.topp)
    tokens = tokens.reshape(batch, num_decodes, max_decode_len)
    scores = scores.reshape(batch, num_decodes)
    order = jnp.argsort(-scores, axis=1)
    return (jnp.take_along_axis(tokens, order[:, :, None], axis=1),
            jnp.take_along_axis(scores, order, axis=1))

  def _init_cache(self, apply_fn, *args, **kwargs) -> Any:
    """Zeros shaped like the 'cache' collection a decode call creates."""
    shapes = jax.eval_shape(
        lambda: apply_fn(*args, decode=True, mutable=["cache"], **kwargs)[1])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])



class EncoderDecoderModel(BaseModel):
  """T5-style model on encoder/decoder T5X features."""

  FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
              "decoder_target_tokens")
  PACKING_FEATURES = transformer.PACKING_FEATURES

  def get_initial_variables(self, rng: jax.Array,
                            input_shapes: Mapping[str, tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None):
    """Boxed variables (params carry logical axis names)."""
    del input_types
    return self.module.init(
        rng, jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32),
        jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32))

  def _network_inputs(self, batch):
    return (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch["decoder_target_tokens"]), {}

  @_jit_predict
  def _predict(self, params, batch, rng, options, prompt_with_targets,
               num_decodes, budgets=None, temperatures=None):
    """Decodes up to len(decoder_target_tokens) tokens after BOS (id 0)
    (or each example's budget)."""
    if prompt_with_targets:
      raise ValueError("prompt_with_targets applies to decoder-only models; "
                       "an encoder-decoder's outputs hold no prompt.")
    self._check_batch(batch, ("encoder_input_tokens",))
    inputs = batch["encoder_input_tokens"]
    target_shape = batch.get("decoder_target_tokens",
                             batch.get("decoder_input_tokens"))
    if target_shape is None:
      raise KeyError("predict_batch needs decoder_target_tokens (or "
                     "decoder_input_tokens) to know the output length.")
    batch_size, max_len = target_shape.shape
    features = self._features(batch)
    apply = self.module.apply
    encoded = apply({"params": params}, inputs, method="encode", **features)
    cache = self._init_cache(
        apply, {"params": params}, encoded, inputs,
        jnp.zeros((batch_size, max_len), jnp.int32), method="decode",
        **features)

    def make_step(tile):
      tiled_encoded, tiled_inputs, tiled_features = decoding.tile_beams(
          (encoded, inputs, features), tile)
      # What every step reads instead of the encoder output, computed once
      # per call after tiling (T5: the cross-attention keys/values; MSP:
      # [decoding prompt ; source states], layers first).
      memory = apply({"params": params}, tiled_encoded,
                     method="decoding_memory")

      def step(tokens, cache):
        logits, state = apply({"params": params, "cache": cache}, memory,
                              tiled_inputs, tokens, decode=True,
                              mutable=["cache"], method="decode",
                              **tiled_features)
        return logits[:, -1], state["cache"]
      return step

    # T5 starts from 0; MSP from its separator token.
    start = self.module.decoder_start_token_id
    first_logits, cache = make_step(1)(
        jnp.full((batch_size, 1), start, jnp.int32), cache)
    if budgets is not None:
      budgets = jnp.minimum(jnp.asarray(budgets, jnp.int32), max_len)
    return self._decode(make_step, first_logits, cache, max_len, budgets, rng,
                        options, num_decodes, temperatures)


class DecoderOnlyModel(BaseModel):
  """Decoder-only LM (T5X-style or GPT-2 family) on T5X decoder features."""

  FEATURES = ("decoder_input_tokens", "decoder_target_tokens")
  PACKING_FEATURES = ("decoder_segment_ids", "decoder_positions")

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    return self.module.init(
        rng, jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32))

  def _network_inputs(self, batch):
    return (batch["decoder_input_tokens"],), {
        "decoder_causal_attention": batch.get("decoder_causal_attention")}

  @_jit_predict
  def _predict(self, params, batch, rng, options, prompt_with_targets,
               num_decodes, budgets=None, temperatures=None):
    """Continues each prompt up to the feature length (or its budget).

    The prompt of each example is where `decoder_causal_attention` is 1
    (T5X's convention); outputs [batch, length] hold only the new tokens, or
    with `prompt_with_targets` the prompt followed by them.
    """
    self._check_batch(batch, ("decoder_input_tokens",
                              "decoder_causal_attention"))
    region = batch["decoder_causal_attention"].astype(jnp.int32)
    prompt_lengths = jnp.sum(region, axis=-1)
    prompts = batch["decoder_input_tokens"] * region
    batch_size, length = prompts.shape
    features = self._features(batch)
    apply = self.module.apply
    cache = self._init_cache(apply, {"params": params}, prompts, **features)

    # Prefill every prompt at once; each cache index then sits right after
    # its own prompt, so examples of different lengths decode side by side.
    # Only the last prompt token's logits predict the first output token.
    last = jnp.maximum(prompt_lengths - 1, 0)
    logits, state = apply(
        {"params": params, "cache": cache}, prompts,
        decoder_causal_attention=region, decode=True,
        cache_advance=prompt_lengths, logits_at=last, mutable=["cache"],
        **features)
    first_logits = logits[:, 0]

    def make_step(tile):
      tiled = decoding.tile_beams(features, tile)

      def step(tokens, cache):
        logits, state = apply({"params": params, "cache": cache}, tokens,
                              mutable=["cache"], method="decode_step",
                              **tiled)
        return logits[:, -1], state["cache"]
      return step

    room = length - prompt_lengths
    if budgets is not None:
      room = jnp.minimum(jnp.asarray(budgets, jnp.int32), room)
    tokens, scores = self._decode(make_step, first_logits, state["cache"],
                                  length, room, rng, options, num_decodes,
                                  temperatures)
    if prompt_with_targets:
      # Shift each row's new tokens right by its prompt length.
      index = (jnp.arange(length)[None, None, :]
               - prompt_lengths[:, None, None])
      shifted = jnp.take_along_axis(tokens, jnp.clip(index, 0, length - 1), 2)
      tokens = jnp.where(index < 0, prompts[:, None, :], shifted)
    return tokens, scores


def build_model(config: TransformerConfig, method: Any = None,
                **kwargs) -> BaseModel:
  """The T5X-interface model for a config, with a method attached or not."""
  if method is not None:
    return method.build_model(config, **kwargs)
  return wrapper_class(config)(config, **kwargs)


def wrapper_class(config: TransformerConfig) -> type[BaseModel]:
  """The wrapper whose features match the architecture's batches."""
  if config.architecture == "encoder_decoder":
    return EncoderDecoderModel
  return DecoderOnlyModel
