"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel
(nbclient, as Colab would run it) and shows what its text promises: a
loss curve that falls, a prompt that moves outputs towards the references,
exports on disk, and one mixed-task batch without recompiling."""

from __future__ import annotations

import pathlib
import re

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600  # The training cell is the longest (~2 min alone).


def _text(cell) -> str:
  parts = []
  for output in cell.get("outputs", []):
    if output.get("output_type") == "stream":
      parts.append(output["text"])
    elif "data" in output and "text/plain" in output["data"]:
      parts.append(output["data"]["text/plain"])
  return "".join(parts)


def test_the_notebook_is_kept_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None
  assert "colab-badge.svg" in notebook.cells[0].source


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path_factory.mktemp("notebook")
  client = nbclient.NotebookClient(
      notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(workdir)}})
  client.execute()  # Raises CellExecutionError on any failing cell.
  return notebook, workdir


def test_the_notebook_runs_and_shows_what_it_promises(executed):
  notebook, workdir = executed
  text = "\n".join(_text(c) for c in notebook.cells if c.cell_type == "code")
  losses = re.search(r"loss per token: ([\d.]+) .* -> ([\d.]+)", text)
  assert float(losses.group(2)) < float(losses.group(1)) - 0.3, losses.group(0)
  chrf = re.search(r"chrF on 20 held-out verses: ([\d.]+) before -> ([\d.]+)",
                   text)
  assert float(chrf.group(2)) > float(chrf.group(1)), chrf.group(0)
  assert "new compilations for the mixed batch: 0" in text
  assert any("image/png" in o.get("data", {})
             for c in notebook.cells if c.cell_type == "code"
             for o in c.outputs)
  assert (workdir / "quickstart/export_npy/prompt.npy").is_file()
  assert (workdir / "quickstart/export_peft/adapter_config.json").is_file()
