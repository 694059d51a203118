"""The shipped runs/ and recipes/ gin files parse, compose and say what the
papers say.

Each file is parsed with gin's finalize checks (so a `%gin.REQUIRED` macro
left unset, an undefined macro or an unknown configurable fails here, not
hours into a job), and the recipes' values are checked against Lester et al.
2021 (SuperGLUE prompt tuning) and Tan et al. 2022 (MSP).
"""

from __future__ import annotations

import os

import gin
import pytest

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import gin_paths
from prompt_tuning import model_wrappers
from prompt_tuning.models import configs

ROOT = gin_paths.gin_search_path()

# Values for every macro a runs/ file requires (extra ones are harmless).
REQUIRED = {
    "MIXTURE_OR_TASK_NAME": "'demo_bible_en_es'",
    "TASK_FEATURE_LENGTHS": "{'inputs': 64, 'targets': 32}",
    "TRAIN_STEPS": "10",
    "MODEL_DIR": "'/tmp/unused_model_dir'",
    "INITIAL_CHECKPOINT_PATH": "'/tmp/unused_base'",
    "CHECKPOINT_PATH": "'/tmp/unused_model_dir'",
    "EVAL_OUTPUT_DIR": "'/tmp/unused_eval'",
    "INFER_OUTPUT_DIR": "'/tmp/unused_infer'",
    "BASE": "'bible_gpt2_small'",
}
# The files each one is given after on the command line (default PROMPT_T5).
COMPANIONS = {
    "runs/msp_translate.gin": ["models/mgpt.gin"],
    "recipes/superglue_prompt_tuning.gin": ["models/t5_1_1_xxl.gin"],
    "runs/demo.gin": [],
    "recipes/msp_wmt_mgpt.gin": [],
    "runs/serve.gin": [],
}
PROMPT_T5 = ["models/t5_1_1_tiny.gin", "methods/prompt_tuning.gin"]


@gin.configurable
def _value(x=gin.REQUIRED):
  """Evaluates a macro (gin resolves `%MACRO` and `@f()` when called)."""
  return x


def _parse(files, bindings=()):
  """Parses as the binaries do: files, then bindings, then finalize's checks
  (the config is left editable so `_eval` can bind)."""
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, f) for f in files], list(bindings),
      finalize_config=False)
  with gin.unlock_config():
    gin.finalize()


def _eval(name: str):
  """The value of macro `name`, references evaluated."""
  with gin.unlock_config():
    gin.parse_config(f"_value.x = %{name}")
  return _value()


@pytest.fixture(autouse=True)
def _clean_gin():
  # Includes like 'runs/prompt_finetune.gin' resolve under the shipped dir.
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  saved = list(prefixes)
  gin.clear_config()
  gin.add_config_file_search_path(ROOT)
  yield
  gin.clear_config()
  prefixes[:] = saved


def _shipped(folder: str) -> list[str]:
  return sorted(f"{folder}/{f}" for f in os.listdir(os.path.join(ROOT, folder))
                if f.endswith(".gin"))


@pytest.mark.parametrize("name", _shipped("runs") + _shipped("recipes"))
def test_every_run_and_recipe_file_parses_and_finalizes(name):
  files = COMPANIONS.get(name, PROMPT_T5) + [name]
  _parse(files, [f"{k} = {v}" for k, v in REQUIRED.items()])


@pytest.mark.parametrize("name", _shipped("runs"))
def test_runs_name_their_required_macros(name):
  if name in ("runs/demo.gin", "runs/translate_bible.gin"):
    _parse([name], [])  # complete as shipped
    return
  files = COMPANIONS.get(name, PROMPT_T5) + [name]
  with pytest.raises(ValueError, match=r"%gin.REQUIRED` but not subsequently"):
    _parse(files, [])


def test_forgetting_a_required_macro_names_it():
  bindings = [f"{k} = {v}" for k, v in REQUIRED.items() if k != "MODEL_DIR"]
  with pytest.raises(ValueError, match="MODEL_DIR/macro.value set to "
                     "`%gin.REQUIRED`"):
    _parse(PROMPT_T5 + ["runs/prompt_finetune.gin"], bindings)


def test_forgetting_the_model_file_is_caught_at_parse():
  # No models/*.gin: MODEL_CONFIG is never defined.
  bindings = [f"{k} = {v}" for k, v in REQUIRED.items()]
  with pytest.raises(ValueError, match="MODEL_CONFIG"):
    _parse(["methods/prompt_tuning.gin", "runs/prompt_finetune.gin"],
           bindings)


def test_model_files_define_model_config():
  _parse(["models/t5_1_1_small.gin"])
  assert _eval("MODEL_CONFIG") == configs.t5_1_1("small")
  _parse(["models/mgpt.gin"])
  assert _eval("MODEL_CONFIG") == configs.mgpt()
  _parse(["models/decoder_only.gin"])
  assert _eval("MODEL_CONFIG").architecture == "decoder_only"
  _parse(["models/from_checkpoint.gin"])
  assert _eval("MODEL_CONFIG") is None


@pytest.mark.parametrize("name", [
    f for f in _shipped("models")
    if f not in ("models/from_checkpoint.gin",)])  # No config to compare.
def test_gin_and_from_gin_read_every_model_file_alike(name):
  """configs.from_gin (gin's parser, no global state) and gin itself agree
  on every shipped model file, so the size presets are what runs use."""
  _parse([name])
  model_config = _eval("MODEL_CONFIG")
  assert model_config == configs.from_gin(name[len("models/"):-len(".gin")])
  assert model_config == configs.from_gin(os.path.join(ROOT, name))


def test_finetune_defaults_and_dataset_splits():
  _parse(PROMPT_T5 + ["runs/prompt_finetune.gin"],
         [f"{k} = {v}" for k, v in REQUIRED.items()])
  assert _eval("BATCH_SIZE") == 32
  assert _eval("USE_CACHED_TASKS") is False
  assert _eval("DROPOUT_RATE") == 0.0
  assert _eval("RANDOM_SEED") == 0
  for arg, macro in (("initial_checkpoint_path", "INITIAL_CHECKPOINT_PATH"),
                     ("model_config", "MODEL_CONFIG"), ("method", "METHOD"),
                     ("dropout_rate", "DROPOUT_RATE"),
                     ("random_seed", "RANDOM_SEED")):
    assert str(gin.query_parameter(f"load_model.{arg}")) == f"%{macro}"
  assert str(gin.query_parameter("train.total_steps")) == "%TRAIN_STEPS"
  expected = {"train": ("train", True, 0),
              "train_eval": ("validation", False, None),
              "infer_eval": ("validation", False, None)}
  for scope, (split, shuffle, seed) in expected.items():
    with gin.config_scope(scope):
      cfg = data.DatasetConfig()
    assert (cfg.split, cfg.shuffle, cfg.seed) == (split, shuffle, seed)
    assert cfg.mixture_or_task_name == "demo_bible_en_es"
    assert dict(cfg.task_feature_lengths) == {"inputs": 64, "targets": 32}
    assert (cfg.batch_size, cfg.use_cached, cfg.pack) == (32, False, False)
  assert gin.query_parameter("train.optimizer").selector == "adafactor"
  method = _eval("METHOD")
  assert isinstance(method, pt.PromptTuning) and method.length == 100


@pytest.mark.parametrize("name,split", [("runs/prompt_eval.gin", "validation"),
                                        ("runs/prompt_infer.gin", "test")])
def test_eval_and_infer_read_unshuffled_splits(name, split):
  _parse(PROMPT_T5 + [name], [f"{k} = {v}" for k, v in REQUIRED.items()])
  cfg = data.DatasetConfig()
  assert (cfg.split, cfg.shuffle, cfg.batch_size) == (split, False, 32)
  assert str(gin.query_parameter("load_model.initial_checkpoint_path")) == (
      "%INITIAL_CHECKPOINT_PATH")


@pytest.mark.parametrize("name,split", [("runs/prompt_eval.gin", "validation"),
                                        ("runs/prompt_infer.gin", "test")])
def test_training_gin_files_after_eval_and_infer_fill_them_in(name, split):
  # As the headers say: `--gin_file=runs/prompt_eval.gin
  # --gin_file=runs/demo.gin` evaluates the demo run with its own settings.
  _parse([name, "runs/demo.gin"],
         ["CHECKPOINT_PATH = 'demo/run'", "EVAL_OUTPUT_DIR = 'demo/eval'",
          "INFER_OUTPUT_DIR = 'demo/infer'"])
  cfg = data.DatasetConfig()
  assert (cfg.mixture_or_task_name, cfg.split, cfg.shuffle) == (
      "demo_bible_en_es", split, False)
  assert _eval("INITIAL_CHECKPOINT_PATH") == "demo/base/checkpoint_0"
  assert _eval("MODEL_CONFIG").vocab_size == 259


def test_demo_run_is_complete_and_fits_the_demo_task():
  from prompt_tuning.tasks import demo  # pylint: disable=g-import-not-at-top
  _parse(["runs/demo.gin"])
  config = _eval("MODEL_CONFIG")
  assert config == configs.from_gin("t5_1_1_tiny").replace(
      vocab_size=259, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64)
  assert config.vocab_size == demo.VOCABULARY.vocab_size
  assert _eval("MIXTURE_OR_TASK_NAME") == demo.TASK_NAME
  # Verses are cut to 128 bytes so the demo trains in minutes (the task's
  # own lengths, which fit 95% of verses, train 4x slower).
  lengths = _eval("TASK_FEATURE_LENGTHS")
  assert lengths == {"inputs": 128, "targets": 128}
  assert all(lengths[k] <= demo.FEATURE_LENGTHS[k] for k in lengths)
  assert _eval("INITIAL_CHECKPOINT_PATH") == "demo/base/checkpoint_0"
  assert _eval("MODEL_DIR") == "demo/run"
  steps = _eval("TRAIN_STEPS")
  assert steps % gin.query_parameter("train.eval_period") == 0
  assert _eval("METHOD").length == 20


def test_superglue_recipe_matches_lester_et_al(shared_fixtures):
  # The recipe's vocabulary is T5's SentencePiece model; read the local copy.
  spm = shared_fixtures / "t5_sentencepiece.model"
  _parse(["models/t5_1_1_xxl.gin", "recipes/superglue_prompt_tuning.gin"],
         ["MODEL_DIR = '/tmp/unused'", "INITIAL_CHECKPOINT_PATH = '/tmp/b'",
          f"sentencepiece_vocabulary.path = '{spm}'"])
  assert _eval("PROMPT_LENGTH") == 100
  assert _eval("BATCH_SIZE") == 32
  assert _eval("TRAIN_STEPS") == 30000
  assert _eval("TASK_FEATURE_LENGTHS") == {"inputs": 512, "targets": 8}
  assert _eval("MIXTURE_OR_TASK_NAME") == "taskless_super_glue_rte_v102"
  assert gin.query_parameter("train.optimizer").selector == "adafactor"
  assert gin.query_parameter("adafactor.learning_rate") == 0.3
  assert gin.query_parameter("adafactor.decay_rate") == 0.8
  assert gin.query_parameter("adafactor.multiply_by_parameter_scale") is False
  assert gin.query_parameter("adafactor.weight_decay_rate") == 1e-5
  assert _eval("MODEL_CONFIG") == configs.t5_1_1("xxl")
  method = _eval("METHOD")  # builds the class-label initializer
  assert isinstance(method, pt.PromptTuning) and method.length == 100
  assert _eval("VOCABULARY").vocab_size == 32100


def test_msp_recipe_matches_tan_et_al():
  _parse(["recipes/msp_wmt_mgpt.gin"],
         ["MIXTURE_OR_TASK_NAME = 'unused'", "MODEL_DIR = '/tmp/unused'",
          "INITIAL_CHECKPOINT_PATH = '/tmp/b'"])
  assert _eval("MODEL_CONFIG") == configs.mgpt()
  method = _eval("METHOD")
  assert isinstance(method, pt.MultiStagePrompting)
  assert method.length == 128 == _eval("PROMPT_LENGTH")
  assert gin.query_parameter("train.optimizer").selector == "adam"
  assert gin.query_parameter("adam.learning_rate") == 7e-4
  assert gin.query_parameter("adam.b1") == 0.9
  assert gin.query_parameter("adam.b2") == 0.98
  assert gin.query_parameter("adam.eps") == 1e-9
  assert gin.query_parameter("adam.warmup_steps") == 4000
  assert gin.query_parameter("load_model.label_smoothing") == 0.1
  options = model_wrappers.DecodingOptions()
  assert (options.beam_size, options.alpha) == (4, 0.0)
  assert _eval("TRAIN_STEPS") == 40000
