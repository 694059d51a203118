"""The README's notebook example runs as written (on the tiny T5X fixture)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_notebook_example_runs(shared_fixtures):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  example = blocks[0]
  placeholder = '"checkpoint_1100000", config="t5_1_1_base"'
  assert placeholder in example
  fixture = shared_fixtures / "t5x_t5_1_1_tiny" / "checkpoint_3"
  namespace = {}
  exec(example.replace(placeholder, f'"{fixture}", config="t5_1_1_tiny"'),  # pylint: disable=exec-used
       namespace)
  loss, metrics = namespace["loss"], namespace["metrics"]
  assert float(loss) > 0 and float(metrics["weight_sum"]) == 2.0


def test_readme_has_exactly_two_setup_commands():
  commands = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
  assert [c.strip().endswith(end) for c, end in zip(
      commands, ("python -m prompt_tuning.forward", "pytest -q"))] == [True,
                                                                          True]
  assert len(commands) == 2
