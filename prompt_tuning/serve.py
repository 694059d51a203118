"""The serve binary: many trained prompts, one frozen base, one HTTP server.

  python -m prompt_tuning.serve --gin_file=runs/serve.gin \
    --gin.BASE="'bible_gpt2_small'" --gin.PROMPTS_DIR="'/tmp/prompts'"

Loads the base once and every prompt in PROMPTS_DIR (one per task: `.npy`
exports, npy export dirs, PEFT prompt-tuning adapters, `train` run dirs or
their `checkpoint_N` dirs; the task is the entry's name), compiles the
greedy and score programs of the configured buckets, then serves the HTTP
API of `serving/app.py` until SIGTERM or Ctrl-C, which finish the requests
already received and exit 0. OpenAPI docs: http://HOST:PORT/docs.

The server keeps no state a restart would lose beyond the prompts added
with PUT (save them to PROMPTS_DIR too), so behind a load balancer run one
process per host or accelerator and route any request to any of them.
"""

from __future__ import annotations

if __name__ == "__main__":
  # `python -m prompt_tuning.serve`: the same entry point as the console
  # script, before anything heavy is imported (see `cli`).
  from prompt_tuning import cli
  cli.serve()
  raise SystemExit(0)

import signal
from typing import Any, Optional, Sequence

import gin

from prompt_tuning import gin_utils


@gin.configurable(denylist=["ready"])
def serve(base: str = gin.REQUIRED, prompts_dir: Optional[str] = None, *,
          host: str = "127.0.0.1", port: int = 8000, capacity: int = 64,
          prompt_length: Optional[int] = None,
          model_config: Any = None, vocabulary: Any = "auto",
          length_buckets: Sequence[int] = (32, 128),
          decode_buckets: Sequence[int] = (32, 64),
          batch_buckets: Sequence[int] = (1, 8, 32),
          max_wait_ms: float = 5.0, max_request_inputs: int = 64,
          warmup: bool = True, ready=None) -> None:
  """Serves until SIGTERM / SIGINT.

  Args:
    base: BASE, a shipped base name or a T5X, Orbax or HF checkpoint.
    prompts_dir: PROMPTS_DIR, one trained prompt per task (None: start
      empty, with prompt_length rows, and add tasks with PUT).
    host, port: where to listen (HOST, PORT).
    capacity: the most tasks served at once (the bank's rows).
    prompt_length: P of an empty bank.
    model_config: what `pt.load_pretrained(config=...)` takes: a shipped
      gin model name ("t5_1_1_base", "gpt2_small"), a .gin file or a
      TransformerConfig; needed for T5X checkpoints, which do not record
      every hyper-parameter.
    vocabulary: for text requests: "auto" (a shipped base's own), None (token
      ids only), or a `prompt_tuning.tasks.vocabularies` name.
    length_buckets, decode_buckets, batch_buckets: padded input lengths,
      decode lengths and batch sizes; each combination compiles once, and
      the largest of each is the limit a request may ask for. Each
      (length, decode) pair compiles one greedy and one score program per
      batch size: 24 with the defaults, about 40 s for bible_gpt2_small on 2
      CPU cores.
    max_wait_ms: how long a queued request waits for others to batch with.
    max_request_inputs: the most rows (inputs, or inputs x candidates) in
      one request.
    warmup: compile the greedy and score programs before listening, so no
      request waits for a compile.
    ready: called with the bound port once listening (tests).
  """
  # Imported here: the server stack is needed only by this binary.
  # pylint: disable=g-import-not-at-top
  import uvicorn
  from prompt_tuning.serving import app as app_lib
  from prompt_tuning.serving import engine as engine_lib
  # pylint: enable=g-import-not-at-top
  engine = engine_lib.Engine.load(
      base, prompts_dir, capacity=capacity, prompt_length=prompt_length,
      config=model_config, vocabulary=vocabulary, capacity_setting="--gin.serve.capacity",
      length_buckets=length_buckets, decode_buckets=decode_buckets,
      batch_buckets=batch_buckets)
  if warmup:
    groups = engine.groups("generate") + engine.groups("score")
    print(f"serve: compiling {len(groups) * len(engine.batch_buckets)} "
          "programs for the buckets before listening "
          "(--gin.serve.warmup=False compiles on first use instead)",
          flush=True)
    engine.warmup(groups)
  server = app_lib.Server(engine, max_batch_size=max(batch_buckets),
                          max_wait_ms=max_wait_ms,
                          max_request_inputs=max_request_inputs)
  config = uvicorn.Config(server.app, host=host, port=port,
                          log_level="warning", timeout_graceful_shutdown=60)
  uvicorn_server = uvicorn.Server(config)
  if ready is not None:
    original = uvicorn_server.startup

    async def startup(sockets=None):
      await original(sockets)
      ready(uvicorn_server.servers[0].sockets[0].getsockname()[1])
    uvicorn_server.startup = startup
  print(f"serve: {len(engine.bank.names())} tasks of {base} on "
        f"http://{host}:{port} (docs: /docs)", flush=True)
  # uvicorn drains on SIGTERM / SIGINT, then re-raises the signal to the
  # handler it found; a no-op one makes the drained exit a clean exit 0.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
  uvicorn_server.run()
  print("serve: stopped after finishing every request received.", flush=True)


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  gin_utils.run(serve, argv)
