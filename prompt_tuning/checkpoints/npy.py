""".npy files a user hands over (prompts, prompt banks, initial values).

`load` reads one with errors that name the file and say what is wrong with
it (missing, a directory, empty, not a .npy file at all, truncated, pickled
objects) instead of numpy's own (`No data left in file`, a hint about
`allow_pickle=`); `check_finite` refuses arrays holding NaN or Inf, which
would otherwise flow through a model into NaN scores and empty outputs.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

# What every .npy file starts with (numpy.lib.format.MAGIC_PREFIX).
MAGIC = b"\x93NUMPY"
_WRITE_HINT = "write it with np.save(path, array) or pt.export_prompt"


def load(path: PathLike, what: str = "the .npy file") -> np.ndarray:
  """The array in the .npy file `path`; errors name `what` and the file.

  Raises:
    FileNotFoundError: nothing is at `path`.
    ValueError: `path` is a directory, is empty, is not a .npy file, is
      truncated or corrupt, or holds pickled Python objects.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} {path!r} does not exist; pass the .npy "
                            f"file ({_WRITE_HINT}).")
  if os.path.isdir(path):
    raise ValueError(f"{what} {path!r} is a directory, not a .npy file; pass "
                     "the .npy file in it (e.g. its prompt.npy).")
  with open(path, "rb") as f:
    head = f.read(len(MAGIC))
  if not head:
    raise ValueError(f"{what} {path!r} is empty (0 bytes), not a .npy "
                     f"array (an interrupted write or copy?); {_WRITE_HINT}.")
  if head.startswith(b"PK"):
    raise ValueError(f"{what} {path!r} is a zip archive (.npz?), not one .npy "
                     f"array; save the one array: {_WRITE_HINT}.")
  if head != MAGIC:
    raise ValueError(
        f"{what} {path!r} is not a .npy array file (it starts with "
        f"{head!r}, not numpy's {MAGIC!r}); {_WRITE_HINT}.")
  try:
    array = np.load(path, allow_pickle=False)
  except ValueError as e:
    if "pickle" in str(e):
      raise ValueError(
          f"{what} {path!r} holds pickled Python objects, not a numeric "
          f"array; {_WRITE_HINT} (a float32 array).") from e
    raise _corrupt(what, path, e) from e
  except (OSError, EOFError) as e:
    raise _corrupt(what, path, e) from e
  return array


def _corrupt(what: str, path: str, error: BaseException) -> ValueError:
  detail = str(error).strip().splitlines()
  return ValueError(
      f"{what} {path!r} is a truncated or corrupt .npy file (numpy: "
      f"{detail[0] if detail else type(error).__name__}); copy or export it "
      "again.")


def check_finite(array: np.ndarray, what: str, fix: str) -> None:
  """Raises a ValueError naming `what` and how many values are NaN/Inf."""
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.inexact):
    return
  bad = int(array.size - np.count_nonzero(np.isfinite(array)))
  if bad:
    nans = int(np.count_nonzero(np.isnan(array)))
    raise ValueError(
        f"{what} holds {bad} non-finite value{'s' if bad > 1 else ''} "
        f"({nans} NaN, {bad - nans} Inf) of {array.size}; {fix}.")
