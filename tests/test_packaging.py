"""The installed package: light import, gin files and tasks inside it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import prompt_tuning
from prompt_tuning import gin_paths

# Needed only by the data pipeline and tasks/ (docs/design.md §5).
_HEAVY_MODULES = ("tensorflow", "tensorflow_datasets", "seqio")


def _run_python(code: str, cwd: pathlib.Path, pythonpath: str = "") -> str:
  """Runs `code` in a fresh interpreter; returns stdout, fails on error."""
  env = dict(os.environ)
  env.pop("PYTHONPATH", None)
  if pythonpath:
    env["PYTHONPATH"] = pythonpath
  result = subprocess.run(
      [sys.executable, "-c", code],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_import_does_not_load_tensorflow_seqio_or_tfds(tmp_path):
  # The directory that holds `prompt_tuning` here (repo root or site-packages).
  source_root = str(pathlib.Path(prompt_tuning.__file__).resolve().parents[1])
  loaded = _run_python(
      "import sys, prompt_tuning\n"
      f"print(sorted(m for m in {_HEAVY_MODULES!r} if m in sys.modules))",
      cwd=tmp_path, pythonpath=source_root,
  )
  assert loaded.strip() == "[]", (
      f"`import prompt_tuning` loaded {loaded.strip()}; keep TensorFlow,"
      " seqio and TFDS out of the core import path")


def test_gin_search_path_holds_the_gin_dirs():
  root = pathlib.Path(gin_paths.gin_search_path())
  assert root.is_absolute()
  assert (root / "models").is_dir(), f"no models/ under {root}"


def test_repo_gin_dir_does_not_shadow_gin_config():
  # From the repository root (`python -m prompt_tuning.train`), `import gin`
  # must still be gin-config: gin/ must never get an __init__.py.
  source_root = pathlib.Path(prompt_tuning.__file__).resolve().parents[1]
  out = _run_python(
      "import gin; print(hasattr(gin, 'configurable'), gin.__file__)",
      cwd=source_root,
  )
  assert out.startswith("True"), f"`import gin` found {out.split()[-1]}"


def test_gin_search_path_found_outside_the_repo(tmp_path):
  out = _run_python(
      "from prompt_tuning import gin_paths; print(gin_paths.gin_search_path())",
      cwd=tmp_path,
  )
  assert pathlib.Path(out.strip()) == pathlib.Path(gin_paths.gin_search_path())


def test_tasks_install_inside_prompt_tuning(tmp_path):
  import prompt_tuning.tasks  # pylint: disable=g-import-not-at-top

  assert prompt_tuning.tasks.__name__ == "prompt_tuning.tasks"
  # No top-level `tasks` package may be installed: tasks/ ships as
  # prompt_tuning.tasks only.
  out = _run_python(
      "import importlib.util; print(importlib.util.find_spec('tasks'))",
      cwd=tmp_path,
  )
  assert out.strip() == "None"


def test_every_library_dir_with_modules_is_a_package():
  # find_packages skips folders without __init__.py, so a regular install
  # would silently drop them while an editable one still works.
  root = pathlib.Path(prompt_tuning.__file__).resolve().parent
  missing = sorted(
      str(d.relative_to(root)) for d in root.rglob("*")
      if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
      and not (d / "__init__.py").exists()
  )
  assert not missing, f"add __init__.py to: {missing}"
