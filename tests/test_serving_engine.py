"""The serving compute core: prompt banks from every accepted format (and
clear refusals of the rest), and mixed-task padded batches whose every
result equals the request run alone through predict_batch / score_batch,
with no recompilation when tasks are added or removed."""

from __future__ import annotations

import json
import os
import types

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

import prompt_tuning as pt
from prompt_tuning import run_checkpoints
from prompt_tuning.checkpoints import orbax_params
from prompt_tuning.models import configs
from prompt_tuning.serving import bank as bank_lib
from prompt_tuning.serving import engine as engine_lib
from prompt_tuning.serving.engine import Decoding
from prompt_tuning.serving.engine import GenerateRequest
from prompt_tuning.serving.engine import RequestError
from prompt_tuning.serving.engine import ScoreRequest

VOCAB, H, P, CAPACITY = 64, 8, 2, 4
# EOS ids the tiny models below produce mid-sequence for some requests, so
# rows of one batch stop at EOS, at their budget, or run on.
EOS = {"gpt2": 3, "t5": 19}
CONFIGS = {
    "t5": configs.t5_1_1("tiny", vocab_size=VOCAB, emb_dim=H, head_dim=4,
                         relative_attention_num_buckets=8,
                         relative_attention_max_distance=6),
    "gpt2": configs.gpt2("small", vocab_size=VOCAB, emb_dim=H, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=2,
                         max_position_embeddings=32),
}
BUCKETS = dict(length_buckets=(6, 12), batch_buckets=(1, 2, 4, 8),
               decode_buckets=(6, 12))
# Two (input length, max_decode_length) shapes, so each decoding mode's
# alone runs compile twice; the batch mixes tasks, lengths and budgets.
SHAPES = ((3, 2), (5, 4))


def _prompts(seed: int, names=("a", "b", "c")) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {n: rng.normal(size=(P, H)).astype(np.float32) for n in names}


def _model(arch: str, method=None):
  method = method or pt.MultiTaskPrompt(num_tasks=CAPACITY, mode="task_only",
                                        length=P)
  return pt.build_model(CONFIGS[arch], method=method, eos_id=EOS[arch])


def _base_params(model, arch: str):
  """Random base params (no prompt) giving varied, well-separated tokens."""
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
  # One compiled init, not an op-by-op one (seconds on 2 cores).
  variables = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(0))
  params = jax.device_get(nn.meta.unbox(variables["params"]))
  params.pop("prompt", None)
  if arch == "gpt2":
    # GPT-2's 0.02-scale positions and small kernels make every step
    # predict alike; unit-scale positions and 3x kernels do not.
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    flat = {k: v * 3.0 if k.endswith("kernel") else v
            for k, v in flat.items()}
    name = "decoder/position_embedder/embedding"
    flat[name] = np.random.default_rng(1).normal(
        size=flat[name].shape).astype(np.float32)
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
  return params


@pytest.fixture(scope="module", params=["gpt2", "t5"])
def served(request):
  """A tiny model with a bank of 3 tasks (1 row free) and its engine."""
  arch = request.param
  model = _model(arch)
  params = _base_params(model, arch)
  bank = bank_lib.PromptBank(CAPACITY, P, H, prompts=_prompts(0))
  engine = engine_lib.Engine(model, params, bank, **BUCKETS)
  return types.SimpleNamespace(arch=arch, model=model, params=params,
                               bank=bank, engine=engine)


# ----------------------------------------------------------------------------
# What a request gives alone: a batch of one, built here from the T5X
# conventions (independently of the engine's own feature code).


def _alone_features(arch, slot, inputs, *, decode=0, targets=None):
  n, ids = len(inputs), np.asarray([slot], np.int32)
  row = lambda x: np.asarray([x], np.int32)
  if arch == "t5":
    if targets is None:
      return {"encoder_input_tokens": row(inputs),
              "decoder_target_tokens": np.zeros((1, decode), np.int32),
              "task_ids": ids}
    return {"encoder_input_tokens": row(inputs),
            "decoder_input_tokens": row([0] + list(targets[:-1])),
            "decoder_target_tokens": row(targets),
            "decoder_loss_weights": np.ones((1, len(targets)), np.float32),
            "task_ids": ids}
  if targets is None:
    return {"decoder_input_tokens": row(list(inputs) + [0] * decode),
            "decoder_causal_attention": row([1] * n + [0] * decode),
            "task_ids": ids}
  seq = list(inputs) + list(targets)
  return {"decoder_input_tokens": row(seq[:-1]),
          "decoder_target_tokens": row(seq[1:]),
          "decoder_causal_attention": row([1] * n + [0] * (len(targets) - 1)),
          "decoder_loss_weights": np.asarray(
              [[0.0] * (n - 1) + [1.0] * len(targets)], np.float32),
          "task_ids": ids}


def _full_params(served):
  return {**served.params, "prompt": {"tasks": np.asarray(served.bank.table)}}


def _alone_generate(served, req: GenerateRequest):
  d = req.decoding
  options = {"temperature": 0.0, "beam_size": 1}
  rng = None
  if d.mode == "beam":
    options = {"temperature": 0.0, "beam_size": d.beam_size, "alpha": d.alpha}
  elif d.mode == "sampling":
    options = {"temperature": d.temperature, "topk": d.top_k,
               "topp": d.top_p, "beam_size": 1}
    rng = jax.random.PRNGKey(d.seed)
  batch = _alone_features(served.arch, served.bank.slot(req.task),
                          req.input_ids, decode=req.max_decode_length)
  tokens, aux = served.model.predict_batch_with_aux(
      _full_params(served), batch, rng, decoder_params=options)
  tokens = np.asarray(tokens)[0, :req.max_decode_length].tolist()
  eos = EOS[served.arch]
  if eos in tokens:
    tokens = tokens[:tokens.index(eos) + 1]
  return tokens, float(aux["scores"][0])


def _requests(decoding_for, tasks=("b", "a", "c", "a")):
  rng = np.random.default_rng(7)
  reqs = []
  for i, task in enumerate(tasks):
    n, m = SHAPES[i % 2]
    reqs.append(GenerateRequest(task, rng.integers(2, VOCAB, n).tolist(), m,
                                decoding_for(i)))
  return reqs


def _check_equal_alone(served, reqs, results):
  for req, result in zip(reqs, results):
    assert isinstance(result, engine_lib.GenerateResult), result
    tokens, score = _alone_generate(served, req)
    assert result.output_ids == tokens, req
    np.testing.assert_allclose(result.score, score, rtol=0, atol=1e-5)
    assert len(result.output_ids) <= req.max_decode_length


# ----------------------------------------------------------------------------
# Mixed-task batches equal alone runs.


def test_request_features_are_the_alone_batch():
  for arch, name in (("t5", "encoder_decoder"), ("gpt2", "decoder_only")):
    got = engine_lib.request_features(name, "generate", [5, 6, 7],
                                      max_decode_length=2, task_id=1)
    want = _alone_features(arch, 1, [5, 6, 7], decode=2)
    assert jax.tree.map(np.ndarray.tolist, got) == jax.tree.map(
        np.ndarray.tolist, want)
    got = engine_lib.request_features(name, "score", [5, 6, 7],
                                      targets=[8, 9], task_id=2)
    want = _alone_features(arch, 2, [5, 6, 7], targets=[8, 9])
    assert jax.tree.map(np.ndarray.tolist, got) == jax.tree.map(
        np.ndarray.tolist, want)


def test_greedy_mixed_batch_equals_each_request_alone(served):
  reqs = _requests(lambda i: Decoding.greedy())
  keys = {served.engine.group_key(r) for r in reqs}
  assert len(keys) == 1  # tasks, lengths and budgets share one program
  results = served.engine.generate(reqs)
  _check_equal_alone(served, reqs, results)
  outputs = {tuple(r.output_ids) for r in results}
  assert len(outputs) > 1, "the tiny model should not answer alike"
  assert all(r.text is None and r.seed is None for r in results)
  if served.arch != "gpt2":
    return
  # The same as serving that one prompt with PromptTuning, alone.
  req = reqs[0]
  single = _model(served.arch, pt.PromptTuning(prompt=served.bank.prompt(
      req.task)))
  batch = _alone_features(served.arch, 0, req.input_ids,
                          decode=req.max_decode_length)
  tokens, aux = single.predict_batch_with_aux(
      served.params, batch, decoder_params={"temperature": 0.0})
  assert results[0].output_ids == np.asarray(tokens)[0, :len(
      results[0].output_ids)].tolist()
  np.testing.assert_allclose(results[0].score, aux["scores"][0], atol=1e-5)


def test_beam_mixed_batch_equals_each_request_alone(served):
  reqs = _requests(lambda i: Decoding.beam(3, 0.6))
  results = served.engine.generate(reqs)
  _check_equal_alone(served, reqs, results)
  # (EOS ids were picked so that) a row finishes before its budget.
  assert any(r.output_ids[-1] == EOS[served.arch]
             and len(r.output_ids) < q.max_decode_length
             for q, r in zip(reqs, results))


def test_score_mixed_batch_equals_each_request_alone(served):
  rng = np.random.default_rng(3)
  reqs = [ScoreRequest(task, rng.integers(2, VOCAB, n).tolist(),
                       rng.integers(2, VOCAB, m).tolist())
          for task, (n, m) in zip("cab", (SHAPES[0], SHAPES[1], SHAPES[0]))]
  results = served.engine.score(reqs)
  for req, result in zip(reqs, results):
    batch = _alone_features(served.arch, served.bank.slot(req.task),
                            req.input_ids, targets=req.target_ids)
    alone = float(served.model.score_batch(_full_params(served), batch)[0])
    np.testing.assert_allclose(result.log_likelihood, alone, rtol=0,
                               atol=1e-5)
  assert len({round(r.log_likelihood, 3) for r in results}) == 3


def test_sampling_is_independent_of_batch_composition(served):
  temperatures = (0.7, 1.3)
  reqs = _requests(lambda i: Decoding.sampling(temperatures[i % 2], top_k=20,
                                               seed=11 + i))
  first = served.engine.generate(reqs[:3])
  # Other rows around them, in another order, in the same compiled program.
  again = served.engine.generate([reqs[3], reqs[2], reqs[0]])
  assert again[2].output_ids == first[0].output_ids
  assert again[1].output_ids == first[2].output_ids
  np.testing.assert_allclose(again[2].score, first[0].score, atol=1e-5)
  _check_equal_alone(served, reqs[:3], first)
  assert [r.seed for r in first] == [11, 12, 13]
  # No seed: one is drawn and reported, and it reproduces the result.
  unseeded = GenerateRequest("a", [4, 5, 6], 2,
                             Decoding.sampling(temperatures[0], top_k=20))
  drawn = served.engine.generate([unseeded] + reqs[:2])[0]
  assert 0 <= drawn.seed <= engine_lib.MAX_SEED
  reseeded = GenerateRequest("a", [4, 5, 6], 2, Decoding.sampling(
      temperatures[0], top_k=20, seed=drawn.seed))
  again = served.engine.generate(reqs[1:] + [reseeded])[-1]
  assert again.output_ids == drawn.output_ids


def test_adding_and_removing_tasks_compiles_nothing(served):
  engine, bank = served.engine, served.bank
  reqs = _requests(lambda i: Decoding.greedy())
  engine.generate(reqs)  # compiled (or already compiled) once
  before = engine.compiles
  bank.add("d", _prompts(5, ["d"])["d"])  # the free row
  new = GenerateRequest("d", reqs[0].input_ids, reqs[0].max_decode_length)
  mixed = [new] + reqs[1:]  # the same batch and length buckets
  results = engine.generate(mixed)
  _check_equal_alone(served, mixed[:2], results[:2])
  # Replacing a prompt in place changes its results, still compiling nothing.
  old = results[0].output_ids, results[0].score
  bank.add("d", _prompts(6, ["d"])["d"])
  replaced = engine.generate(mixed)[0]
  assert (replaced.output_ids, replaced.score) != old
  _check_equal_alone(served, [new], [replaced])
  bank.remove("d")
  gone = engine.generate(mixed)
  assert isinstance(gone[0], RequestError) and "'d'" in str(gone[0])
  assert gone[1:] == results[1:]
  assert engine.compiles == before


class Letters:
  """A toy vocabulary: a..z <-> ids 10..35."""

  def encode(self, text):
    return [ord(c) - ord("a") + 10 for c in text]

  def decode(self, ids):
    return "".join(chr(i - 10 + ord("a")) if 10 <= i < 36 else "?"
                   for i in ids)


def test_compiles_counts_new_programs_and_warmup_covers_buckets():
  model = _model("gpt2")
  params = _base_params(model, "gpt2")
  bank = bank_lib.PromptBank(CAPACITY, P, H, prompts=_prompts(0))
  engine = engine_lib.Engine(model, params, bank, vocabulary=Letters(),
                             length_buckets=(4,), batch_buckets=(1, 2),
                             decode_buckets=(4,))
  assert engine.compiles == 0
  # Greedy generate and score at every length and decode bucket (one
  # each here), for batch size 1.
  assert engine.warmup(batch_sizes=[1]) == 2
  assert engine.compiles == 2
  engine.generate([GenerateRequest("a", [3, 4], 3)])
  engine.score([ScoreRequest("b", [3, 4, 5], [6, 7])])
  bank.add("d", _prompts(5, ["d"])["d"])
  engine.generate([GenerateRequest("d", [3, 4, 5, 6], 1)])
  assert engine.compiles == 2
  # A batch bucket warm-up did not cover compiles once, then never again.
  two = [GenerateRequest("a", [3, 4], 3), GenerateRequest("d", [5], 4)]
  engine.generate(two)
  assert engine.compiles == 3
  # Text in, text out (without EOS), through the vocabulary.
  text, ids = engine.generate([
      GenerateRequest("a", "hey", 4),
      GenerateRequest("a", Letters().encode("hey"), 4)])
  assert text.output_ids == ids.output_ids
  kept = [i for i in ids.output_ids if i != EOS["gpt2"]]
  assert text.text == ids.text == Letters().decode(kept)
  engine.generate(two[:1])
  assert engine.compiles == 3
  assert engine.warmup(batch_sizes=[1, 2]) == 1  # only score at size 2


# ----------------------------------------------------------------------------
# Request errors: one clear message each, before anything compiles.


@pytest.mark.parametrize("request_, match", [
    (GenerateRequest("nope", [3, 4], 2), r"unknown task 'nope'.*'a', 'b'"),
    (GenerateRequest("a", [3] * 13, 2), r"13 tokens.*largest length bucket"),
    (GenerateRequest("a", [], 2), r"input is empty"),
    (GenerateRequest("a", [3, VOCAB], 2), r"ids \[64\] outside.*\[0, 64\)"),
    (GenerateRequest("a", [3, -1], 2), r"ids \[-1\] outside"),
    (GenerateRequest("a", [3.5], 2), r"int token ids"),
    (GenerateRequest("a", "some text", 2), r"no vocabulary"),
    (GenerateRequest("a", [3], 13), r"max_decode_length 13 .*\[1, 12\]"),
    (GenerateRequest("a", [3], 0), r"max_decode_length 0"),
    (GenerateRequest("a", [3], 2, Decoding("nucleus")), r"mode 'nucleus'"),
    (GenerateRequest("a", [3], 2, Decoding.beam(0)), r"beam size 0"),
    (GenerateRequest("a", [3], 2, Decoding.beam(99)), r"beam size 99"),
    (GenerateRequest("a", [3], 2, Decoding.beam(2, -1.0)), r"alpha -1.0"),
    (GenerateRequest("a", [3], 2, Decoding.sampling(0.0)), r"temperature 0"),
    (GenerateRequest("a", [3], 2, Decoding.sampling(float("nan"))),
     r"temperature nan"),
    (GenerateRequest("a", [3], 2, Decoding.sampling(top_k=-2)), r"top_k -2"),
    (GenerateRequest("a", [3], 2, Decoding.sampling(top_p=1.5)),
     r"top_p 1.5"),
    (GenerateRequest("a", [3], 2, Decoding.sampling(seed=2**31)),
     r"seed 2147483648"),
    (ScoreRequest("a", [3], []), r"target is empty"),
    (ScoreRequest("a", [3], [4] * 13), r"target has 13 tokens"),
    (ScoreRequest("zz", [3], [4]), r"unknown task 'zz'"),
])
def test_request_errors(served, request_, match):
  engine = served.engine
  with pytest.raises(RequestError, match=match):
    engine.group_key(request_)
  before = engine.compiles
  call = engine.score if isinstance(request_, ScoreRequest) else \
      engine.generate
  results = call([request_])
  assert isinstance(results[0], RequestError)
  assert str(results[0]) == str(pytest.raises(
      RequestError, engine.validate, request_).value)
  assert engine.compiles == before


def test_encoder_inputs_refuse_the_padding_id(served):
  if served.arch != "t5":
    # GPT-2's id 0 is a token ("!"): decoder-only inputs take it.
    served.engine.validate(GenerateRequest("a", [0, 3], 2))
    return
  with pytest.raises(RequestError, match="id 0, the padding id"):
    served.engine.validate(GenerateRequest("a", [3, 0, 4], 2))
  with pytest.raises(RequestError, match="target holds id 0"):
    served.engine.validate(ScoreRequest("a", [3], [4, 0]))


def test_bad_requests_do_not_stop_the_others(served):
  good = _requests(lambda i: Decoding.greedy())
  results = served.engine.generate(good[:2] + [
      GenerateRequest("x", [3], 2), ScoreRequest("a", [3], [4])] + good[2:])
  assert isinstance(results[2], RequestError)
  assert isinstance(results[3], RequestError)
  assert "GenerateRequest" in str(results[3])
  _check_equal_alone(served, good, results[:2] + results[4:])


def test_engine_checks_its_model_and_buckets():
  model = _model("gpt2", pt.PromptTuning(length=P))
  bank = bank_lib.PromptBank(CAPACITY, P, H)
  with pytest.raises(ValueError, match="MultiTaskPrompt.*mode='task_only'"):
    engine_lib.Engine(model, {}, bank)
  model = _model("gpt2", pt.MultiTaskPrompt(num_tasks=CAPACITY + 1,
                                            mode="task_only", length=P))
  with pytest.raises(ValueError, match="num_tasks=5.*4 rows"):
    engine_lib.Engine(model, {}, bank)
  model = _model("gpt2")
  with pytest.raises(ValueError, match="max_position_embeddings=32"):
    engine_lib.Engine(model, {}, bank, length_buckets=(16,),
                      decode_buckets=(16,))
  with pytest.raises(ValueError, match="batch_buckets"):
    engine_lib.Engine(model, {}, bank, batch_buckets=())


def test_engine_load_reads_base_and_prompt_dir(tmp_path):
  base = tmp_path / "base"
  orbax_params.save_params(str(base), _base_params(_model("gpt2"), "gpt2"),
                           CONFIGS["gpt2"])
  prompts = _prompts(2)
  (tmp_path / "prompts").mkdir()
  for name, array in prompts.items():
    np.save(tmp_path / "prompts" / f"{name}.npy", array)
  engine = engine_lib.Engine.load(str(base), str(tmp_path / "prompts"),
                                  capacity=CAPACITY, eos_id=EOS["gpt2"],
                                  **BUCKETS)
  assert engine.bank.names() == ["a", "b", "c"]
  assert engine.model.method.num_tasks == CAPACITY
  assert engine.model.eos_id == EOS["gpt2"]
  assert not engine.has_vocabulary  # not a shipped base
  table = np.asarray(engine.bank.table)
  for name, array in prompts.items():
    np.testing.assert_array_equal(table[engine.bank.slot(name)], array)
  with pytest.raises(ValueError, match="3 prompts, more than capacity=2; "
                     "raise --cap to at least 3"):
    engine_lib.Engine.load(str(base), str(tmp_path / "prompts"), capacity=2,
                           capacity_setting="--cap")
  with pytest.raises(ValueError, match="needs prompt_length"):
    engine_lib.Engine.load(str(base))
  with pytest.raises(ValueError, match="prompt_length=5, but the prompts"):
    engine_lib.Engine.load(str(base), str(tmp_path / "prompts"),
                           prompt_length=5)
  # A shipped base names its vocabulary (loaded only when text is used);
  # prompts of another model's width are refused by name.
  shipped = engine_lib.Engine.load("bible_gpt2_small", prompt_length=P,
                                   capacity=2, **BUCKETS)
  assert shipped.has_vocabulary and shipped.bank.shape == (P, 128)
  with pytest.raises(ValueError, match=r"'a' has a prompt of shape \(2, 8\)"
                     r", but the model's embeddings are 128 wide"):
    engine_lib.Engine.load("bible_gpt2_small", str(tmp_path / "prompts"),
                           capacity=CAPACITY, **BUCKETS)


# ----------------------------------------------------------------------------
# The prompt bank.


def test_bank_add_replace_remove_and_snapshots():
  prompts = _prompts(0)
  bank = bank_lib.PromptBank(3, P, H, prompts=prompts,
                             capacity_setting="--bank_capacity")
  assert bank.names() == ["a", "b", "c"] and len(bank) == 3
  assert [bank.slot(n) for n in "abc"] == [0, 1, 2]
  snapshot = bank.snapshot()
  with pytest.raises(ValueError, match=r"full \(capacity=3.*--bank_capacity"):
    bank.add("d", prompts["a"])
  bank.add("b", prompts["a"])  # replace in place: same row
  assert bank.slot("b") == 1
  np.testing.assert_array_equal(np.asarray(bank.table)[1], prompts["a"])
  # The snapshot an in-flight batch holds did not change.
  np.testing.assert_array_equal(np.asarray(snapshot.table)[1], prompts["b"])
  bank.remove("a")
  assert "a" not in bank and "a" in snapshot.slots
  np.testing.assert_array_equal(np.asarray(bank.table)[0], 0.0)
  assert bank.add("d", prompts["c"]) == 0  # the lowest free row
  np.testing.assert_array_equal(bank.prompt("d"), prompts["c"])
  with pytest.raises(KeyError, match=r"unknown task 'a'.*'b', 'c', 'd'"):
    bank.slot("a")
  with pytest.raises(KeyError, match="unknown task 'zz'"):
    bank.remove("zz")
  with pytest.raises(ValueError, match=r"'e' has a prompt of shape \(3, 8\)"
                     r".*\(2, 8\)"):
    bank.add("e", np.zeros((3, H), np.float32))
  with pytest.raises(ValueError, match="NaN"):
    bank.add("c", np.full((P, H), np.nan, np.float32))
  with pytest.raises(ValueError, match="task name"):
    bank.add("", prompts["a"])


def _write_run(run_dir, prompts_by_step, *, export=True,
               method="PromptTuning"):
  """What `train` writes: checkpoint_<step>/ (Orbax) and, for methods with
  an npy export, numpy_checkpoints/checkpoint_<step>/prompt.npy."""
  model = pt.build_model(CONFIGS["gpt2"], method=pt.PromptTuning(length=P))
  checkpoints = run_checkpoints.RunCheckpoints(str(run_dir))
  for step, params in prompts_by_step.items():
    state = types.SimpleNamespace(step=step, params=params,
                                  opt_state={"count": np.zeros((), np.int32)})
    checkpoints.save(state, {"initial_checkpoint_path": "base"},
                     model=model if export else None)
  checkpoints.close()
  with open(os.path.join(run_dir, "model_info.json"), "w") as f:
    json.dump({"method": f"{method}(length={P})"}, f)


def _write_peft(path, table, peft_type="PROMPT_TUNING", **config):
  os.makedirs(path)
  safetensors_numpy.save_file({"prompt_embeddings": table},
                              os.path.join(path, "adapter_model.safetensors"))
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": peft_type, "num_virtual_tokens": P, **config}, f)


def test_load_prompt_dir_reads_every_format(tmp_path):
  want = _prompts(1, ["npy", "export", "peft", "peft2", "run", "step",
                      "bare_step"])
  bank_dir = tmp_path / "bank"
  bank_dir.mkdir()
  np.save(bank_dir / "npy.npy", want["npy"])
  pt.export_prompt({"prompt": {"prompt": want["export"]}},
                   bank_dir / "export")
  _write_peft(bank_dir / "peft", want["peft"])
  # PEFT's T5 default keeps two tables; the encoder's is the first.
  _write_peft(bank_dir / "peft2", np.concatenate(
      [want["peft2"], np.ones((P, H), np.float32)]),
              num_transformer_submodules=2)
  stale = want["run"] + 1.0
  _write_run(bank_dir / "run", {1: {"prompt": {"prompt": stale}},
                                2: {"prompt": {"prompt": want["run"]}}})
  # A checkpoint_<step> of a run (through a link: its run dir is found).
  _write_run(tmp_path / "other_run", {3: {"prompt": {"prompt": want["step"]}},
                                      4: {"prompt": {"prompt": stale}}})
  os.symlink(tmp_path / "other_run" / "checkpoint_3", bank_dir / "step")
  # A run whose npy export is gone: the Orbax prompt/prompt is read.
  _write_run(tmp_path / "bare_run",
             {5: {"prompt": {"prompt": want["bare_step"]}}}, export=False)
  os.symlink(tmp_path / "bare_run" / "checkpoint_5", bank_dir / "bare_step")
  (bank_dir / ".hidden").write_text("skipped")

  got = bank_lib.load_prompt_dir(bank_dir)
  assert sorted(got) == sorted(want)
  for name, array in want.items():
    np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert got[name].dtype == np.float32
  np.testing.assert_array_equal(
      bank_lib.read_prompt(tmp_path / "other_run"), stale)  # newest step
  bank = bank_lib.PromptBank.from_dir(bank_dir, capacity=8)
  assert bank.names() == sorted(want)
  with pytest.raises(ValueError, match="capacity=3; raise capacity to at "
                     "least 7"):
    bank_lib.PromptBank.from_dir(bank_dir, capacity=3)


def _refused(tmp_path, name, make):
  bank_dir = tmp_path / name
  bank_dir.mkdir()
  np.save(bank_dir / "fine.npy", np.zeros((P, H), np.float32))
  make(bank_dir)
  with pytest.raises(ValueError) as error:
    bank_lib.load_prompt_dir(bank_dir)
  return str(error.value)


def test_load_prompt_dir_refuses_other_methods(tmp_path):
  serves = "a prompt bank serves prompt-tuning prompts"
  message = _refused(tmp_path, "a", lambda d: np.save(
      d / "prefix_decoder_self.npy", np.zeros((2, 2, P, 2, 4), np.float32)))
  assert "'prefix_decoder_self'" in message and "prefix-tuning table" in \
      message and serves in message
  message = _refused(tmp_path, "b", lambda d: (
      (d / "pfx").mkdir(),
      np.save(d / "pfx" / "prefix_cross.npy", np.zeros((1,), np.float32))))
  assert "'pfx'" in message and "prefix_cross.npy" in message
  assert serves in message
  message = _refused(tmp_path, "c", lambda d: _write_peft(
      d / "peft_prefix", np.zeros((P, 64), np.float32), "PREFIX_TUNING"))
  assert "'peft_prefix'" in message and "PEFT PREFIX_TUNING" in message
  assert serves in message
  message = _refused(tmp_path, "d", lambda d: np.save(
      d / "cube.npy", np.zeros((2, P, H), np.float32)))
  assert "'cube'" in message and "(2, 2, 8)" in message and serves in message
  message = _refused(tmp_path, "e", lambda d: _write_run(
      d / "prefix_run",
      {1: {"prefix": {"decoder_self": {"kv": np.zeros((2, 2, P, 2, 4),
                                                      np.float32)}}}},
      export=False, method="PrefixTuning"))
  assert "'prefix_run'" in message and "PrefixTuning" in message
  assert serves in message
  message = _refused(tmp_path, "f", lambda d: np.save(
      d / "long.npy", np.zeros((P + 1, H), np.float32)))
  assert ("'long'" in message and "(3, 8)" in message
          and "bank's prompts are (2, 8)" in message and "'fine'" in message)
  message = _refused(tmp_path, "g", lambda d: (d / "notes.txt").write_text(
      "hi"))
  assert "'notes.txt'" in message and "not a prompt file" in message
  message = _refused(tmp_path, "h", lambda d: (d / "empty").mkdir())
  assert "'empty'" in message and "holds no prompt" in message
