"""The train binary with a SIGKILL planted at one moment (a test helper,
not a test): `python kill_wrapper.py MOMENT STEP -- <train flags>`.

MOMENT: "export" kills after checkpoint STEP is committed, before its .npy
export is written; "save" kills while checkpoint STEP is being written
(a timer fires a few milliseconds into the save). Any other moment (or a
step the run does not save) runs the binary unchanged.
"""

import os
import random
import signal
import sys
import threading

from prompt_tuning import cli
from prompt_tuning import run_checkpoints
from prompt_tuning.checkpoints import export

moment, step = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0], *sys.argv[4:]]


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


if moment == "export":
  original_export = export.export_prompt

  def export_prompt(params, out_dir, **kwargs):
    if out_dir.endswith(f"checkpoint_{step}"):
      _die()
    return original_export(params, out_dir, **kwargs)

  export.export_prompt = export_prompt
elif moment == "save":
  original_save = run_checkpoints.RunCheckpoints.save

  def save(self, state, run_info, model=None, frozen=None):
    if int(state.step) == step:
      threading.Timer(random.uniform(0.001, 0.03), _die).start()
    return original_save(self, state, run_info, model, frozen)

  run_checkpoints.RunCheckpoints.save = save

cli.train()
