"""Where the installed gin files are, for `--gin_search_paths` defaults.

The repository's top-level `gin/` (models/, methods/, runs/) is reachable as
`prompt_tuning/gin` (a symlink in the checkout, real files in a regular
install; see setup.py), so both install modes find it without any flag.
"""

from __future__ import annotations

import importlib.resources
import pathlib


def gin_search_path() -> str:
  """Returns the absolute path of the gin directory that ships with the package.

  Raises:
    FileNotFoundError: the gin directory is missing (a broken install, or a
      checkout whose `prompt_tuning/gin` symlink was not kept), or it lies in a
      zip (gin needs real files).
  """
  root = importlib.resources.files("prompt_tuning") / "gin"
  if not isinstance(root, pathlib.Path) or not root.is_dir():
    raise FileNotFoundError(
        f"The gin files are not at {root!s}. Reinstall the package from the"
        " repository root with `pip install -e .` (in a checkout,"
        " `prompt_tuning/gin` must be a symlink to `../gin`), or pass"
        " --gin_search_paths=<repo>/gin."
    )
  return str(root.resolve())
