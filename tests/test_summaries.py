"""People-facing output: the progress display and the metric files."""

from __future__ import annotations

import io
import json

from prompt_tuning import summaries


class _Terminal(io.StringIO):

  def isatty(self) -> bool:
    return True


def test_progress_off_a_tty_prints_a_line_every_log_period():
  stream = io.StringIO()
  progress = summaries.Progress(total=5, initial=0, log_period=2,
                                stream=stream)
  for step in range(1, 6):
    progress.update(step, 2.5, 0.3, 100.0)
  progress.close()
  lines = stream.getvalue().splitlines()
  assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"]
  assert "loss/token 2.5000" in lines[0] and "lr 0.3" in lines[0]
  assert "ex/s 100.0" in lines[0]


def test_progress_on_a_tty_is_a_bar_with_the_numbers():
  stream = _Terminal()
  progress = summaries.Progress(total=4, initial=1, log_period=100,
                                stream=stream)
  progress.update(2, 1.25, None, 50.0)
  progress.close()
  text = stream.getvalue()
  assert "2/4" in text and "loss/token=1.2500" in text and "\r" in text
  assert "lr" not in text  # no learning rate to show


def test_metric_writers_write_tensorboard_and_json_lines(tmp_path):
  writers = summaries.MetricWriters(str(tmp_path))
  writers.write("train", 10, {"loss": 1.5})
  writers.write("train", 20, {"loss": 1.25})
  writers.close()
  lines = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l) for l in lines] == [{"step": 10, "loss": 1.5},
                                            {"step": 20, "loss": 1.25}]
  assert list((tmp_path / "train").glob("events.out.tfevents.*"))


def test_screen_is_one_block_of_rows(capsys):
  text = summaries.screen("train", {"model": "t5", "parameters": "12"})
  assert capsys.readouterr().out.strip() == text
  assert text.splitlines() == ["== train", "  model       t5",
                               "  parameters  12"]


def test_examples_keep_their_columns_with_line_breaks(capsys):
  summaries.print_examples(
      {"t": [{"input": "In the beginning\n", "target": "En el principio",
              "prediction": "Y dijo\nDios"}]},
      {"t": [{"prediction": "And"}]})
  assert capsys.readouterr().out.splitlines() == [
      "== examples: t (held out)",
      "  input      In the beginning",
      "  reference  En el principio",
      "  before     And",
      "  after      Y dijo",
      "             Dios",
      ""]
