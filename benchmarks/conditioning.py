r"""Does a base use its source? The gate before prompt-tuning it to translate.

  python benchmarks/conditioning.py bible_gpt2_small bible_t5_base
  python benchmarks/conditioning.py pretrain/x/causal_lm/checkpoint_500 \
      --config=bible_gpt2_small

For held-out verse pairs (`bible_en_es.tsv.gz`, validation split), the mean
negative log-likelihood per target token of the target verse given its own
source verse and given another verse's source (the sources rolled by one).
The gap, in nats per token, is what the base takes from its source: a soft
prompt can only select and shape an ability the frozen base has, so a base
with a gap near 0 cannot be steered into translating however the prompt is
trained.

Two pairings: `en->es` (WEB verse, then its Reina-Valera 1909 translation)
and `en->en` (the WEB verse twice: can it copy?). A decoder-only base reads
`source \n target</s>` as a bilingual pretraining document is written and
is scored on the target and EOS; an encoder-decoder reads the source in the
encoder. No prompt is used.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import pathlib
import sys
from typing import Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tasks" / "data" / "bible_en_es.tsv.gz"
SPM = ROOT / "tasks" / "data" / "bible_spm.model"
EOS = 1


def heldout_pairs(count: int) -> list[tuple[str, str]]:
  """The first `count` validation (en, es) verse pairs."""
  with gzip.open(PAIRS, "rt", encoding="utf-8", newline="") as f:
    rows = [r for r in csv.DictReader(f, delimiter="\t")
            if r["split"] == "validation"]
  return [(r["en"], r["es"]) for r in rows[:count]]


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    row = list(row)[:length]
    out[i, :len(row)] = row
  return out


def batch_for(model, sources: Sequence[list[int]],
              targets: Sequence[list[int]], newline: int,
              length: int) -> dict[str, np.ndarray]:
  """T5X features that score `targets` (+ EOS) after `sources`."""
  targets = [t + [EOS] for t in targets]
  if "encoder_input_tokens" in model.FEATURES:
    decoder_targets = _pad(targets, length)
    return {
        "encoder_input_tokens": _pad([s + [EOS] for s in sources], length),
        "decoder_target_tokens": decoder_targets,
        "decoder_input_tokens": np.pad(decoder_targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": (decoder_targets > 0).astype(np.int32),
    }
  rows = [s + [newline] + t for s, t in zip(sources, targets)]
  weights = [[0] * (len(s) + 1) + [1] * len(t)
             for s, t in zip(sources, targets)]
  decoder_targets = _pad(rows, 2 * length)
  return {
      "decoder_target_tokens": decoder_targets,
      "decoder_input_tokens": np.pad(decoder_targets, ((0, 0), (1, 0)))[:, :-1],
      "decoder_loss_weights": _pad(weights, 2 * length),
  }


def mean_nll(model, params, sources, targets, newline, length,
             batch_size) -> float:
  total, tokens = 0.0, 0
  for i in range(0, len(sources), batch_size):
    batch = batch_for(model, sources[i:i + batch_size],
                      targets[i:i + batch_size], newline, length)
    total -= float(np.sum(model.score_batch(params, batch)))
    tokens += int(np.sum(batch["decoder_loss_weights"]))
  return total / tokens


def measure(model, params, pairs: int = 128, length: int = 96,
            batch_size: int = 32) -> dict[str, tuple[float, float]]:
  """{pairing: (NLL given its own source, NLL given another's)}."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  spm = sentencepiece.SentencePieceProcessor(model_file=str(SPM))
  newline = spm.piece_to_id("\n")
  verses = heldout_pairs(pairs)
  en = [spm.encode(e) for e, _ in verses]
  es = [spm.encode(s) for _, s in verses]
  rolled = en[1:] + en[:1]
  return {name: tuple(mean_nll(model, params, src, targets, newline, length,
                               batch_size) for src in (en, rolled))
          for name, targets in (("en->es", es), ("en->en", en))}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("bases", nargs="+",
                      help="shipped base names or checkpoint paths")
  parser.add_argument("--config", dest="gin_model", default=None,
                      help="gin model name (or .gin path) of checkpoint paths")
  parser.add_argument("--pairs", type=int, default=128)
  parser.add_argument("--length", type=int, default=96)
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args(argv)

  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  print(f"{args.pairs} held-out verse pairs; mean NLL per target token "
        "(nats), own source vs another verse's; gap = what the source gives")
  print(f"{'base':<44} {'pair':<7} {'own':>7} {'other':>7} {'gap':>7}")
  for base in args.bases:
    kwargs = {"config": args.gin_model} if args.gin_model else {}
    model, variables = pt.load_pretrained(base, **kwargs)
    results = measure(model, variables["params"], args.pairs, args.length,
                      args.batch_size)
    for name, (own, other) in results.items():
      print(f"{base:<44} {name:<7} {own:7.3f} {other:7.3f} "
            f"{other - own:7.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
  main()
