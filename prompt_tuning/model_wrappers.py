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
