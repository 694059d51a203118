"""Importing `prompt_tuning.tasks` registers every task the docs name."""

from __future__ import annotations

import seqio

import prompt_tuning.tasks  # pylint: disable=unused-import

SUPERGLUE = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb",
             "axg")
RANKED = ("boolq", "cb", "copa", "rte", "wic", "axb", "axg")
TED = ("bg", "es", "it", "ru", "tr")


def expected_tasks() -> set[str]:
  names = set()
  for variant in ("", "taskless_", "task_index_"):
    names |= {f"{variant}super_glue_{t}_v102" for t in SUPERGLUE}
    names |= {f"{variant}super_glue_{t}_v102_rank_classification"
              for t in RANKED}
    names |= {f"{variant}super_glue_wsc_v102_simple_{s}"
              for s in ("train", "eval")}
  for variant in ("", "taskless_"):
    names |= {f"{variant}glue_{t}_v200"
              for t in ("sst2", "mrpc", "qqp", "rte", "qqp_to_mrpc",
                        "mrpc_to_qqp")}
  pairs = [("wmt14", "ende"), ("wmt16", "roen"), ("wmt20", "enzh")]
  pairs += [(c, p[2:] + p[:2]) for c, p in pairs]
  pairs += [("ted", f"{lang}en") for lang in TED]
  pairs += [("ted", f"en{lang}") for lang in TED]
  for fmt in ("t5", "msp"):
    names |= {f"{fmt}_{corpus}_{pair}" for corpus, pair in pairs}
  names |= {"demo_bible_en_es", "demo_bible_en_es_msp"}
  return names


def expected_mixtures() -> set[str]:
  names = set()
  for variant in ("", "taskless_", "task_index_"):
    names |= {f"{variant}super_glue_v102_proportional",
              f"{variant}super_glue_wsc_and_dev_v102_simple"}
  for variant in ("", "taskless_"):
    names |= {f"{variant}glue_qqp_to_mrpc_zeroshot_v200",
              f"{variant}glue_mrpc_to_qqp_zeroshot_v200"}
  return names


def test_registry_lists_every_task_and_mixture():
  tasks = set(seqio.TaskRegistry.names())
  assert not expected_tasks() - tasks, sorted(expected_tasks() - tasks)
  mixtures = set(seqio.MixtureRegistry.names())
  assert not expected_mixtures() - mixtures, sorted(
      expected_mixtures() - mixtures)


def test_every_task_has_metrics_and_both_features():
  for name in expected_tasks():
    task = seqio.get_mixture_or_task(name)
    assert set(task.output_features) >= {"inputs", "targets"}, name
    if not name.endswith("_simple_train"):  # WSC's train-only half
      assert task.metric_fns or task.metric_objs, name
