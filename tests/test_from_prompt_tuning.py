"""docs/from_prompt_tuning.md: the names google-research/prompt-tuning's gin
files bind are in its table, and every name of ours there is a gin binding,
macro, gin file or value that our binaries accept."""

from __future__ import annotations

import re
from pathlib import Path

import gin
import jax
import numpy as np

import prompt_tuning.data  # pylint: disable=unused-import
import prompt_tuning.methods.model_tuning  # pylint: disable=unused-import
import prompt_tuning.methods.msp  # pylint: disable=unused-import
import prompt_tuning.methods.prefix_tuning  # pylint: disable=unused-import
import prompt_tuning.optimizers  # pylint: disable=unused-import
import prompt_tuning.train  # pylint: disable=unused-import
from prompt_tuning.models import combine
from prompt_tuning.methods import multitask
from prompt_tuning.methods import soft_prompt as prompt_lib

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "from_prompt_tuning.md"
GIN = ROOT / "gin"

# Names as that project's gin files write them (configs/prompts/*.gin,
# configs/models/*_prompt.gin, configs/runs/prompt_finetune.gin, the
# extended multitask configs and the decoding configs).
THEIR_NAMES = (
    "prompts.Prompt.length", "prompts.Prompt.prompt_init",
    "linen.initializers.uniform.scale",
    "prompts.from_sample_of_embeddings.population_size",
    "prompts.from_embedded_list.texts", "prompts.from_embedded_list.vocab",
    "prompts.from_embedded_list.initializer", "prompts.from_embedded_string",
    "prompts.t5x_load.checkpoint_path", "prompts.t5x_load.variable_path",
    "prompts.np_load.path", "prompts.from_array",
    "train_prompts.Prompt.combine", "prompts.prefix_prompt",
    "prompts.prefix_prompt_after_bos", "prompts.suffix_prompt",
    "multitask_prompts.AddMultiTaskPrompt",
    "multitask_prompts.ConcatMultiTaskPrompt",
    "multitask_prompts.ConcatFeaturesMultiTaskPrompt",
    "multitask_prompts.ProjectMultiTaskPrompt",
    "multitask_prompts.sentinel_to_task.vocab_size", ".shared_init",
    ".tasks_init", "utils.create_learning_rate_scheduler.base_learning_rate",
    "adafactor.Adafactor.decay_rate", "utils.SaveCheckpointConfig.period",
    "train/utils.DatasetConfig.pack",
    "models.EncoderDecoderModel.label_smoothing",
    "predict_batch_with_aux.num_decodes", "decoding.beam_search.alpha",
    "decoding.temperature_sample.temperature",
)
VALUES = {"PromptTuning.combine": set(combine.LAYOUTS),
          "MultiTaskPrompt.mode": set(multitask.MODES)}


def _rows() -> list[tuple[str, list[str]]]:
  """(their cell, the backticked items of our cell) per table row."""
  rows = []
  for line in DOC.read_text(encoding="utf-8").splitlines():
    if line.startswith("| `"):
      theirs, ours = line.strip().strip("|").split(" | ")
      rows.append((theirs, re.findall(r"`([^`]+)`", ours)))
  return rows


def _shipped_gin() -> str:
  return "\n".join(p.read_text(encoding="utf-8") for p in GIN.rglob("*.gin"))


def test_their_names_are_in_the_table():
  theirs = " ".join(cell for cell, _ in _rows())
  missing = [name for name in THEIR_NAMES if name not in theirs]
  assert not missing, f"not in {DOC.name}: {missing}"


def test_our_names_are_accepted():
  shipped = _shipped_gin()
  bindings = 0
  for _, items in _rows():
    for item in items:
      name, _, value = (part.strip() for part in item.partition("="))
      if re.fullmatch(r"[A-Z][A-Z_]+", name) and not value:  # a macro
        assert re.search(rf"(%{name}\b|^{name} =)", shipped, re.M), item
      elif name.endswith(".gin"):
        assert (GIN / name).is_file(), item
      elif re.fullmatch(r"[\w/]+\.\w+|[A-Z_]+", name):
        gin.clear_config()
        with gin.unlock_config():
          gin.parse_config(f"{name} = {value or 'None'}")
        bindings += 1
        if name in VALUES:
          assert value.strip('"') in VALUES[name], item
  gin.clear_config()
  assert bindings >= 40


def test_a_mapped_config_builds_the_method_it_names():
  """Their from_class_labels.gin, written with our names."""
  gin.clear_config()
  gin.parse_config("""
      PromptTuning.length = 4
      PromptTuning.initializer = @from_class_labels()
      from_class_labels.labels = [[3], [5]]
      from_class_labels.fallback = @from_sampled_vocab()
      from_sampled_vocab.population_size = 10
      PromptTuning.combine = "after_bos"
  """)
  method = prompt_lib.PromptTuning()
  gin.clear_config()
  assert method.length == 4 and method.combine == "after_bos"
  embedding = np.arange(80, dtype=np.float32).reshape(10, 8)
  prompt = np.asarray(method.initializer(jax.random.PRNGKey(0), (4, 8),
                                         embedding))
  np.testing.assert_array_equal(prompt[:2], embedding[[3, 5]])
  rows = {tuple(r) for r in embedding.tolist()}
  assert {tuple(r) for r in prompt[2:].tolist()} <= rows
