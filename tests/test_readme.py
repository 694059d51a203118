"""The README's notebook example runs as written (on the tiny T5X fixture)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_notebook_example_runs(shared_fixtures, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the example exports a prompt to ./my_prompt
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
  assert namespace["tokens"].shape == (1, 2)
  assert set(namespace["grads"]) == {"prompt"}
  assert (tmp_path / "my_prompt" / "prompt.npy").is_file()


def test_readme_has_exactly_two_setup_commands():
  commands = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
  assert [c.strip().endswith(end) for c, end in zip(
      commands, ("python -m prompt_tuning.train --gin_file=runs/translate_bible.gin",
                 "pytest -q"))] == [True, True]
  assert len(commands) == 2


def test_readme_serving_example_serves_the_shipped_prompts():
  """The serving example's prompts load as a bank for its base (the example
  itself is run verbatim for the release notes; tests/test_serving_http.py
  runs the binary on this base)."""
  from prompt_tuning.checkpoints import shipped  # pylint: disable=g-import-not-at-top
  from prompt_tuning.serving import bank  # pylint: disable=g-import-not-at-top
  (block,) = re.findall(r"```bash\n(python -m prompt_tuning.serve .*?)```",
                        README.read_text(), re.S)
  base = re.search(r"--gin.BASE=\"'(\w+)'\"", block).group(1)
  prompts_dir = re.search(r"--gin.PROMPTS_DIR=\"'([\w/]+)'\"", block).group(1)
  prompts = bank.load_prompt_dir(README.parent / prompts_dir)
  tasks = set(re.findall(r'"task": "(\w+)"', block))
  assert tasks == set(prompts) == {"en_es", "es_en"}
  width = shipped.find(base).config.emb_dim
  assert {p.shape for p in prompts.values()} == {(20, width)}


def test_readme_hugging_face_example_runs(tmp_path, monkeypatch, capsys):
  """Exports the shipped base and prompt, then PEFT on transformers prints
  the Spanish the README shows."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  [example] = [b for b in blocks if "pt.export_model" in b]
  (tmp_path / "examples").symlink_to(README.parent / "examples")
  monkeypatch.chdir(tmp_path)
  exec(example, {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.strip().splitlines()[-1]
  assert f"It prints `{printed}`" in README.read_text(), printed
  assert (tmp_path / "hf" / "bible_gpt2_small" / "config.json").is_file()
  assert (tmp_path / "hf" / "en_es" / "adapter_config.json").is_file()
