"""Load test of the serve binary's HTTP server: mixed-task batching against
one task, and against one task per batch (what PEFT's `set_adapter` forces).

K client threads on loopback each send requests one after another (greedy
/v1/generate, `--input` tokens in, `--decode` tokens out) to a server on the
frozen base with `--tasks` prompts. Three servers, run in turn on the same
engine (so the same compiled programs, warmed before timing):

  (a) mixed        requests drawn uniformly over the tasks; batches mix them
  (b) one task     the same load, every request for task 0
  (c) per task     the (a) load, but a batch holds one task only

Reported per server: requests/s, generated tokens/s, latency p50/p90/p99
(ms) and the mean batch size; then (a)/(b) (goal: within 10%) and (a)/(c)
(goal: at least 2x at 8 tasks). The machine's 2 cores run the clients and
the server together, so absolute numbers are low; the ratios are the
point.

  python benchmarks/serve_load.py                 # bible_gpt2_small, ~3 min
  python benchmarks/serve_load.py --small         # a tiny random base, seconds
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from typing import Any

import numpy as np

import prompt_tuning as pt
from prompt_tuning.checkpoints import loader
from prompt_tuning.models import configs
from prompt_tuning.serving import app as app_lib
from prompt_tuning.serving import bank as bank_lib
from prompt_tuning.serving import engine as engine_lib


def _engine(args) -> engine_lib.Engine:
  buckets = dict(length_buckets=(args.input,), decode_buckets=(args.decode,),
                 batch_buckets=tuple(b for b in (1, 2, 4, 8, 16, 32, 64)
                                     if b <= args.batch))
  if args.small:
    config = configs.gpt2("small", vocab_size=256, emb_dim=32, num_heads=2,
                          head_dim=16, mlp_dim=64, num_decoder_layers=2,
                          max_position_embeddings=128)
    method = pt.MultiTaskPrompt(num_tasks=args.tasks, mode="task_only",
                                length=args.prompt_length)
    model, variables = loader.init_random(config, method=method)
    bank = bank_lib.PromptBank(args.tasks, args.prompt_length,
                               config.emb_dim)
    engine = engine_lib.Engine(model, variables, bank, **buckets)
  else:
    engine = engine_lib.Engine.load(
        args.base, None, capacity=args.tasks,
        prompt_length=args.prompt_length, vocabulary=None, **buckets)
  rng = np.random.default_rng(0)
  width = engine.bank.width
  for t in range(args.tasks):
    engine.bank.add(f"task{t}", rng.normal(
        0, 0.1, size=(args.prompt_length, width)).astype(np.float32))
  engine.warmup(engine.groups(engine_lib.GENERATE))
  return engine


def _load(args, tasks_of) -> list[tuple[str, list[int]]]:
  """The requests of every client: (task, input ids)."""
  rng = np.random.default_rng(1)
  return [[(tasks_of(rng), rng.integers(
      3, 200, size=args.input).tolist()) for _ in range(args.requests)]
          for _ in range(args.clients)]


def _run(args, engine, load, one_task_per_batch: bool) -> dict[str, Any]:
  server = app_lib.Server(engine, max_batch_size=args.batch,
                          max_wait_ms=args.max_wait_ms,
                          max_request_inputs=args.batch,
                          one_task_per_batch=one_task_per_batch)
  with app_lib.BackgroundServer(server) as running:
    def client(requests):
      latencies, tokens = [], 0
      for task, ids in requests:
        start = time.perf_counter()
        status, body = running.request("POST", "/v1/generate", {
            "task": task, "inputs": ids, "max_decode_length": args.decode})
        latencies.append(time.perf_counter() - start)
        if status != 200:
          raise RuntimeError(f"{status}: {body}")
        tokens += len(body["outputs"][0]["token_ids"])
      return latencies, tokens

    client(load[0][:2])  # Connections and the event loop, untimed.
    compiles = engine.compiles
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(load)) as pool:
      outcomes = list(pool.map(client, load))
    seconds = time.perf_counter() - start
    metrics = running.request("GET", "/metrics")[1]
  latencies = np.array([x for lat, _ in outcomes for x in lat]) * 1000
  batches = _sum(metrics, 'prompt_tuning_batch_size_count{kind="generate"}')
  rows = _sum(metrics, 'prompt_tuning_batch_size_sum{kind="generate"}')
  return {"requests_s": len(latencies) / seconds,
          "tokens_s": sum(t for _, t in outcomes) / seconds,
          "p50": np.percentile(latencies, 50),
          "p90": np.percentile(latencies, 90),
          "p99": np.percentile(latencies, 99),
          "batch": rows / max(batches, 1),
          "compiles": engine.compiles - compiles}


def _sum(text: str, prefix: str) -> float:
  return sum(float(line.split()[-1]) for line in text.splitlines()
             if line.startswith(prefix))


def main(argv=None) -> dict[str, dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--base", default="bible_gpt2_small")
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--tasks", type=int, default=8)
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--requests", type=int, default=20,
                      help="requests per client")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--input", type=int, default=16)
  parser.add_argument("--decode", type=int, default=16)
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--max_wait_ms", type=float, default=10.0)
  args = parser.parse_args(argv)
  if args.small:
    args.clients, args.requests, args.decode, args.rounds = 8, 3, 4, 1
  engine = _engine(args)
  mixed = _load(args, lambda rng: f"task{rng.integers(args.tasks)}")
  single = [[("task0", ids) for _, ids in c] for c in mixed]
  servers = {"(a) mixed": (mixed, False), "(b) one task": (single, False),
             "(c) per task": (mixed, True)}
  # Rounds alternate the servers, so drift of the machine hits all alike;
  # each server's row is its median round (by requests/s).
  runs = {name: [] for name in servers}
  for _ in range(args.rounds):
    for name, (load, per_task) in servers.items():
      runs[name].append(_run(args, engine, load, per_task))
  results = {name: sorted(r, key=lambda x: x["requests_s"])[len(r) // 2]
             for name, r in runs.items()}
  scaling = _compute_scaling(args, engine)
  print(f"{args.clients} clients x {args.requests} requests, {args.tasks} "
        f"tasks, input {args.input}, decode {args.decode}, base "
        f"{'tiny random' if args.small else args.base}, max batch "
        f"{args.batch}, wait {args.max_wait_ms} ms")
  print("| server | requests/s | tokens/s | p50 ms | p90 ms | p99 ms | "
        "mean batch | compiles |")
  print("|---|---|---|---|---|---|---|---|")
  for name, r in results.items():
    print(f"| {name} | {r['requests_s']:.1f} | {r['tokens_s']:.0f} | "
          f"{r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
          f"{r['batch']:.1f} | {r['compiles']} |")
  a, b, c = (results[k]["requests_s"] for k in results)
  print(f"(a)/(b) = {a / b:.2f} (goal >= 0.90); (a)/(c) = {a / c:.2f} "
        "(goal >= 2)")
  print("\nOne compiled generate batch fed from memory (no HTTP), by batch "
        "size:")
  print("| batch | ms per batch | ms per request |")
  print("|---|---|---|")
  for size, seconds in scaling.items():
    print(f"| {size} | {seconds * 1000:.1f} | {seconds * 1000 / size:.2f} |")
  return results


def _compute_scaling(args, engine) -> dict[int, float]:
  """Seconds per generate call of each batch bucket, mixed tasks: what
  batching can save on this machine (flat per-request cost = nothing)."""
  rng = np.random.default_rng(2)
  out = {}
  for size in engine.batch_buckets:
    requests = [engine_lib.GenerateRequest(
        f"task{i % args.tasks}", rng.integers(3, 200, size=args.input).tolist(),
        args.decode) for i in range(size)]
    engine.generate(requests)
    times = []
    for _ in range(3):
      start = time.perf_counter()
      engine.generate(requests)
      times.append(time.perf_counter() - start)
    out[size] = float(np.median(times))
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
