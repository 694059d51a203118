"""Bases pretrained by this project and shipped inside the package.

Each base is a folder `prompt_tuning/bases/<name>/` holding a T5X checkpoint
(`checkpoint_<step>/`, bfloat16, zstd), `base.json` (architecture, sizes and
what pretraining measured) and `MODEL_CARD.md`. A shipped name works
wherever a checkpoint path does: `pt.load_pretrained("<name>")`,
`INITIAL_CHECKPOINT_PATH='<name>'`, and as a model config name.
`scripts/ship_base.py` writes these folders from pretraining runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Optional

from prompt_tuning.models.configs import TransformerConfig

BASES_DIR = pathlib.Path(__file__).resolve().parents[1] / "bases"
INFO_FILE = "base.json"
CARD_FILE = "MODEL_CARD.md"


@dataclasses.dataclass(frozen=True)
class ShippedBase:
  """One shipped base: where it is and what it is."""

  name: str
  architecture: str  # "encoder_decoder" or "decoder_only".
  parameters: int
  non_embedding_parameters: int
  vocabulary: str  # A name for `prompt_tuning.tasks.vocabularies`.
  checkpoint_path: str  # The T5X checkpoint dir.
  config: TransformerConfig
  info: dict[str, Any]  # Everything in base.json (pretraining numbers).

  @property
  def model_card(self) -> str:
    return str(BASES_DIR / self.name / CARD_FILE)


def _config_from_json(values: dict[str, Any]) -> TransformerConfig:
  return TransformerConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in values.items()})


def config_to_json(config: TransformerConfig) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(config).items()}


@functools.lru_cache(maxsize=None)
def _read(name: str) -> Optional[ShippedBase]:
  info_path = BASES_DIR / name / INFO_FILE
  if not info_path.is_file():
    return None
  info = json.loads(info_path.read_text(encoding="utf-8"))
  return ShippedBase(
      name=name, architecture=info["config"]["architecture"],
      parameters=info["parameters"],
      non_embedding_parameters=info["non_embedding_parameters"],
      vocabulary=info["vocabulary"],
      checkpoint_path=str(BASES_DIR / name / info["checkpoint"]),
      config=_config_from_json(info["config"]), info=info)


def names() -> list[str]:
  """The shipped bases' names, sorted."""
  if not BASES_DIR.is_dir():
    return []
  return sorted(p.name for p in BASES_DIR.iterdir()
                if (p / INFO_FILE).is_file())


def find(name_or_path: Any) -> Optional[ShippedBase]:
  """The shipped base `name_or_path` names, or None. An existing path
  always wins over a name (a local folder called like a base)."""
  if (not isinstance(name_or_path, str) or os.sep in name_or_path
      or os.path.exists(name_or_path)):
    return None
  return _read(name_or_path)


def list_pretrained() -> list[ShippedBase]:
  """Every shipped base, sorted by name (`pt.list_pretrained()`)."""
  return [_read(name) for name in names()]
