"""Decoding throughput: ours vs transformers `generate` (+ PEFT) on CPU.

Two parts (issue 6, item 4), greedy and beam-4 in each, batch 8, 32 new
tokens per example; tokens/s = batch * new tokens / seconds (beam search
counts the returned best sequences, not the beams):

  S     Config "S" (train_step.py's T5.1.1-style encoder-decoder, inputs 128)
        with prompt tuning, P = 20: ours `PromptTuning(20)` vs PEFT
        `PromptTuningConfig(20, num_transformer_submodules=1)` on the same
        saved random model. PEFT's prompt embedding is set to ours' prompt
        values, so both decode the same function.
  gpt2  A GPT-2-small-shaped decoder-only model (d 768, 12 heads, 12 layers,
        vocab 50257, 1024 positions; random `GPT2LMHeadModel`, saved and
        loaded by ours), a 64-token source per example: ours
        `MultiStagePrompting(20)` (source as `encoder_input_tokens`; encode,
        re-encode, then decode from the separator 50256) vs ours
        `PrefixTuning(20)` (source as the prompt region of
        `decoder_input_tokens`, `decoder_causal_attention`), with PEFT
        `PrefixTuningConfig(20, prefix_projection=False)` on the same GPT-2
        as a reference for the prefix. P = 20 for both methods (the issue
        names no other length; MSP's paper uses 128). PEFT's prefix table
        is set to ours' values (GPT-2 layer i reads PEFT slot i).

Exactly 32 new tokens on every side: random weights may emit EOS early,
which would shorten one side's run. Ours loads with `eos_id=-1` (no token
can end a sequence; every example runs to its budget); `generate` gets
`eos_token_id=None` (and `max_new_tokens=32`), and its outputs are checked
to be 32 tokens wide. With no EOS every beam hypothesis ends at length 32,
so the length penalty (T5X's ((5 + 32) / 6) ** 0.6 in ours, transformers'
32 ** 1.0) divides all of them alike and cannot change which beam wins;
each side keeps its default, and `early_stopping` is moot (no hypothesis
finishes before the last step).

Correctness (not timing): the fraction of output tokens equal to the
reference's on identical weights in float32, greedy and beam (best beam);
they should match or nearly so (a near-tie flipped by rounding changes the
rest of that row): each row's `token_match` for its own decode mode, and
`greedy_token_match` of its pair on every row. The tokens come from each
contender's first call after compiling (untimed). MSP has no reference
implementation: its rows compare times with ours' prefix tuning and carry
no token match.

Ours is `predict_batch_with_aux(params, batch, decoder_params={"beam_size":
k})` under one `jax.jit` (the library's own jitted decoder inlines), lowered
and compiled up front: trace and compile seconds are reported apart from the
timed runs. transformers runs under `torch.inference_mode()` with torch on
as many threads as XLA uses. Contenders alternate (A B A B ...), each the
median of `--reps` timed calls after `--warmup` untimed ones.

  python benchmarks/decode.py                  # config S + GPT-2-small: minutes
  python benchmarks/decode.py --parts s        # config S only
  python benchmarks/decode.py --small          # a check, < 1 minute (compiling)
  python benchmarks/decode.py --parts gpt2 --reps 9
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Mapping, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import config_s  # pylint: disable=g-import-not-at-top,wrong-import-position
from config_s import Shape  # pylint: disable=g-import-not-at-top,wrong-import-position

PARTS = ("s", "gpt2")
BEAMS = (("greedy", 1), ("beam4", 4))
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results", "decode.json")
# No token id equals it: ours never stops before the budget.
NO_EOS = -1


@dataclasses.dataclass(frozen=True)
class Gpt2Shape:
  """A GPT-2-family decoder-only model and its source length (part gpt2);
  batch, new tokens and P come from the config-S Shape."""

  d_model: int = 768
  num_heads: int = 12
  num_layers: int = 12
  vocab: int = 50257
  positions: int = 1024  # n_positions
  source: int = 64  # source (prompt) tokens per example

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if getattr(self, field.name) < 1:
        raise ValueError(f"{field.name}={getattr(self, field.name)} must be "
                         ">= 1.")

  @property
  def separator_id(self) -> int:
    """MSP's separator: the last id (GPT-2's <|endoftext|>, 50256)."""
    return self.vocab - 1


GPT2_SMALL = Gpt2Shape()
# For --small: seconds to compile. (With 2 layers MSP's encoding prompt
# cannot change the output, methods/msp.py; the work per stage is the same.)
GPT2_TINY = Gpt2Shape(d_model=64, num_heads=2, num_layers=2, vocab=512,
                      positions=128, source=16)


# ----------------------------------------------------------------------------
# Shared pieces.


def compile_decoder(model, params, batch, beam_size: int,
                    take: Callable[[Any], Any] = lambda t: t
                    ) -> dict[str, Any]:
  """Ours' decoding of `batch`, jitted and compiled up front.

  Returns {"run", "trace_s", "compile_s", "box"}; `run()` decodes once and
  leaves the new tokens (`take` of the best sequences) in box["tokens"].
  A helper the other benchmarks may want too (any model, any batch).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  decode = jax.jit(lambda p, b: model.predict_batch_with_aux(
      p, b, decoder_params={"beam_size": beam_size})[0])
  start = time.perf_counter()
  lowered = decode.lower(params, batch)
  traced = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  box = {}

  def run():
    tokens = compiled(params, batch)
    jax.block_until_ready(tokens)
    box["tokens"] = tokens

  run()
  box["tokens"] = take(np.asarray(box["tokens"]))
  return {"run": run, "trace_s": traced - start,
          "compile_s": compiled_at - traced, "box": box}


def hf_decoder(model, inputs: Mapping[str, Any], beam_size: int,
               new_tokens: int, skip: int, **generate_kwargs
               ) -> dict[str, Any]:
  """transformers' `generate` of exactly `new_tokens` (EOS off).

  `skip`: leading output columns that are not new tokens (T5's decoder
  start, GPT-2's prompt). Returns {"run", "box"} as `compile_decoder`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  box = {}

  def run():
    with torch.inference_mode():
      box["tokens"] = model.generate(
          **inputs, max_new_tokens=new_tokens, num_beams=beam_size,
          do_sample=False, eos_token_id=None, **generate_kwargs)

  run()
  tokens = box["tokens"].numpy()[:, skip:]
  if tokens.shape[1] != new_tokens:
    raise RuntimeError(f"generate returned {tokens.shape[1]} new tokens, "
                       f"not {new_tokens}: it stopped early.")
  box["tokens"] = tokens
  return {"run": run, "box": box}


def token_match(a, b) -> float:
  """Fraction of equal tokens of two [batch, new tokens] arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.mean(np.asarray(a) == np.asarray(b)))


def timed_row(part: str, decode: str, ours_name: str, ref_name: str,
              times: Mapping[str, list[float]], ours: Mapping[str, Any],
              ref: Mapping[str, Any], tokens: int,
              match: Optional[float]) -> dict[str, Any]:
  """One table row: `ours` against `ref` from the same alternating run."""
  ours_s = common.median(times[ours_name])
  ref_s = common.median(times[ref_name])
  return {
      "part": part, "decode": decode, "ours": ours_name, "ref": ref_name,
      "ours_s": ours_s, "ref_s": ref_s,
      "ours_tok_s": tokens / ours_s, "ref_tok_s": tokens / ref_s,
      "ratio": ours_s / ref_s, "speedup": ref_s / ours_s,
      "compile_s": ours.get("compile_s"), "trace_s": ours.get("trace_s"),
      "ref_compile_s": ref.get("compile_s"),
      "token_match": match,
      "times_ours": times[ours_name], "times_ref": times[ref_name],
  }


def bench_pairs(part: str, contenders: Mapping[str, Callable[[int], Any]],
                pairs, tokens: int, reps: int, warmup: int
                ) -> list[dict[str, Any]]:
  """Greedy then beam-4: builds every contender for that mode (each a
  `beam_size -> compile_decoder / hf_decoder` dict), times them alternating
  and returns one row per (ours, ref, compare tokens?) pair."""
  rows = []
  for decode, beam_size in BEAMS:
    t0 = time.perf_counter()
    built = {name: make(beam_size) for name, make in contenders.items()}
    first = {name: b["box"]["tokens"] for name, b in built.items()}
    times = common.time_alternating({n: b["run"] for n, b in built.items()},
                                    reps, warmup)
    for ours_name, ref_name, compare in pairs:
      match = (token_match(first[ours_name], first[ref_name]) if compare
               else None)
      rows.append(timed_row(part, decode, ours_name, ref_name, times,
                            built[ours_name], built[ref_name], tokens, match))
    # Progress, so a run cut short still shows what it measured.
    print(f"  {part} {decode}: done in {time.perf_counter() - t0:.0f} s; "
          + "; ".join(f"{r['ours']} {r['ours_s']:.3f} s vs {r['ref']} "
                      f"{r['ref_s']:.3f} s" for r in rows[-len(pairs):]),
          flush=True)
  # Each pair's greedy match on all its rows (what a check reads first).
  greedy = {(r["ours"], r["ref"]): r["token_match"] for r in rows
            if r["decode"] == "greedy"}
  for r in rows:
    r["greedy_token_match"] = greedy[(r["ours"], r["ref"])]
  return rows


def with_weight_bytes(rows, decoder_params) -> list[dict[str, Any]]:
  """Adds the bytes of weights every decoding step reads (the decoder stack
  and its logits matrix) to each row."""
  for row in rows:
    row["weight_bytes"] = common.tree_bytes(decoder_params)
  return rows


def add_limits(rows, new_tokens: int, bandwidth: float) -> None:
  """Per-step time vs the floor set by streaming the decoder's weights.

  At batch 8 a step does ~2 FLOPs per weight per row: it is bound by reading
  the weights, not by the matmul peak. ms/step counts the whole call (the
  encoder or prefill included) over its steps; the floor is weight bytes /
  measured read bandwidth, for one step.
  """
  for row in rows:
    row["ours_ms_step"] = row["ours_s"] / new_tokens * 1e3
    row["ref_ms_step"] = row["ref_s"] / new_tokens * 1e3
    row["floor_ms_step"] = row["weight_bytes"] / bandwidth * 1e3


def _quiet_warnings() -> None:
  # transformers' deprecation reached from PEFT, not ours to fix.
  warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*",
                          FutureWarning)


# ----------------------------------------------------------------------------
# Part S: config S encoder-decoder, prompt tuning vs PEFT.


def bench_config_s(s: Shape, reps: int, warmup: int) -> list[dict[str, Any]]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import peft  # pylint: disable=g-import-not-at-top
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  batch = config_s.make_batch(s)
  base = config_s.build_hf_model(s).eval()
  with tempfile.TemporaryDirectory() as path:
    base.save_pretrained(path)
    model, variables = pt.load_pretrained(
        path, method=config_s.our_method("prompt", s), eos_id=NO_EOS)
  params = variables["params"]
  prompt = np.asarray(params["prompt"]["prompt"])  # [P, d_model]
  theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
      task_type="SEQ_2_SEQ_LM", num_virtual_tokens=s.length,
      # PEFT's seq2seq default (2) prompts the decoder too; ours the encoder.
      num_transformer_submodules=1)).eval()
  with torch.no_grad():
    theirs.prompt_encoder["default"].embedding.weight.copy_(
        torch.tensor(prompt))
  # The decode length comes from decoder_target_tokens' width.
  ours_batch = {k: batch[k] for k in ("encoder_input_tokens",
                                      "decoder_target_tokens")}
  hf_inputs = config_s.hf_inputs(batch)
  hf_inputs = {k: hf_inputs[k] for k in ("input_ids", "attention_mask")}
  contenders = {
      "ours prompt": lambda k: compile_decoder(model, params, ours_batch, k),
      "PEFT prompt": lambda k: hf_decoder(
          theirs, hf_inputs, k, s.targets, skip=1,  # the decoder start
          pad_token_id=0),
  }
  rows = bench_pairs("S", contenders, [("ours prompt", "PEFT prompt", True)],
                     s.batch * s.targets, reps, warmup)
  return with_weight_bytes(rows, params["decoder"])


# ----------------------------------------------------------------------------
# Part gpt2: GPT-2-small-shaped decoder-only, MSP vs prefix tuning (+ PEFT).


def build_gpt2(g: Gpt2Shape):
  """A random GPT-2 (GPT2LMHeadModel, tied head) of shape `g`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.GPT2Config(
      n_embd=g.d_model, n_head=g.num_heads, n_layer=g.num_layers,
      vocab_size=g.vocab, n_positions=g.positions,
      bos_token_id=g.vocab - 1, eos_token_id=g.vocab - 1)
  return transformers.GPT2LMHeadModel(config).eval()


def gpt2_batches(s: Shape, g: Gpt2Shape) -> dict[str, dict[str, Any]]:
  """The same random sources as MSP's and prefix tuning's batches.

  Ids 1 .. vocab - 2: MSP reads id 0 as source padding, and the last id is
  the separator.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  source = rng.integers(1, g.vocab - 1, (s.batch, g.source), dtype=np.int32)
  width = g.source + s.targets
  region = np.zeros((s.batch, width), np.int32)
  region[:, :g.source] = 1
  return {
      "source": source,
      # MSP: encoder-decoder features; the target width sets the length.
      "msp": {"encoder_input_tokens": source,
              "decoder_target_tokens": np.zeros((s.batch, s.targets),
                                                np.int32)},
      # Decoder-only: the prompt region is the source, budget = the rest.
      "prefix": {"decoder_input_tokens": np.pad(source,
                                                ((0, 0), (0, s.targets))),
                 "decoder_causal_attention": region},
  }


def peft_prefix_table(table):
  """Ours [layers, 2, P, heads, head_dim] as PEFT's [P, layers * 2 * H]
  embedding (GPT-2 layer i reads slot i)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  table = np.asarray(table)
  return table.transpose(2, 0, 1, 3, 4).reshape(table.shape[2], -1)


def bench_gpt2(s: Shape, g: Gpt2Shape, reps: int, warmup: int
               ) -> list[dict[str, Any]]:
  import peft  # pylint: disable=g-import-not-at-top
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  base = build_gpt2(g)
  with tempfile.TemporaryDirectory() as path:
    base.save_pretrained(path)
    msp_model, msp_vars = pt.load_pretrained(
        path, method=pt.MultiStagePrompting(
            length=s.length, separator_id=g.separator_id), eos_id=NO_EOS)
    prefix_model, prefix_vars = pt.load_pretrained(
        path, method=pt.PrefixTuning(length=s.length), eos_id=NO_EOS)
  theirs = peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
      task_type="CAUSAL_LM", num_virtual_tokens=s.length,
      prefix_projection=False)).eval()
  with torch.no_grad():
    theirs.prompt_encoder["default"].embedding.weight.copy_(torch.tensor(
        peft_prefix_table(prefix_vars["params"]["prefix"]["decoder_self"]
                          ["kv"])))
  batches = gpt2_batches(s, g)
  source = torch.from_numpy(batches["source"]).long()
  hf_inputs = {"input_ids": source, "attention_mask": torch.ones_like(source)}
  new = s.targets
  contenders = {
      "ours MSP": lambda k: compile_decoder(
          msp_model, msp_vars["params"], batches["msp"], k),
      "ours prefix": lambda k: compile_decoder(
          # Outputs hold the new tokens first, zeros after.
          prefix_model, prefix_vars["params"], batches["prefix"], k,
          take=lambda t: t[:, :new]),
      "PEFT prefix": lambda k: hf_decoder(
          theirs, hf_inputs, k, new, skip=g.source,
          pad_token_id=g.vocab - 1),
  }
  pairs = [("ours MSP", "ours prefix", False),
           ("ours prefix", "PEFT prefix", True)]
  rows = bench_pairs("gpt2", contenders, pairs, s.batch * new, reps, warmup)
  return with_weight_bytes(rows, prefix_vars["params"]["decoder"])


# ----------------------------------------------------------------------------


COLUMNS = [
    ("part", "part", "s"), ("decode", "decode", "s"), ("ours", "ours", "s"),
    ("ref", "vs", "s"), ("ours_s", "ours s", ".3f"), ("ref_s", "vs s", ".3f"),
    ("ours_tok_s", "ours tok/s", ".0f"), ("ref_tok_s", "vs tok/s", ".0f"),
    ("ratio", "ours/vs", ".2f"), ("compile_s", "ours compile s", ".1f"),
    ("ours_ms_step", "ours ms/step", ".1f"),
    ("ref_ms_step", "vs ms/step", ".1f"),
    ("floor_ms_step", "floor ms/step", ".1f"),
    ("token_match", "token match", ".3f"),
]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--parts", default=",".join(PARTS),
                      help=f"comma-separated subset of {PARTS}")
  parser.add_argument("--reps", type=int, default=7,
                      help="timed repetitions per side (>= 5 for reported "
                      "numbers)")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed calls per side after compilation (and "
                      "the first, correctness, call)")
  config_s.add_shape_args(parser)
  parser.add_argument("--source", type=int, default=None,
                      help="GPT-2 source tokens per example (default 64; "
                      "--small 16)")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: the cores XLA uses)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  args = parser.parse_args(argv)
  args.parts = common.choices_arg(parser, "parts", args.parts, PARTS)
  common.check_reps(parser, args)
  return args


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  shape = config_s.shape_from_args(args)
  gpt2 = GPT2_TINY if args.small else GPT2_SMALL
  if args.source is not None:
    gpt2 = dataclasses.replace(gpt2, source=args.source)
  threads = common.torch_threads(args.threads)
  _quiet_warnings()
  common.note_reps(args.reps)
  print(f"torch threads {threads}")

  rows = []
  if "s" in args.parts:
    rows += bench_config_s(shape, args.reps, args.warmup)
  if "gpt2" in args.parts:
    rows += bench_gpt2(shape, gpt2, args.reps, args.warmup)

  bandwidth = common.memory_bandwidth()
  add_limits(rows, shape.targets, bandwidth["bytes_per_s"])
  # A decoding step's largest dot (the logits), alone: how fast XLA streams
  # a weight matrix for 8 rows.
  logits_dot = common.dot_rate(shape.batch, shape.d_model, shape.vocab)
  print(f"read bandwidth ({bandwidth['mib']} MiB jnp.sum): "
        f"{bandwidth['bytes_per_s'] / 1e9:.1f} GB/s; the logits dot "
        f"[{shape.batch}x{shape.d_model}]x[{shape.d_model}x{shape.vocab}] "
        f"alone reads its weights at {logits_dot['bytes_per_s'] / 1e9:.1f} "
        "GB/s")
  name = "small" if args.small else "S"
  print(f"\nconfig {name}: {dataclasses.asdict(shape)}; gpt2 "
        f"{dataclasses.asdict(gpt2)}; {shape.targets} new tokens, batch "
        f"{shape.batch}; median of {args.reps} alternating reps after "
        f"{args.warmup} warm-up calls")
  table = common.print_table(rows, COLUMNS)
  payload = {"benchmark": "decode", "config": name,
             "shape": dataclasses.asdict(shape),
             "gpt2_shape": dataclasses.asdict(gpt2), "parts": args.parts,
             "reps": args.reps, "warmup": args.warmup,
             "torch_threads": threads, "new_tokens": shape.targets,
             "eos": "off on both sides (ours eos_id=-1, generate "
             "eos_token_id=None): every example decodes exactly "
             "new_tokens tokens",
             "tokens_per_s": "batch * new_tokens / median seconds per call "
             "(beam search: the best sequence per example)",
             "bandwidth": bandwidth, "logits_dot": logits_dot,
             "limit": "floor ms/step = bytes of the decoder's weights "
             "(stack + logits) / measured read bandwidth",
             "rows": rows, "table": table}
  print(f"wrote {common.write_json(args.out, payload)}")
  return payload


if __name__ == "__main__":
  main()
