"""Batched mixed-task compute for the server: requests of any tasks in one
padded batch through one compiled program.

The model is the frozen base with `MultiTaskPrompt(num_tasks=capacity,
mode="task_only", length=P)`: its parameter `prompt/tasks` [capacity, P, H]
is fed the bank's table at every call and each row picks its task's prompt
by the batch feature `task_ids`. The table is an input of the compiled
program, never a constant, so adding, replacing or removing a task changes
data only and compiles nothing.

Padding goes to buckets (batch size, input length, decode length), so each
bucket compiles once; `warmup` compiles them ahead. Requests that can share
a compiled program share a `group_key`: the kind, the decoding options that
are static in the program (mode, beam size and alpha, top-k, top-p) and the
two length buckets. Everything else is per example: the task, the length of
the input, `max_decode_length` (a per-row budget), the sampling temperature
and seed (per-row PRNG keys).

Each result equals what `model.predict_batch_with_aux` / `score_batch`
gives for that request alone (a batch of one, unpadded, its own
`max_decode_length` as the output width, `rng=jax.random.PRNGKey(seed)`):
padding never reaches a real row (inputs are right-padded, masks come from
lengths), per-row budgets stop every row where it would stop alone (so its
tokens and summed or length-penalised score are the alone run's), and each
row samples with its own key over a batch of one.

How a request maps to features (`request_features` builds the unpadded
batch of one; the engine pads it):
  encoder-decoder generate: encoder_input_tokens = inputs (id 0 is padding,
    so inputs may not hold it); decode up to max_decode_length tokens.
  decoder-only generate: decoder_input_tokens = inputs then max_decode_length
    zeros, decoder_causal_attention = 1 on the inputs; the output is the
    continuation.
  encoder-decoder score: log p(targets | inputs), teacher-forced, every
    target weighted.
  decoder-only score: the sequence inputs + targets, shifted by one
    (decoder_input_tokens = seq[:-1], decoder_target_tokens = seq[1:]),
    decoder_causal_attention = 1 on the inputs, weight 1 on the positions
    predicting the targets: the log-likelihood of the targets as a
    continuation, the same conditioning `generate` decodes with.
"""

from __future__ import annotations

import bisect
import dataclasses
import secrets
import threading
from typing import (Any, Iterable, Mapping, NamedTuple, Optional, Sequence,
                    Union)

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning import model_wrappers
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints import shipped
from prompt_tuning.methods.multitask import MultiTaskPrompt
from prompt_tuning.serving import bank as bank_lib

GREEDY, BEAM, SAMPLING = "greedy", "beam", "sampling"
MODES = (GREEDY, BEAM, SAMPLING)
GENERATE, SCORE = "generate", "score"
# Seeds are int32 so a row's key is jax.random.PRNGKey(seed) computed in
# the compiled program, bit-equal to PRNGKey(seed) on the host.
MAX_SEED = 2**31 - 1

Ids = Union[Sequence[int], np.ndarray, str]


class RequestError(ValueError):
  """A request refused before anything is computed (the HTTP layer answers
  4xx with its message); other requests of the same call still run."""


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How `generate` picks tokens.

  mode "greedy"; "beam" with `beam_size` and T5X's brevity penalty exponent
  `alpha` (scores are sum log p / ((5 + length) / 6) ** alpha); "sampling"
  with `temperature` > 0, `top_k` (0: off), `top_p` (0: off; else the
  smallest set of tokens with that mass) and `seed` (int in [0, 2**31 - 1];
  None draws one, returned in the result). Fields of other modes are
  ignored. Use the constructors: Decoding.greedy(), Decoding.beam(4, 0.6),
  Decoding.sampling(0.8, top_k=40, seed=1).
  """

  mode: str = GREEDY
  beam_size: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 0.0
  seed: Optional[int] = None

  @classmethod
  def greedy(cls) -> "Decoding":
    return cls(GREEDY)

  @classmethod
  def beam(cls, size: int = 4, alpha: float = 0.6) -> "Decoding":
    return cls(BEAM, beam_size=size, alpha=alpha)

  @classmethod
  def sampling(cls, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 0.0, seed: Optional[int] = None) -> "Decoding":
    return cls(SAMPLING, temperature=temperature, top_k=top_k, top_p=top_p,
               seed=seed)


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
  """Continue `input_ids` (token ids, or text when the engine has a
  vocabulary) with task `task`'s prompt, up to `max_decode_length` tokens."""

  task: str
  input_ids: Ids
  max_decode_length: int
  decoding: Decoding = Decoding()


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
  """log p(target_ids | input_ids) under task `task`'s prompt (ids, or
  text when the engine has a vocabulary)."""

  task: str
  input_ids: Ids
  target_ids: Ids


@dataclasses.dataclass(frozen=True)
class GenerateResult:
  """The produced tokens (up to and including EOS when one was produced,
  at most max_decode_length), their text without EOS (None without a
  vocabulary), the score (summed log p; beam: length-penalised) and the
  seed a sampled request used."""

  output_ids: list[int]
  text: Optional[str]
  score: float
  seed: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ScoreResult:
  log_likelihood: float


class GroupKey(NamedTuple):
  """What requests sharing one compiled call must agree on.

  kind "generate" or "score"; mode the decoding mode ("score" for scores);
  beam_size and alpha (beam only, else 0), top_k and top_p (sampling only,
  else 0); length the input length bucket; decode the decode length bucket
  (generate) or target length bucket (score). The batch size bucket is
  chosen per call from how many requests it holds.
  """

  kind: str
  mode: str
  beam_size: int
  alpha: float
  top_k: int
  top_p: float
  length: int
  decode: int


@dataclasses.dataclass
class _Prepared:
  """A validated request: ids as int32 arrays, its row of the table."""

  slot: int
  inputs: np.ndarray
  key: GroupKey
  targets: Optional[np.ndarray] = None
  max_decode: int = 0
  temperature: float = 1.0
  seed: Optional[int] = None


# ----------------------------------------------------------------------------
# Counting compilations: jax.monitoring reports every XLA compilation (or
# persistent-cache load) of a jitted program in the thread that asked for it,
# so the engine counts those that happen while one of its own calls runs.

_BACKEND_COMPILE = "backend_compile_duration"
_active = threading.local()
_listening: Optional[bool] = None
_listen_lock = threading.Lock()


def _on_event_duration(event: str, duration: float, **kwargs: Any) -> None:
  del duration, kwargs
  if event.endswith(_BACKEND_COMPILE):
    engine = getattr(_active, "engine", None)
    if engine is not None:
      engine._compiles += 1  # pylint: disable=protected-access


def _listen() -> bool:
  """Registers the process-wide listener once; False where this jax has no
  monitoring events (the engine then counts distinct signatures)."""
  global _listening
  with _listen_lock:
    if _listening is None:
      register = getattr(jax.monitoring,
                         "register_event_duration_secs_listener", None)
      if register is not None:
        register(_on_event_duration)
      _listening = register is not None
    return _listening


class _Counting:
  """Attributes the compilations of the calls inside to `engine`."""

  def __init__(self, engine: "Engine"):
    self.engine = engine

  def __enter__(self):
    self.previous = getattr(_active, "engine", None)
    _active.engine = self.engine

  def __exit__(self, *exc):
    _active.engine = self.previous


# ----------------------------------------------------------------------------
# Features of one request (unpadded) and of a padded batch.


def request_features(architecture: str, kind: str, inputs: Sequence[int],
                     *, max_decode_length: int = 0,
                     targets: Sequence[int] = (), task_id: int = 0
                     ) -> dict[str, np.ndarray]:
  """The T5X features of one request alone (a batch of one, unpadded): what
  the engine's padded batch must reproduce row by row (module doc)."""
  return _features(architecture, kind, [np.asarray(inputs, np.int32)],
                   [np.asarray(targets, np.int32)], [task_id], 1,
                   len(inputs), max_decode_length if kind == GENERATE
                   else len(targets), exact=True)


def _features(architecture: str, kind: str, inputs: list[np.ndarray],
              targets: list[np.ndarray], task_ids: Sequence[int], batch: int,
              length: int, decode: int, exact: bool = False
              ) -> dict[str, np.ndarray]:
  """int32 features [batch, ...] with len(inputs) real rows then padding
  rows (no tokens, task 0). length / decode: the input and decode (or
  target) widths. exact: a lone decoder-only score row is its sequence
  minus one token, not length + decode."""
  ids = np.zeros((batch,), np.int32)
  ids[:len(task_ids)] = task_ids
  if architecture == "encoder_decoder":
    enc = np.zeros((batch, length), np.int32)
    for i, row in enumerate(inputs):
      enc[i, :len(row)] = row
    if kind == GENERATE:
      return {"encoder_input_tokens": enc,
              "decoder_target_tokens": np.zeros((batch, decode), np.int32),
              "task_ids": ids}
    tgt = np.zeros((batch, decode), np.int32)
    weights = np.zeros((batch, decode), np.float32)
    for i, row in enumerate(targets):
      tgt[i, :len(row)] = row
      weights[i, :len(row)] = 1.0
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    dec_in[:, 1:] *= (weights[:, 1:] > 0)  # zeros after each target
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": weights,
            "task_ids": ids}
  if kind == GENERATE:
    width = length + decode
    tokens = np.zeros((batch, width), np.int32)
    region = np.zeros((batch, width), np.int32)
    for i, row in enumerate(inputs):
      tokens[i, :len(row)] = row
      region[i, :len(row)] = 1
    return {"decoder_input_tokens": tokens,
            "decoder_causal_attention": region, "task_ids": ids}
  width = length + decode - 1 if exact else length + decode
  dec_in = np.zeros((batch, width), np.int32)
  tgt = np.zeros((batch, width), np.int32)
  region = np.zeros((batch, width), np.int32)
  weights = np.zeros((batch, width), np.float32)
  for i, (row, target) in enumerate(zip(inputs, targets)):
    seq = np.concatenate([row, target])
    n = len(seq) - 1
    dec_in[i, :n] = seq[:-1]
    tgt[i, :n] = seq[1:]
    region[i, :len(row)] = 1
    weights[i, len(row) - 1:n] = 1.0
  return {"decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
          "decoder_causal_attention": region, "decoder_loss_weights": weights,
          "task_ids": ids}


def _buckets(name: str, values: Iterable[int]) -> tuple[int, ...]:
  values = tuple(values)
  if (not values or any(not isinstance(v, (int, np.integer)) or v < 1
                        for v in values)):
    raise ValueError(f"{name}={values!r} must be a non-empty sequence of "
                     "ints >= 1.")
  return tuple(sorted(set(int(v) for v in values)))


def _bucket(buckets: tuple[int, ...], n: int) -> int:
  return buckets[bisect.bisect_left(buckets, n)]


class Engine:
  """Mixed-task generate and score over one frozen model and a prompt bank.

  Args:
    model: built with `pt.MultiTaskPrompt(num_tasks=bank.capacity,
      mode="task_only", length=P)` (`Engine.load` does this).
    params: its params (or {"params": ...}); `prompt/tasks` is replaced by
      the bank's table at every call.
    bank: the prompts served (`PromptBank`).
    vocabulary: for text inputs and outputs: an object with
      encode(str) -> list[int] and decode(list[int]) -> str, or the name of
      a `prompt_tuning.tasks.vocabularies` vocabulary (loaded, with seqio,
      on first use). None: token ids only, results carry no text.
    length_buckets: input lengths batches are padded to (the largest is the
      longest input accepted).
    batch_buckets: batch sizes batches are padded to (the largest is the
      most requests one compiled call runs; larger calls run in chunks).
    decode_buckets: decode (and score target) lengths padded to (the
      largest is the largest max_decode_length accepted).
    max_beam_size: the largest beam accepted.
  """

  def __init__(self, model: model_wrappers.BaseModel, params: Any,
               bank: bank_lib.PromptBank, *, vocabulary: Any = None,
               length_buckets: Sequence[int] = (32, 64, 128, 256),
               batch_buckets: Sequence[int] = (1, 2, 4, 8, 16, 32),
               decode_buckets: Sequence[int] = (16, 32, 64, 128),
               max_beam_size: int = 8):
    self.model, self.bank, self.config = model, bank, model.config
    self.architecture = self.config.architecture
    self.length_buckets = _buckets("length_buckets", length_buckets)
    self.batch_buckets = _buckets("batch_buckets", batch_buckets)
    self.decode_buckets = _buckets("decode_buckets", decode_buckets)
    if max_beam_size < 1:
      raise ValueError(f"max_beam_size={max_beam_size} must be >= 1.")
    self.max_beam_size = int(max_beam_size)
    self._check_model(bank)
    if isinstance(params, Mapping) and "params" in params:
      params = params["params"]
    params = nn.meta.unbox(params)
    self._base = {k: v for k, v in params.items() if k != "prompt"}
    current = params.get("prompt", {}).get("tasks")
    expected = (bank.capacity,) + bank.shape
    if current is not None and tuple(current.shape) != expected:
      raise ValueError(
          f"params['prompt']['tasks'] is {tuple(current.shape)}, but the bank "
          f"is {expected}; build the model for this bank.")
    if isinstance(current, jax.Array):
      bank.place(current.sharding)  # Where the compiled program wants it.
    self._vocabulary = None if isinstance(vocabulary, str) else vocabulary
    self._vocabulary_name = vocabulary if isinstance(vocabulary, str) else None
    self._lock = threading.Lock()
    self._compiles = 0
    self._signatures: set[Any] = set()
    self._monitored = _listen()
    self._generate_jit = jax.jit(self._generate_program,
                                 static_argnames=("options", "width"))
    self._score_jit = jax.jit(self._score_program)

  def _check_model(self, bank: bank_lib.PromptBank) -> None:
    method, config = self.model.method, self.config
    fix = (f"build it with pt.MultiTaskPrompt(num_tasks={bank.capacity}, "
           f"mode='task_only', length={bank.length}) (Engine.load does)")
    if (not isinstance(method, MultiTaskPrompt) or method.mode != "task_only"
        or method.prompts is not None
        or method.task_token_offset is not None):
      raise ValueError(f"the engine's model has method {method!r}; {fix}.")
    if method.num_tasks != bank.capacity or method.length != bank.length:
      raise ValueError(
          f"the model's MultiTaskPrompt has num_tasks={method.num_tasks}, "
          f"length={method.length}, but the bank holds {bank.capacity} rows "
          f"of [P, H] = {bank.shape}; {fix}.")
    if config.emb_dim != bank.width:
      raise ValueError(f"the bank's prompts are [P, H] = {bank.shape}, but "
                       f"the model's embeddings are {config.emb_dim} wide; "
                       "serve prompts trained on this base.")
    if (self.architecture == "decoder_only"
        and config.position_embedding == "absolute"):
      needed = (bank.length + self.length_buckets[-1]
                + self.decode_buckets[-1])
      if needed > config.max_position_embeddings:
        raise ValueError(
            f"the prompt ({bank.length}) + the largest length bucket "
            f"({self.length_buckets[-1]}) + the largest decode bucket "
            f"({self.decode_buckets[-1]}) take {needed} positions, more than "
            f"the model's max_position_embeddings="
            f"{config.max_position_embeddings}; use smaller buckets.")

  @classmethod
  def load(cls, base: str, prompts_dir: Optional[str] = None, *,
           capacity: int = 64, prompt_length: Optional[int] = None,
           combine: str = "prefix", vocabulary: Any = "auto",
           config: Any = None, mesh: Any = None,
           param_dtype: str = "float32",
           capacity_setting: str = "capacity",
           length_buckets: Sequence[int] = (32, 64, 128, 256),
           batch_buckets: Sequence[int] = (1, 2, 4, 8, 16, 32),
           decode_buckets: Sequence[int] = (16, 32, 64, 128),
           max_beam_size: int = 8, **model_kwargs) -> "Engine":
    """Loads the frozen base once and the prompts of `prompts_dir`.

    Args:
      base: a shipped base's name or a T5X, Orbax or Hugging Face
        checkpoint path (`pt.load_pretrained`).
      prompts_dir: one trained prompt per task (`bank.load_prompt_dir`);
        None starts with an empty bank of `prompt_length` rows.
      capacity: the bank's rows: the most tasks served at once.
      combine: where the prompts go, as they were trained ("prefix").
      vocabulary: "auto" (the shipped base's vocabulary, loaded on first
        text use; none for other bases), None, a vocabulary object or name.
      config, mesh, param_dtype, model_kwargs: as `pt.load_pretrained`.
      capacity_setting: what a full bank's error tells users to raise.
      Other arguments: as `Engine`.
    """
    prompts = {} if prompts_dir is None else bank_lib.load_prompt_dir(
        prompts_dir)
    if prompts:
      length = next(iter(prompts.values())).shape[0]
      if prompt_length not in (None, length):
        raise ValueError(f"prompt_length={prompt_length}, but the prompts "
                         f"in {prompts_dir!r} have {length} rows.")
    elif prompt_length is None:
      raise ValueError("an empty bank needs prompt_length (P); pass "
                       "prompts_dir or prompt_length.")
    else:
      length = prompt_length
    if len(prompts) > capacity:
      raise ValueError(
          f"{prompts_dir!r} holds {len(prompts)} prompts, more than "
          f"capacity={capacity}; raise {capacity_setting} to at least "
          f"{len(prompts)}.")
    # Where the width is known without reading the base (a shipped base, a
    # given config), prompts of another width fail before it loads.
    known = loader.resolve_config(config)
    if known is None and shipped.find(base) is not None:
      known = shipped.find(base).config
    for name, array in prompts.items():
      if known is not None and array.shape[1] != known.emb_dim:
        raise ValueError(
            f"task {name!r} has a prompt of shape {array.shape}, but the "
            f"model's embeddings are {known.emb_dim} wide; serve prompts "
            f"trained on {base!r}.")
    method = MultiTaskPrompt(num_tasks=capacity, mode="task_only",
                             length=length, combine=combine,
                             task_initializer=jax.nn.initializers.zeros)
    model, variables = loader.load_pretrained(
        base, config=config, method=method, mesh=mesh,
        param_dtype=param_dtype, **model_kwargs)
    bank = bank_lib.PromptBank(capacity, length, model.config.emb_dim,
                               capacity_setting=capacity_setting)
    for name, array in prompts.items():
      bank.add(name, array)
    if vocabulary == "auto":
      found = shipped.find(base)
      vocabulary = None if found is None else found.vocabulary
    return cls(model, variables, bank, vocabulary=vocabulary,
               length_buckets=length_buckets, batch_buckets=batch_buckets,
               decode_buckets=decode_buckets, max_beam_size=max_beam_size)

  # --------------------------------------------------------------------------
  # Vocabulary.

  @property
  def vocabulary(self) -> Any:
    """The vocabulary object (a named one is loaded here, once), or None."""
    if self._vocabulary is None and self._vocabulary_name is not None:
      with self._lock:
        if self._vocabulary is None:
          # Imported here: the tasks package imports seqio and TensorFlow.
          # pylint: disable-next=g-import-not-at-top
          from prompt_tuning.tasks import vocabularies
          self._vocabulary = vocabularies.named_vocabulary(
              self._vocabulary_name)
    return self._vocabulary

  @property
  def has_vocabulary(self) -> bool:
    return self._vocabulary is not None or self._vocabulary_name is not None

  def encode(self, text: str) -> list[int]:
    if not self.has_vocabulary:
      raise RequestError(
          "text was given but this engine has no vocabulary; send token ids, "
          "or start it with a vocabulary (Engine(vocabulary=...), or a "
          "shipped base with vocabulary='auto').")
    return [int(i) for i in self.vocabulary.encode(text)]

  def decode(self, ids: Sequence[int]) -> Optional[str]:
    """Text of `ids` without a trailing EOS; None without a vocabulary."""
    if not self.has_vocabulary:
      return None
    ids = list(ids)
    if ids and ids[-1] == self.model.eos_id:
      ids = ids[:-1]
    return self.vocabulary.decode(ids)

  # --------------------------------------------------------------------------
  # Validation.

  def _ids(self, value: Any, what: str, *, allow_zero: bool) -> np.ndarray:
    if isinstance(value, str):
      value = self.encode(value)
    try:
      array = np.asarray(value)
    except (TypeError, ValueError) as e:
      raise RequestError(f"{what} must be token ids (ints) or text.") from e
    if array.ndim != 1 or (array.size and not (
        np.issubdtype(array.dtype, np.integer) and array.dtype != bool)):
      raise RequestError(f"{what} must be a flat list of int token ids; got "
                         f"{np.asarray(value).dtype} of shape {array.shape}.")
    if array.size == 0:
      raise RequestError(f"{what} is empty; give at least one token.")
    vocab = self.config.vocab_size
    bad = array[(array < 0) | (array >= vocab)]
    if bad.size:
      raise RequestError(
          f"{what} holds ids {sorted(set(bad.tolist()))[:5]} outside the "
          f"model's vocabulary [0, {vocab}).")
    if not allow_zero and np.any(array == 0):
      raise RequestError(
          f"{what} holds id 0, the padding id of encoder-decoder inputs and "
          "targets (the model would drop everything after it); remove it.")
    return array.astype(np.int32)

  def _slot(self, task: Any, slots: Mapping[str, int]) -> int:
    if not isinstance(task, str) or task not in slots:
      known = ", ".join(repr(n) for n in sorted(slots)) or "none"
      raise RequestError(f"unknown task {task!r}; the server has: {known}.")
    return slots[task]

  def _length_bucket(self, n: int, what: str) -> int:
    if n > self.length_buckets[-1]:
      raise RequestError(
          f"{what} has {n} tokens, more than the largest length bucket "
          f"({self.length_buckets[-1]}); shorten it.")
    return _bucket(self.length_buckets, n)

  def _decoding_key(self, decoding: Any) -> tuple[str, int, float, int, float]:
    """(mode, beam_size, alpha, top_k, top_p) after checking the options."""
    if not isinstance(decoding, Decoding):
      raise RequestError(f"decoding must be a Decoding; got "
                         f"{type(decoding).__name__}.")
    mode = decoding.mode
    if mode == GREEDY:
      return (GREEDY, 0, 0.0, 0, 0.0)
    if mode == BEAM:
      size, alpha = decoding.beam_size, decoding.alpha
      if (not isinstance(size, (int, np.integer)) or isinstance(size, bool)
          or not 1 <= size <= self.max_beam_size):
        raise RequestError(f"beam size {size!r} must be an int in [1, "
                           f"{self.max_beam_size}].")
      if not _real(alpha) or alpha < 0:
        raise RequestError(f"beam alpha {alpha!r} must be a finite number "
                           ">= 0 (0: no length normalisation).")
      return (BEAM, int(size), float(alpha), 0, 0.0)
    if mode == SAMPLING:
      t, k, p = decoding.temperature, decoding.top_k, decoding.top_p
      if not _real(t) or t <= 0:
        raise RequestError(f"temperature {t!r} must be a finite number > 0 "
                           "(use greedy decoding for temperature 0).")
      if (not isinstance(k, (int, np.integer)) or isinstance(k, bool)
          or not 0 <= k <= self.config.vocab_size):
        raise RequestError(f"top_k {k!r} must be an int in [0, "
                           f"{self.config.vocab_size}] (0: off).")
      if not _real(p) or not 0.0 <= p <= 1.0:
        raise RequestError(f"top_p {p!r} must be a number in [0, 1] (0: "
                           "off).")
      seed = decoding.seed
      if seed is not None and (
          not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)
          or not 0 <= seed <= MAX_SEED):
        raise RequestError(f"seed {seed!r} must be an int in [0, {MAX_SEED}]"
                           " (or None for a random one).")
      return (SAMPLING, 0, 0.0, int(k), float(p))
    raise RequestError(f"decoding mode {mode!r} is not one of {MODES}.")

  def _prepare(self, request: Any, slots: Mapping[str, int]) -> _Prepared:
    """The validated request; RequestError with one clear message."""
    if isinstance(request, GenerateRequest):
      slot = self._slot(request.task, slots)
      mode, size, alpha, k, p = self._decoding_key(request.decoding)
      m = request.max_decode_length
      if (not isinstance(m, (int, np.integer)) or isinstance(m, bool)
          or not 1 <= m <= self.decode_buckets[-1]):
        raise RequestError(
            f"max_decode_length {m!r} must be an int in [1, "
            f"{self.decode_buckets[-1]}] (the largest decode bucket).")
      inputs = self._ids(request.input_ids, "the input",
                         allow_zero=self.architecture != "encoder_decoder")
      key = GroupKey(GENERATE, mode, size, alpha, k, p,
                     self._length_bucket(len(inputs), "the input"),
                     _bucket(self.decode_buckets, int(m)))
      decoding = request.decoding
      seed = None
      if mode == SAMPLING:
        seed = (secrets.randbelow(MAX_SEED + 1) if decoding.seed is None
                else int(decoding.seed))
      return _Prepared(slot, inputs, key, max_decode=int(m),
                       temperature=float(decoding.temperature), seed=seed)
    if isinstance(request, ScoreRequest):
      slot = self._slot(request.task, slots)
      allow_zero = self.architecture != "encoder_decoder"
      inputs = self._ids(request.input_ids, "the input",
                         allow_zero=allow_zero)
      targets = self._ids(request.target_ids, "the target",
                          allow_zero=allow_zero)
      if len(targets) > self.decode_buckets[-1]:
        raise RequestError(
            f"the target has {len(targets)} tokens, more than the largest "
            f"decode bucket ({self.decode_buckets[-1]}); shorten it.")
      key = GroupKey(SCORE, SCORE, 0, 0.0, 0, 0.0,
                     self._length_bucket(len(inputs), "the input"),
                     _bucket(self.decode_buckets, len(targets)))
      return _Prepared(slot, inputs, key, targets=targets)
    raise RequestError(f"a request must be a GenerateRequest or "
                       f"ScoreRequest; got {type(request).__name__}.")

  def validate(self, request: Any) -> None:
    """Raises the RequestError `generate` / `score` would give it now."""
    self._prepare(request, self.bank.snapshot().slots)

  def group_key(self, request: Any) -> GroupKey:
    """The key requests must share to run in one call (see GroupKey);
    validates the request (RequestError)."""
    return self._prepare(request, self.bank.snapshot().slots).key

  def groups(self, kind: str = GENERATE,
             decoding: Decoding = Decoding()) -> list[GroupKey]:
    """Every group of `kind` (with `decoding` for generate) over all length
    and decode buckets: what `warmup` compiles."""
    if kind == SCORE:
      mode = (SCORE, 0, 0.0, 0, 0.0)
    elif kind == GENERATE:
      mode = self._decoding_key(decoding)
    else:
      raise ValueError(f"kind={kind!r}; choose {GENERATE!r} or {SCORE!r}.")
    return [GroupKey(kind, *mode, length, decode)
            for length in self.length_buckets
            for decode in self.decode_buckets]

  # --------------------------------------------------------------------------
  # Compiled programs.

  @property
  def compiles(self) -> int:
    """XLA compilations the engine's calls caused: jax.monitoring's
    backend-compile events fired while they ran (a program loaded from
    JAX's persistent compilation cache counts too); where this jax has no
    such events, the distinct (group, batch size) programs run."""
    return self._compiles if self._monitored else len(self._signatures)

  def _params(self, base: Any, table: jax.Array) -> Any:
    return {**base, "prompt": {"tasks": table}}

  def _generate_program(self, base, table, batch, budgets, seeds,
                        temperatures, *, options, width):
    rng = None if seeds is None else jax.vmap(jax.random.PRNGKey)(seeds)
    tokens, aux = self.model.predict_batch_with_aux(
        self._params(base, table), batch, rng, decoder_params=dict(options),
        budgets=budgets, temperatures=temperatures)
    return tokens[:, :width], aux["scores"]

  def _score_program(self, base, table, batch):
    return self.model.score_batch(self._params(base, table), batch)

  def _run(self, key: GroupKey, batch_size: int, table: jax.Array,
           prepared: list[_Prepared]) -> tuple[np.ndarray, ...]:
    """One padded batch of `prepared` (all of group `key`)."""
    features = _features(
        self.architecture, key.kind, [p.inputs for p in prepared],
        [p.targets for p in prepared], [p.slot for p in prepared],
        batch_size, key.length, key.decode)
    self._signatures.add((key, batch_size))
    with _Counting(self):
      if key.kind == SCORE:
        return (np.asarray(self._score_jit(self._base, table, features)),)
      budgets = np.zeros((batch_size,), np.int32)
      budgets[:len(prepared)] = [p.max_decode for p in prepared]
      seeds = temperatures = None
      options = {"temperature": 0.0, "topk": 0, "topp": 0.0, "beam_size": 1,
                 "alpha": 0.0}
      if key.mode == BEAM:
        options.update(beam_size=key.beam_size, alpha=key.alpha)
      elif key.mode == SAMPLING:
        options.update(temperature=1.0, topk=key.top_k, topp=key.top_p)
        seeds = np.zeros((batch_size,), np.int32)
        seeds[:len(prepared)] = [p.seed for p in prepared]
        temperatures = np.ones((batch_size,), np.float32)
        temperatures[:len(prepared)] = [p.temperature for p in prepared]
      tokens, scores = self._generate_jit(
          self._base, table, features, budgets, seeds, temperatures,
          options=tuple(sorted(options.items())), width=key.decode)
      return np.asarray(tokens), np.asarray(scores)

  def _batches(self, prepared: list[tuple[int, _Prepared]]):
    """(key, batch size, [(index, prepared)]) per group and chunk."""
    groups: dict[GroupKey, list[tuple[int, _Prepared]]] = {}
    for index, p in prepared:
      groups.setdefault(p.key, []).append((index, p))
    largest = self.batch_buckets[-1]
    for key, members in groups.items():
      for start in range(0, len(members), largest):
        chunk = members[start:start + largest]
        yield key, _bucket(self.batch_buckets, len(chunk)), chunk

  def _call(self, requests: Sequence[Any], kind: type) -> list[Any]:
    snapshot = self.bank.snapshot()
    results: list[Any] = [None] * len(requests)
    prepared = []
    for index, request in enumerate(requests):
      try:
        if not isinstance(request, kind):
          raise RequestError(f"expected a {kind.__name__}; got "
                             f"{type(request).__name__}.")
        prepared.append((index, self._prepare(request, snapshot.slots)))
      except RequestError as e:
        results[index] = e
    for key, batch_size, chunk in self._batches(prepared):
      outputs = self._run(key, batch_size, snapshot.table,
                          [p for _, p in chunk])
      for row, (index, p) in enumerate(chunk):
        results[index] = self._result(key, p, row, outputs)
    return results

  def _result(self, key: GroupKey, p: _Prepared, row: int,
              outputs: tuple[np.ndarray, ...]) -> Any:
    if key.kind == SCORE:
      return ScoreResult(float(outputs[0][row]))
    tokens = outputs[0][row, :p.max_decode].tolist()
    if self.model.eos_id in tokens:
      tokens = tokens[:tokens.index(self.model.eos_id) + 1]
    return GenerateResult(tokens, self.decode(tokens), float(outputs[1][row]),
                          p.seed)

  def generate(self, requests: Sequence[GenerateRequest]
               ) -> list[Union[GenerateResult, RequestError]]:
    """One result (or RequestError) per request, in order.

    Requests are validated first (nothing runs for an invalid one); valid
    ones run as one padded batch per group_key (the batcher sends one
    group per call) of at most the largest batch bucket.
    """
    return self._call(requests, GenerateRequest)

  def score(self, requests: Sequence[ScoreRequest]
            ) -> list[Union[ScoreResult, RequestError]]:
    """log p(targets | inputs) per request (or its RequestError), in order;
    batched as `generate`."""
    return self._call(requests, ScoreRequest)

  def warmup(self, groups: Optional[Iterable[GroupKey]] = None,
             batch_sizes: Optional[Sequence[int]] = None) -> int:
    """Compiles the programs of `groups` (default: greedy generate and
    score over every length and decode bucket) at every batch bucket (or
    `batch_sizes`), so requests of those groups compile nothing later.
    Returns the number of compilations it took."""
    if groups is None:
      groups = self.groups(GENERATE) + self.groups(SCORE)
    sizes = self.batch_buckets if batch_sizes is None else batch_sizes
    before = self.compiles
    table = self.bank.table
    for key in groups:
      for size in sizes:
        if size not in self.batch_buckets:
          raise ValueError(f"batch size {size} is not one of the batch "
                           f"buckets {self.batch_buckets}.")
        self._run(key, size, table, [])
    return self.compiles - before


def _real(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, bool) and np.isfinite(value))
