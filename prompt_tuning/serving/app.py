"""The HTTP JSON API over an `Engine` (FastAPI; OpenAPI docs at /docs).

  POST   /v1/generate       {task, inputs, max_decode_length, decoding}
  POST   /v1/score          {task, inputs, targets | candidates}
  GET    /v1/tasks
  PUT    /v1/tasks/{name}   a .npy [P, H] body (or JSON {"prompt": [[...]]})
  DELETE /v1/tasks/{name}
  GET    /health
  GET    /metrics           Prometheus text

Every error is `{"error": "<one message>"}` with a 4xx status (5xx only
for faults of the server itself), and no error stops the server: requests
of other clients in the same batch still get their results. Inputs are text
(when the engine has a vocabulary) or token ids, one or many per request;
each becomes one row of the batch the `Batcher` builds across clients.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Optional, Union

import fastapi
from fastapi import responses
import numpy as np
import pydantic

from prompt_tuning.serving import engine as engine_lib
from prompt_tuning.serving.batcher import BatchStats
from prompt_tuning.serving.batcher import Batcher
from prompt_tuning.serving.metrics import ServerMetrics

Inputs = Union[str, list[str], list[int], list[list[int]]]


class DecodingBody(pydantic.BaseModel):
  """How to pick tokens: greedy, beam or sampling."""

  model_config = pydantic.ConfigDict(extra="forbid")
  mode: str = "greedy"
  size: int = pydantic.Field(4, description="beam size")
  alpha: float = pydantic.Field(0.6, description="beam length penalty")
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 0.0
  seed: Optional[int] = None


class GenerateBody(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  task: str
  inputs: Inputs = pydantic.Field(
      description="text, a list of texts, token ids, or a list of id lists")
  max_decode_length: int = 32
  decoding: DecodingBody = DecodingBody()


class ScoreBody(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  task: str
  inputs: Inputs
  targets: Optional[Inputs] = pydantic.Field(
      None, description="one target per input: its log-likelihood")
  candidates: Optional[Union[list[str], list[list[int]]]] = pydantic.Field(
      None, description="the same candidates for every input: rank "
      "classification")


class HttpError(Exception):
  """One clear message with its status."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def _error(status: int, message: str) -> responses.JSONResponse:
  return responses.JSONResponse({"error": message}, status_code=status)


def _first_error(errors: list[dict[str, Any]]) -> tuple[int, str]:
  """(status, message) from pydantic's errors: malformed JSON is 400, a
  body of the wrong shape 422, each named by its field."""
  first = errors[0] if errors else {}
  if first.get("type") == "json_invalid":
    reason = first.get("ctx", {}).get("error", "parse error")
    return 400, (f"the body is not valid JSON ({reason}); send a UTF-8 JSON "
                 "object.")
  where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
  if first.get("type") == "missing":
    return 422, f"{where} is missing."
  if first.get("type") == "extra_forbidden":
    return 422, f"{where} is not a field of this request."
  return 422, f"{where or 'the body'}: {first.get('msg', 'invalid')}."


class Server:
  """The app and what it serves: one engine, one batcher, its metrics."""

  def __init__(self, engine: engine_lib.Engine, *, max_batch_size: int = 32,
               max_wait_ms: float = 5.0, max_request_inputs: int = 64,
               one_task_per_batch: bool = False):
    """`one_task_per_batch` batches each task apart, as serving with PEFT's
    `set_adapter` must (one adapter active per forward pass); it exists to
    measure what mixed batching saves (benchmarks/serve_load.py)."""
    self.engine = engine
    self.max_request_inputs = max_request_inputs
    self.metrics = ServerMetrics(compiles=lambda: engine.compiles,
                                 queued=lambda: self.batcher.queued)
    group_key = ((lambda kind, r: (engine.group_key(r), r.task))
                 if one_task_per_batch
                 else (lambda kind, r: engine.group_key(r)))
    self.batcher = Batcher(self._run, group_key,
                           max_batch_size=max_batch_size,
                           max_wait_s=max_wait_ms / 1000,
                           on_batch=self._observe)
    self.app = self._build_app()

  # ------------------------------------------------------------------------
  # Batches.

  def _run(self, kind: str, requests: list[Any]) -> list[Any]:
    if kind == engine_lib.GENERATE:
      return self.engine.generate(requests)
    return self.engine.score(requests)

  def _observe(self, stats: BatchStats) -> None:
    tokens = sum(len(r.output_ids) for r in stats.results
                 if isinstance(r, engine_lib.GenerateResult))
    self.metrics.observe_batch(stats, tokens)

  async def _submit(self, kind: str, requests: list[Any]) -> list[Any]:
    """Every row's result; the first failing row's error is the answer.

    All rows are queued at once, so they can share one batch. When the
    answer is an error, or the client goes away (the handler is
    cancelled), rows not yet run are dropped from the queue."""
    futures = [self.batcher.submit(kind, r) for r in requests]
    try:
      results = []
      for request, future in zip(requests, futures):
        try:
          results.append(await future)
        except engine_lib.RequestError as e:
          if request.task not in self.engine.bank.names():
            raise HttpError(404, f"task {request.task!r} was removed while "
                            "the request was queued.") from e
          raise HttpError(422, str(e)) from e
      return results
    finally:
      for future in futures:
        future.cancel()  # A no-op for the ones that finished.

  # ------------------------------------------------------------------------
  # Request parsing.

  def _rows(self, inputs: Any, what: str) -> list[Any]:
    """One entry per row: a text or a list of ids."""
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs
        and all(isinstance(x, int) for x in inputs)):
      rows = [inputs]
    else:
      rows = list(inputs)
    if not rows:
      raise HttpError(422, f"{what} is empty; send at least one input.")
    if len(rows) > self.max_request_inputs:
      raise HttpError(413, f"{len(rows)} {what} in one request; the limit "
                      f"is {self.max_request_inputs} (--max_request_inputs)."
                      " Split the request.")
    return rows

  def _ids(self, row: Any, what: str) -> Any:
    if isinstance(row, str):
      if not self.engine.has_vocabulary:
        raise HttpError(422, f"{what} is text, but this base has no "
                        "vocabulary configured; send token ids.")
      return self.engine.encode(row)
    return row

  def _check_task(self, task: str) -> None:
    if task not in self.engine.bank.names():
      known = sorted(self.engine.bank.names())
      raise HttpError(404, f"unknown task {task!r}; the server has {known} "
                      "(GET /v1/tasks).")

  def _validated(self, request: Any) -> Any:
    try:
      self.engine.validate(request)
    except engine_lib.RequestError as e:
      raise HttpError(422, str(e)) from e
    return request

  @staticmethod
  def _decoding(body: DecodingBody) -> engine_lib.Decoding:
    return engine_lib.Decoding(
        mode=body.mode, beam_size=body.size, alpha=body.alpha,
        temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
        seed=body.seed)

  # ------------------------------------------------------------------------
  # Endpoints.

  async def generate(self, body: GenerateBody) -> dict[str, Any]:
    self._check_task(body.task)
    decoding = self._decoding(body.decoding)
    requests = [self._validated(engine_lib.GenerateRequest(
        body.task, self._ids(row, "inputs"), body.max_decode_length,
        decoding)) for row in self._rows(body.inputs, "inputs")]
    results = await self._submit(engine_lib.GENERATE, requests)
    return {"task": body.task, "outputs": [
        {"text": r.text, "token_ids": list(r.output_ids),
         "score": _finite(r.score), "seed": r.seed} for r in results]}

  async def score(self, body: ScoreBody) -> dict[str, Any]:
    self._check_task(body.task)
    if (body.targets is None) == (body.candidates is None):
      raise HttpError(422, "send either targets (one per input) or "
                      "candidates (ranked for every input), not both or "
                      "neither.")
    inputs = [self._ids(r, "inputs") for r in self._rows(body.inputs,
                                                          "inputs")]
    if body.targets is not None:
      targets = [self._ids(t, "targets") for t in self._rows(body.targets,
                                                             "targets")]
      if len(targets) != len(inputs):
        raise HttpError(422, f"{len(inputs)} inputs but {len(targets)} "
                        "targets; send one target per input.")
      pairs = list(zip(inputs, targets))
    else:
      candidates = [self._ids(c, "candidates")
                    for c in self._rows(body.candidates, "candidates")]
      if len(inputs) * len(candidates) > self.max_request_inputs:
        raise HttpError(413, f"{len(inputs)} inputs x {len(candidates)} "
                        f"candidates = {len(inputs) * len(candidates)} rows; "
                        f"the limit is {self.max_request_inputs} "
                        "(--max_request_inputs).")
      pairs = [(i, c) for i in inputs for c in candidates]
    requests = [self._validated(engine_lib.ScoreRequest(body.task, i, t))
                for i, t in pairs]
    results = [r.log_likelihood for r in
               await self._submit(engine_lib.SCORE, requests)]
    if body.targets is not None:
      return {"task": body.task,
              "log_likelihoods": [_finite(x) for x in results]}
    n = len(body.candidates)
    table = [results[i * n:(i + 1) * n] for i in range(len(inputs))]
    return {"task": body.task,
            "log_likelihoods": [[_finite(x) for x in row] for row in table],
            "best": [int(np.argmax(row)) for row in table]}

  def tasks(self) -> dict[str, Any]:
    bank = self.engine.bank
    return {"tasks": sorted(bank.names()), "prompt_shape": list(bank.shape),
            "capacity": bank.capacity}

  async def put_task(self, name: str, request: fastapi.Request
                     ) -> dict[str, Any]:
    body = await request.body()
    if request.headers.get("content-type", "").startswith(
        "application/json"):
      try:
        array = np.asarray(pydantic.TypeAdapter(dict).validate_json(body)
                           ["prompt"], np.float32)
      except (ValueError, KeyError, TypeError) as e:
        raise HttpError(400, "a JSON body must be {\"prompt\": [[...], ...]} "
                        f"holding the [P, H] prompt ({e}).") from e
    else:
      try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
      except (ValueError, OSError, EOFError) as e:
        raise HttpError(400, "the body is not a .npy file; send the "
                        "prompt.npy written by pt.export_prompt "
                        "(curl --data-binary @prompt.npy).") from e
    try:
      replaced = name in self.engine.bank.names()
      self.engine.bank.add(name, array)
    except ValueError as e:
      raise HttpError(422, str(e)) from e
    return {"task": name, "replaced": replaced,
            "prompt_shape": list(self.engine.bank.shape)}

  def delete_task(self, name: str) -> dict[str, Any]:
    self._check_task(name)
    self.engine.bank.remove(name)
    return {"task": name, "removed": True}

  # ------------------------------------------------------------------------
  # The app.

  def _build_app(self) -> fastapi.FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_):
      self.batcher.start()
      yield
      await self.batcher.close()  # Drains what is queued.

    app = fastapi.FastAPI(
        title="prompt_tuning server",
        description="Many soft prompts, one frozen model, mixed batches.",
        lifespan=lifespan)

    @app.middleware("http")
    async def count(request: fastapi.Request, call_next):
      response = await call_next(request)
      self.metrics.requests.labels(request.url.path if request.url.path in (
          "/v1/generate", "/v1/score", "/v1/tasks", "/health", "/metrics")
          else "other", str(response.status_code)).inc()
      return response

    @app.exception_handler(HttpError)
    async def http_error(_, e: HttpError):
      return _error(e.status, e.message)

    @app.exception_handler(fastapi.exceptions.RequestValidationError)
    async def invalid(_, e):
      return _error(*_first_error(e.errors()))

    @app.exception_handler(fastapi.HTTPException)
    async def framework(_, e):
      return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def fault(_, e: Exception):
      return _error(500, f"internal error: {type(e).__name__}: {e}")

    app.post("/v1/generate")(self.generate)
    app.post("/v1/score")(self.score)
    app.get("/v1/tasks")(self.tasks)
    app.put("/v1/tasks/{name}")(self.put_task)
    app.delete("/v1/tasks/{name}")(self.delete_task)

    @app.get("/health")
    def health() -> dict[str, Any]:
      return {"status": "ok", "tasks": len(self.engine.bank.names()),
              "compiles": self.engine.compiles}

    @app.get("/metrics")
    def metrics() -> fastapi.Response:
      body, content_type = self.metrics.render()
      return fastapi.Response(body, media_type=content_type)

    return app


def _finite(x: float) -> Optional[float]:
  """JSON has no NaN/inf: they become null."""
  return float(x) if math.isfinite(x) else None


class BackgroundServer:
  """A `Server` under uvicorn on a free loopback port, in a daemon thread
  (tests, benchmarks, notebooks); `request` is a minimal JSON client."""

  def __init__(self, server: Server, host: str = "127.0.0.1"):
    # Imported here: only this helper runs uvicorn in-process.
    import socket  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    import uvicorn  # pylint: disable=g-import-not-at-top
    self.server, self.host = server, host
    sock = socket.socket()
    sock.bind((host, 0))
    self.port = sock.getsockname()[1]
    self._uvicorn = uvicorn.Server(uvicorn.Config(
        server.app, log_level="warning", lifespan="on"))
    self._thread = threading.Thread(
        target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
    self._thread.start()
    deadline = time.monotonic() + 60
    while not self._uvicorn.started:
      if time.monotonic() > deadline or not self._thread.is_alive():
        raise RuntimeError("the background server did not start.")
      time.sleep(0.02)

  def stop(self) -> None:
    """Finishes queued requests, then stops."""
    self._uvicorn.should_exit = True
    self._thread.join(60)

  def __enter__(self) -> "BackgroundServer":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def request(self, method: str, path: str, body: Any = None, *,
              content_type: str = "application/json",
              timeout: float = 120) -> tuple[int, Any]:
    """(status, the parsed JSON answer, or its text)."""
    import http.client  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
    try:
      if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
      headers = {"Content-Type": content_type} if body is not None else {}
      conn.request(method, path, body=body, headers=headers)
      response = conn.getresponse()
      raw = response.read()
    finally:
      conn.close()
    if "json" in response.getheader("Content-Type", ""):
      return response.status, json.loads(raw)
    return response.status, raw.decode()
