"""The server through real HTTP on a loopback port: mixed-task batching
under concurrency, the task endpoints, metrics, and every bad request.

Expected outputs come from the engine run on each request alone (a batch of
one), which tests/test_serving_engine.py proves equal to `predict_batch` /
`score_batch` on that request alone.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import socket
import time
import types

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning.checkpoints import shipped
from prompt_tuning.models import configs
from prompt_tuning.serving import app as app_lib
from prompt_tuning.serving import bank as bank_lib
from prompt_tuning.serving import engine as engine_lib
from prompt_tuning.serving.engine import Decoding
from prompt_tuning.serving.engine import GenerateRequest
from prompt_tuning.serving.engine import ScoreRequest

VOCAB, H, P, CAPACITY = 64, 8, 2, 6
CONFIG = configs.gpt2("small", vocab_size=VOCAB, emb_dim=H, num_heads=2,
                      head_dim=4, mlp_dim=32, num_decoder_layers=2,
                      max_position_embeddings=32)
BUCKETS = dict(length_buckets=(6, 12), batch_buckets=(1, 2, 4, 8),
               decode_buckets=(6,))
TASKS = ("a", "b", "c")


def _prompt(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(P, H)).astype(np.float32)


def _params(model):
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 4)})["params"])
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
  # Unit-scale positions give varied tokens (GPT-2's 0.02 scale would make
  # every step predict alike).
  name = "decoder/position_embedder/embedding"
  flat[name] = np.random.default_rng(1).normal(
      size=flat[name].shape).astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def engine():
  method = pt.MultiTaskPrompt(num_tasks=CAPACITY, mode="task_only", length=P)
  model = pt.build_model(CONFIG, method=method)
  bank = bank_lib.PromptBank(
      CAPACITY, P, H, prompts={t: _prompt(i) for i, t in enumerate(TASKS)})
  return engine_lib.Engine(model, _params(model), bank, **BUCKETS)


@pytest.fixture(scope="module")
def served(engine):
  running = app_lib.BackgroundServer(app_lib.Server(engine, max_batch_size=8,
                                    max_wait_ms=30, max_request_inputs=8))
  yield running
  running.stop()


def _generate_body(task, ids, n=4, decoding=None):
  return {"task": task, "inputs": ids, "max_decode_length": n,
          "decoding": decoding or {"mode": "greedy"}}


def _alone(engine, request):
  (result,) = engine.generate([request]) if isinstance(
      request, GenerateRequest) else engine.score([request])
  assert not isinstance(result, Exception), result
  return result


def _metric(text: str, name: str) -> float:
  return sum(float(line.split()[-1]) for line in text.splitlines()
             if line.startswith(name))


def test_concurrent_mixed_task_requests_each_get_their_own_result(
    served, engine):
  rng = np.random.default_rng(0)
  cases = []
  for i in range(24):
    task = TASKS[i % 3]
    ids = rng.integers(2, VOCAB, size=int(rng.integers(1, 10))).tolist()
    n = int(rng.integers(1, 7))
    decoding = ({"mode": "sampling", "temperature": 0.7, "seed": i}
                if i % 4 == 3 else {"mode": "beam", "size": 2, "alpha": 0.6}
                if i % 4 == 1 else {"mode": "greedy"})
    cases.append((task, ids, n, decoding))
  to_decoding = {"greedy": lambda d: Decoding.greedy(),
                 "beam": lambda d: Decoding.beam(d["size"], d["alpha"]),
                 "sampling": lambda d: Decoding.sampling(
                     d["temperature"], seed=d["seed"])}
  expected = [_alone(engine, GenerateRequest(
      t, ids, n, to_decoding[d["mode"]](d))) for t, ids, n, d in cases]
  batches_before = _metric(served.request("GET", "/metrics")[1],
                           "prompt_tuning_batch_size_count")
  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    answers = list(pool.map(
        lambda c: served.request("POST", "/v1/generate",
                                 _generate_body(c[0], c[1], c[2], c[3])),
        cases))
  for (status, body), want in zip(answers, expected):
    assert status == 200, body
    (out,) = body["outputs"]
    assert out["token_ids"] == list(want.output_ids)
    np.testing.assert_allclose(out["score"], want.score, atol=1e-5)
  metrics = served.request("GET", "/metrics")[1]
  batches = _metric(metrics, "prompt_tuning_batch_size_count")
  # Requests shared batches: fewer batches than requests.
  assert batches - batches_before < len(cases)


def test_many_inputs_in_one_request_and_scoring(served, engine):
  status, body = served.request("POST", "/v1/generate", _generate_body(
      "b", [[5, 6, 7], [9], [3, 4]], 3))
  assert status == 200, body
  for ids, out in zip([[5, 6, 7], [9], [3, 4]], body["outputs"]):
    want = _alone(engine, GenerateRequest("b", ids, 3, Decoding.greedy()))
    assert out["token_ids"] == list(want.output_ids)
  status, body = served.request("POST", "/v1/score", {
      "task": "c", "inputs": [[5, 6], [7]], "targets": [[8, 9], [10]]})
  assert status == 200, body
  for (i, t), got in zip([([5, 6], [8, 9]), ([7], [10])],
                         body["log_likelihoods"]):
    want = _alone(engine, ScoreRequest("c", i, t)).log_likelihood
    np.testing.assert_allclose(got, want, atol=1e-5)
  # Rank classification: every candidate for every input, and the best.
  status, body = served.request("POST", "/v1/score", {
      "task": "a", "inputs": [[5, 6]], "candidates": [[8], [9, 10], [11]]})
  assert status == 200, body
  (row,) = body["log_likelihoods"]
  want = [_alone(engine, ScoreRequest("a", [5, 6], c)).log_likelihood
          for c in ([8], [9, 10], [11])]
  np.testing.assert_allclose(row, want, atol=1e-5)
  assert body["best"] == [int(np.argmax(want))]


def test_tasks_can_be_added_replaced_and_removed_without_compiling(
    served, engine):
  status, body = served.request("GET", "/v1/tasks")
  assert status == 200 and set(TASKS) <= set(body["tasks"])
  assert body["prompt_shape"] == [P, H] and body["capacity"] == CAPACITY
  request = _generate_body("new", [5, 6, 7], 4)
  assert served.request("POST", "/v1/generate", request)[0] == 404
  # Warm this group's program first, so the count below isolates PUT.
  served.request("POST", "/v1/generate", _generate_body("a", [5, 6, 7], 4))
  compiles = served.request("GET", "/health")[1]["compiles"]
  buffer = io.BytesIO()
  np.save(buffer, _prompt(7))
  status, body = served.request("PUT", "/v1/tasks/new", buffer.getvalue(),
                                content_type="application/octet-stream")
  assert status == 200 and body["replaced"] is False, body
  status, body = served.request("POST", "/v1/generate", request)
  assert status == 200, body
  want = _alone(engine, GenerateRequest("new", [5, 6, 7], 4,
                                        Decoding.greedy()))
  assert body["outputs"][0]["token_ids"] == list(want.output_ids)
  # Replacing through JSON changes what the task computes.
  status, body = served.request("PUT", "/v1/tasks/new",
                                {"prompt": (_prompt(8) * 3).tolist()})
  assert status == 200 and body["replaced"] is True, body
  again = served.request("POST", "/v1/generate", request)[1]
  assert again["outputs"][0]["score"] != want.score
  assert served.request("GET", "/health")[1]["compiles"] == compiles
  assert served.request("DELETE", "/v1/tasks/new")[0] == 200
  assert served.request("POST", "/v1/generate", request)[0] == 404
  assert served.request("DELETE", "/v1/tasks/new")[0] == 404


@pytest.mark.parametrize("method,path,body,content_type,status,match", [
    ("POST", "/v1/generate", b"{\"task\": ", "application/json", 400,
     "not valid JSON"),
    ("POST", "/v1/generate", b"\xff\xfe\x00bad", "application/json", 400,
     "not valid JSON"),
    ("POST", "/v1/generate", {"task": "zzz", "inputs": [5]}, None, 404,
     "unknown task 'zzz'"),
    ("POST", "/v1/generate", {"task": "a", "inputs": list(range(2, 20))},
     None, 422, "longer|exceeds|bucket"),
    ("POST", "/v1/generate", {"task": "a", "inputs": [5],
                              "decoding": {"mode": "nucleus"}}, None, 422,
     "nucleus"),
    ("POST", "/v1/generate", {"task": "a", "inputs": [5],
                              "decoding": {"mode": "sampling",
                                           "temperature": -1}}, None, 422,
     "temperature"),
    ("POST", "/v1/generate", {"task": "a", "inputs": []}, None, 422,
     "empty"),
    ("POST", "/v1/generate", {"task": "a", "inputs": [[5]] * 9}, None, 413,
     "limit is 8"),
    ("POST", "/v1/generate", {"task": "a", "inputs": [5],
                              "max_decode_length": 99}, None, 422,
     "max_decode_length"),
    ("POST", "/v1/generate", {"task": "a", "inputs": [5], "extra": 1}, None,
     422, "extra"),
    ("POST", "/v1/generate", {"inputs": [5]}, None, 422, "task is missing"),
    ("POST", "/v1/score", {"task": "a", "inputs": [5]}, None, 422,
     "targets"),
    ("PUT", "/v1/tasks/bad", {"prompt": [[1.0, 2.0]]}, None, 422,
     "shape|\\[P, H\\]"),
    ("PUT", "/v1/tasks/bad", b"not a npy", "application/octet-stream", 400,
     ".npy"),
], ids=["malformed_json", "not_utf8", "unknown_task", "too_long",
        "bad_mode", "bad_temperature", "empty_input", "too_many_inputs",
        "decode_too_long", "unknown_field", "missing_task", "score_no_targets",
        "put_wrong_shape", "put_not_npy"])
def test_bad_requests_get_one_clear_4xx_and_the_server_keeps_serving(
    served, method, path, body, content_type, status, match):
  got_status, got = served.request(method, path, body,
                                   content_type=content_type or
                                   "application/json")
  assert got_status == status, got
  assert set(got) == {"error"}
  assert "\n" not in got["error"]
  import re  # pylint: disable=g-import-not-at-top
  assert re.search(match, got["error"]), got["error"]
  assert served.request("POST", "/v1/generate",
                        _generate_body("a", [5, 6], 2))[0] == 200


def test_a_client_going_away_mid_request_harms_no_one(served):
  body = json.dumps(_generate_body("a", [5, 6, 7], 6)).encode()
  for partial in (False, True):
    conn = socket.create_connection(("127.0.0.1", served.port))
    head = (f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    conn.sendall(head.encode() + (body[:10] if partial else body))
    conn.close()  # Before the answer (and, once, before the whole body).
  time.sleep(0.2)
  assert served.request("POST", "/v1/generate",
                        _generate_body("b", [5, 6], 2))[0] == 200


def test_a_task_deleted_while_its_requests_wait_fails_them_cleanly(engine):
  # A long batching wait keeps the request queued while the task goes.
  running = app_lib.BackgroundServer(app_lib.Server(engine, max_batch_size=8,
                                    max_wait_ms=1500))
  try:
    buffer = io.BytesIO()
    np.save(buffer, _prompt(9))
    assert running.request("PUT", "/v1/tasks/doomed", buffer.getvalue(),
                           content_type="application/octet-stream")[0] == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending = pool.submit(running.request, "POST", "/v1/generate",
                            _generate_body("doomed", [5, 6], 2))
      time.sleep(0.5)
      assert running.request("DELETE", "/v1/tasks/doomed")[0] == 200
      status, body = pending.result(60)
    assert status == 404 and "removed while the request was queued" in (
        body["error"]), body
    assert running.request("POST", "/v1/generate",
                           _generate_body("a", [5], 2))[0] == 200
  finally:
    running.stop()


def test_health_metrics_and_openapi(served):
  status, body = served.request("GET", "/health")
  assert status == 200 and body["status"] == "ok"
  status, text = served.request("GET", "/metrics")
  assert status == 200
  for name in ("prompt_tuning_requests_total", "prompt_tuning_batch_size",
               "prompt_tuning_queue_seconds", "prompt_tuning_generated_tokens",
               "prompt_tuning_compiles", "prompt_tuning_batch_tokens_per_second"):
    assert name in text, name
  assert _metric(text, "prompt_tuning_generated_tokens_total") > 0
  status, spec = served.request("GET", "/openapi.json")
  assert status == 200
  assert {"/v1/generate", "/v1/score", "/v1/tasks", "/v1/tasks/{name}",
          "/health", "/metrics"} <= set(spec["paths"])
  assert served.request("GET", "/docs")[0] == 200


def test_the_serve_binary_serves_a_shipped_base_and_drains_on_sigterm(
    tmp_path):
  """`python -m prompt_tuning.serve` on bible_gpt2_small with two prompts:
  text in, text out; SIGTERM mid-request finishes that request, then the
  process exits 0."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  width = shipped.find("bible_gpt2_small").config.emb_dim
  prompts = tmp_path / "prompts"
  prompts.mkdir()
  for i, name in enumerate(("first", "second")):
    np.save(prompts / f"{name}.npy", np.random.default_rng(i).normal(
        0, 0.1, size=(4, width)).astype(np.float32))
  sock = socket.socket()
  sock.bind(("127.0.0.1", 0))
  port = sock.getsockname()[1]
  sock.close()
  process = subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.serve",
       "--gin_file=runs/serve.gin", "--gin.BASE='bible_gpt2_small'",
       f"--gin.PROMPTS_DIR='{prompts}'", f"--gin.PORT={port}",
       "--gin.serve.length_buckets=(16,)", "--gin.serve.decode_buckets=(8,)",
       "--gin.serve.batch_buckets=(1, 2)"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    client = types.SimpleNamespace(host="127.0.0.1", port=port)
    request = lambda *a, **k: app_lib.BackgroundServer.request(
        client, *a, **k)
    deadline = time.monotonic() + 240
    while True:
      assert process.poll() is None, process.communicate()
      assert time.monotonic() < deadline, "the server did not come up"
      try:
        if request("GET", "/health")[0] == 200:
          break
      except OSError:
        time.sleep(0.5)
    status, body = request("GET", "/v1/tasks")
    assert body["tasks"] == ["first", "second"], body
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      # Text needs the base's vocabulary, loaded on first use: this request
      # is still running when SIGTERM arrives.
      pending = pool.submit(request, "POST", "/v1/generate", {
          "task": "second", "inputs": "In the beginning",
          "max_decode_length": 8})
      time.sleep(0.3)
      process.send_signal(signal.SIGTERM)
      status, body = pending.result(120)
    assert status == 200, body
    (out,) = body["outputs"]
    assert isinstance(out["text"], str) and len(out["token_ids"]) <= 8
    assert process.wait(120) == 0
    _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
