"""Where the installed gin files are, for `--gin_search_paths` defaults.

The repository's top-level `gin/` installs as the package `prompt_tuning.gin`
(see setup.py), so a regular and an editable install both find
`models/`, `methods/` and `runs/` without any flag.
"""

from __future__ import annotations

import importlib.resources
import pathlib

_GIN_PACKAGE = "prompt_tuning.gin"


def gin_search_path() -> str:
  """Returns the absolute path of the installed gin directory.

  Raises:
    FileNotFoundError: `prompt_tuning` is imported from a source tree that was
      never installed, or from a zip (gin needs real files).
  """
  try:
    root = importlib.resources.files(_GIN_PACKAGE)
  except ModuleNotFoundError as e:
    raise FileNotFoundError(
        f"The gin files ({_GIN_PACKAGE}) are not installed. Install the"
        " package from the repository root with `pip install -e .` (or pass"
        " --gin_search_paths=<repo>/gin)."
    ) from e
  if not isinstance(root, pathlib.Path) or not root.is_dir():
    raise FileNotFoundError(
        f"The gin files ({_GIN_PACKAGE}) are at {root!s}, which is not a"
        " directory on disk; install the package unzipped (`pip install .`)."
    )
  return str(root.resolve())
