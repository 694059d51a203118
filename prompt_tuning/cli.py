"""Entry points of the binaries (console scripts and `python -m`).

Each one starts the C++ log filter (`console.filter_native_logs`) before the
binary's module is imported, because importing it loads TensorFlow, which
logs as it loads; then it runs the binary's `console_main`.
"""

from __future__ import annotations

import importlib
import sys

from prompt_tuning import console


def _run(module: str) -> None:
  console.filter_native_logs()
  try:
    main = importlib.import_module(f"prompt_tuning.{module}").console_main
  except KeyboardInterrupt:  # Ctrl-C while TensorFlow and JAX load.
    sys.stderr.write(f"prompt_tuning.{module}: interrupted while starting; "
                     "nothing was written.\n")
    raise SystemExit(130) from None
  main()


def train() -> None:
  _run("train")


def eval() -> None:  # pylint: disable=redefined-builtin
  _run("eval")


def infer() -> None:
  _run("infer")


def serve() -> None:
  _run("serve")


def random_checkpoint() -> None:
  _run("random_checkpoint")
