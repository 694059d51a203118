"""Writes a randomly initialised base model as a T5X checkpoint.

  python -m prompt_tuning.random_checkpoint --gin_file=runs/demo.gin

For demos and trying the binaries offline: it reads the same gin files as
`prompt_tuning.train`, builds MODEL_CONFIG with random weights and writes
them to INITIAL_CHECKPOINT_PATH (T5X format, read back by `load_pretrained`
like any real checkpoint). An existing checkpoint there is kept, so the
command can be re-run.
"""

from __future__ import annotations

if __name__ == "__main__":
  # `python -m prompt_tuning.random_checkpoint`: the same entry point as the console
  # script, before anything heavy is imported (see `cli`).
  from prompt_tuning import cli
  cli.random_checkpoint()
  raise SystemExit(0)

import os
from typing import Any

import gin

from prompt_tuning import gin_utils
from prompt_tuning import param_split
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints import t5x


random_params = loader.random_params


@gin.configurable
def write_random_base(path: str = gin.REQUIRED,
                      model_config: object = gin.REQUIRED,
                      seed: int = 0) -> str:
  """Writes random weights for `model_config` to `path` unless it exists.

  Args:
    path: the checkpoint dir to write (INITIAL_CHECKPOINT_PATH).
    model_config: a TransformerConfig or a shipped gin model name
      (MODEL_CONFIG).
    seed: seeds the initialisation.

  Returns:
    `path`.
  """
  if os.path.exists(path):
    print(f"{path} exists; keeping it.")
    return path
  config = loader.resolve_config(model_config)
  if config is None:
    raise ValueError("MODEL_CONFIG is None: a random base needs an explicit "
                     "architecture (include a models/*.gin file).")
  params = random_params(config, seed)
  t5x.write_t5x_checkpoint(params, path)  # Atomic: never half a checkpoint.
  count = param_split.count(params)
  print(f"Wrote a random {config.architecture} base ({count:,} parameters) "
        f"to {path}")
  return path


def console_main(argv=None) -> None:
  gin_utils.run(write_random_base, argv)
