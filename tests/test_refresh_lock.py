"""scripts/refresh_lock.py: its pure parts, without pip, venvs or network."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      "refresh_lock", ROOT / "scripts" / "refresh_lock.py")
  module = importlib.util.module_from_spec(spec)
  # dataclasses look their module up in sys.modules.
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


rl = _load_script()

FREEZE = """\
absl-py==2.5.1
array_record==0.8.6
# Editable Git install with no remote (prompt_tuning==0.1.0)
-e /work/main
pip==26.3
setuptools==65.5.0
torch==2.13.0+cpu
Zope.Interface==7.0
"""


# --- setup.py and requirements ------------------------------------------


def test_reads_the_real_setup_py():
  install, test = rl.read_requirements(ROOT / "setup.py")
  assert install and test
  assert any(r.startswith("jax") for r in install), install
  assert any(r.startswith("transformers") for r in test), test
  assert all(isinstance(r, str) for r in install + test)


def test_read_requirements_does_not_execute_setup_py(tmp_path):
  setup_py = tmp_path / "setup.py"
  setup_py.write_text(
      "raise SystemExit('executed')\n"
      "INSTALL_REQUIRES = ['jax>=0.10']\n"
      "TEST_REQUIRES: list = ['pytest']\n")
  assert rl.read_requirements(setup_py) == (["jax>=0.10"], ["pytest"])


def test_read_requirements_rejects_a_missing_list(tmp_path):
  setup_py = tmp_path / "setup.py"
  setup_py.write_text("INSTALL_REQUIRES = ['jax']\n")
  with pytest.raises(rl.UsageError, match="TEST_REQUIRES"):
    rl.read_requirements(setup_py)


@pytest.mark.parametrize("before, after", [
    ("transformers>=5.0,<5.24", "transformers>=5.0"),
    ("foo~=1.2", "foo>=1.2"),
    ("foo<=2,>1,!=1.5", "foo>1"),
    ("bar<3", "bar"),
    ("torch==2.13.0", "torch==2.13.0"),
    ("regex>=2022.1.18", "regex>=2022.1.18"),
    ("baz===1.0", "baz===1.0"),
])
def test_lift_upper_bound(before, after):
  assert rl.lift_upper_bound(before) == after


def test_lift_upper_bound_keeps_extras_and_markers():
  lifted = rl.lift_upper_bound(
      'foo[bar,baz]>=1.0,<2; python_version >= "3.11"')
  req = rl.Requirement(lifted)
  assert req.name == "foo"
  assert req.extras == {"bar", "baz"}
  assert str(req.specifier) == ">=1.0"
  assert str(req.marker) == 'python_version >= "3.11"'


REQUIREMENTS = ["jax>=0.10.0,<0.11", "huggingface_hub>=1.0,<3",
                "torch==2.13.0", "transformers>=5.0,<6"]


def test_lift_requirements_none_lifts_nothing():
  assert rl.lift_requirements(REQUIREMENTS, None) == REQUIREMENTS


def test_lift_requirements_all():
  assert rl.lift_requirements(REQUIREMENTS, []) == [
      "jax>=0.10.0", "huggingface_hub>=1.0", "torch==2.13.0",
      "transformers>=5.0"]


def test_lift_requirements_only_named_ones():
  # Names match whatever their spelling (PEP 503).
  assert rl.lift_requirements(REQUIREMENTS, ["Huggingface-Hub", "jax"]) == [
      "jax>=0.10.0", "huggingface_hub>=1.0", "torch==2.13.0",
      "transformers>=5.0,<6"]


def test_lift_requirements_rejects_an_unknown_name():
  with pytest.raises(rl.UsageError) as error:
    rl.lift_requirements(REQUIREMENTS, ["transformers", "foo"])
  message = str(error.value)
  assert "'foo'" in message
  assert "transformers" in message and "huggingface-hub" in message
  assert "\n" not in message


def test_out_of_range_names_pins_outside_setup_ranges():
  pins = {"jax": "0.10.2", "transformers": "6.1.0", "torch": "2.13.0",
          "numpy": "9.0"}
  problems = rl.out_of_range(pins, REQUIREMENTS)
  assert len(problems) == 1
  assert "transformers 6.1.0" in problems[0]


# --- pins ---------------------------------------------------------------


def test_normalize_freeze():
  pins = rl.normalize_freeze(FREEZE)
  assert pins == {
      "absl-py": "2.5.1",
      "array-record": "0.8.6",
      "setuptools": "65.5.0",
      "torch": "2.13.0",
      "zope-interface": "7.0",
  }
  assert list(pins) == sorted(pins)


def test_normalize_freeze_drops_the_project_when_not_editable():
  assert rl.normalize_freeze("prompt_tuning==0.1.0\nnumpy==2.1.0\n") == {
      "numpy": "2.1.0"}


def test_render_lock_round_trips_with_its_header():
  pins = rl.normalize_freeze(FREEZE)
  text = rl.render_lock(pins, "3.11", "2030-01-02")
  header = [line for line in text.splitlines() if line.startswith("#")]
  body = [line for line in text.splitlines() if not line.startswith("#")]
  assert "scripts/refresh_lock.py" in header[0]
  assert "Python 3.11" in header[0] and "2030-01-02" in header[0]
  assert any('pip install -c constraints.txt -e ".[test]"' in line
             for line in header)
  assert body == sorted(body)
  assert "torch==2.13.0" in body
  assert rl.parse_pins(text) == pins


def test_write_lock_replaces_the_file_and_keeps_the_header(tmp_path):
  lock = tmp_path / "constraints.txt"
  lock.write_text("old==1.0\n")
  text = rl.render_lock({"numpy": "2.1.0"}, "3.11", "2030-01-02")
  rl.write_lock(lock, text)
  assert lock.read_text() == text
  assert lock.read_text().startswith("# Generated by scripts/refresh_lock.py")
  assert os.listdir(tmp_path) == ["constraints.txt"]  # No temporary left.


def test_write_lock_leaves_the_old_lock_on_failure(tmp_path, monkeypatch):
  lock = tmp_path / "constraints.txt"
  lock.write_text("old==1.0\n")

  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(rl.os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    rl.write_lock(lock, "new==2.0\n")
  assert lock.read_text() == "old==1.0\n"
  assert os.listdir(tmp_path) == ["constraints.txt"]


def test_read_lock_without_a_lock(tmp_path):
  assert rl.read_lock(tmp_path / "constraints.txt") is None


def test_diff_locks():
  locked = {"transformers": "5.23.0", "tokenizers": "0.22.0",
            "gone": "1.0", "same": "3.0"}
  newest = {"transformers": "5.24.0", "tokenizers": "0.23.0",
            "new-dep": "0.1", "same": "3.0"}
  changes = rl.diff_locks(locked, newest, direct={"transformers"})
  assert changes == [
      rl.Change("gone", "1.0", None, False),
      rl.Change("new-dep", None, "0.1", False),
      rl.Change("tokenizers", "0.22.0", "0.23.0", False),
      rl.Change("transformers", "5.23.0", "5.24.0", True),
  ]
  table = rl.format_changes(changes)
  assert table.splitlines()[0].split() == ["package", "locked", "newest"]
  row = next(line for line in table.splitlines() if "transformers" in line)
  assert row.split() == ["transformers", "5.23.0", "5.24.0", "direct"]
  row = next(line for line in table.splitlines() if "new-dep" in line)
  assert row.split() == ["new-dep", "-", "0.1", "transitive"]


# --- pytest output ------------------------------------------------------

PYTEST_OUTPUT = """\
..F.E
FAILED tests/fake.py::test_printed_by_a_test - not a summary line
=================================== FAILURES ===================================
___________________________________ test_a ____________________________________
E   assert [1] == [2]
=========================== short test summary info ============================
FAILED tests/test_a.py::test_a - assert [1] == [2]
FAILED tests/test_b.py::test_b[gpt2 - small] - ValueError: x - y
FAILED tests/test_b.py::TestC::test_c[a-b] - AssertionError: [x] - [y]
FAILED tests/test_b.py::test_d[x[0]-y]
FAILED tests/test_a.py::test_a - duplicate from a teardown
ERROR tests/test_e.py::test_e[1 2] - RuntimeError: fixture
ERROR tests/test_broken.py - ModuleNotFoundError: No module named 'x'
= 5 failed, 80 passed, 2 deselected, 2 errors, 3 warnings in 3.45s (0:00:03) =
"""


def test_parse_failures():
  assert rl.parse_failures(PYTEST_OUTPUT) == [
      "tests/test_a.py::test_a",
      "tests/test_b.py::test_b[gpt2 - small]",
      "tests/test_b.py::TestC::test_c[a-b]",
      "tests/test_b.py::test_d[x[0]-y]",
      "tests/test_e.py::test_e[1 2]",
      "tests/test_broken.py",
  ]


def test_parse_failures_with_colors():
  text = ("\x1b[31mFAILED\x1b[0m tests/test_a.py::test_a - x\n"
          "\x1b[31m1 failed\x1b[0m in 1.0s\n")
  assert rl.parse_failures(text) == ["tests/test_a.py::test_a"]


def test_parse_summary_and_counts():
  summary = rl.parse_summary(PYTEST_OUTPUT)
  assert summary == ("5 failed, 80 passed, 2 deselected, 2 errors, "
                     "3 warnings in 3.45s (0:00:03)")
  assert rl.summary_counts(summary) == {
      "failed": 5, "passed": 80, "deselected": 2, "error": 2, "warning": 3}


@pytest.mark.parametrize("line, expected", [
    ("812 passed, 40 deselected in 900.12s (0:15:00)",
     "812 passed, 40 deselected in 900.12s (0:15:00)"),
    ("============= 1 passed in 0.01s ==============", "1 passed in 0.01s"),
    ("no tests ran in 0.01s", "no tests ran in 0.01s"),
])
def test_parse_summary_forms(line, expected):
  assert rl.parse_summary(f"collected 3 items\n{line}\n") == expected


def test_parse_summary_without_one():
  assert rl.parse_summary("Traceback (most recent call last):\n") is None


def test_failing_targets():
  targets = ["tests/a.py::t1", "tests/a.py::t2[x]", "tests/b.py::t3"]
  crashed_file = rl.PytestResult(1, ["tests/a.py"], "1 error in 1s")
  assert rl.failing_targets(crashed_file, targets) == set(targets[:2])
  one = rl.PytestResult(1, ["tests/b.py::t3"], "1 failed in 1s")
  assert rl.failing_targets(one, targets) == {"tests/b.py::t3"}
  passed = rl.PytestResult(0, [], "3 passed in 1s")
  assert rl.failing_targets(passed, targets) == set()
  usage_error = rl.PytestResult(4, [], None)
  assert rl.failing_targets(usage_error, targets) == set(targets)


# --- culprit search -----------------------------------------------------


CHANGES = [
    rl.Change("tokenizers", "0.22.0", "0.23.0", False),
    rl.Change("transformers", "5.23.0", "5.24.0", True),
    rl.Change("gone", "1.0", None, False),
    rl.Change("flax", "0.12.7", "0.12.8", True),
    rl.Change("added-dep", None, "0.1", False),
]


class FakeRunner:
  """Fails the tests that `breaks` maps each package to."""

  def __init__(self, breaks: dict[str, set[str]]):
    self.breaks = breaks
    self.calls: list[tuple[str, str]] = []

  def __call__(self, name: str, version: str) -> set[str]:
    self.calls.append((name, version))
    return set(self.breaks.get(name, ()))


def test_search_order_direct_first_then_by_name():
  assert [c.name for c in rl.search_order(CHANGES)] == [
      "flax", "transformers", "added-dep", "tokenizers"]


def test_find_culprits_names_the_breaking_package():
  failing = ["tests/t.py::a", "tests/t.py::b[x - y]"]
  runner = FakeRunner({"tokenizers": set(failing)})
  result = rl.find_culprits(CHANGES, failing, runner)
  assert runner.calls == [("flax", "0.12.8"), ("transformers", "5.24.0"),
                          ("added-dep", "0.1"), ("tokenizers", "0.23.0")]
  assert [(c.name, tests) for c, tests in result.culprits] == [
      ("tokenizers", failing)]
  assert result.unexplained == []
  assert "gone" not in result.tried


def test_find_culprits_stops_once_everything_is_explained():
  failing = ["tests/t.py::a", "tests/t.py::b"]
  runner = FakeRunner({"flax": {"tests/t.py::a"},
                       "transformers": {"tests/t.py::b"},
                       "tokenizers": {"tests/t.py::a"}})
  result = rl.find_culprits(CHANGES, failing, runner)
  assert [name for name, _ in runner.calls] == ["flax", "transformers"]
  assert [(c.name, tests) for c, tests in result.culprits] == [
      ("flax", ["tests/t.py::a"]), ("transformers", ["tests/t.py::b"])]
  assert result.unexplained == []


def test_find_culprits_reports_unexplained_failures():
  failing = ["tests/t.py::a", "tests/t.py::needs_two"]
  # Failures outside the searched tests are ignored.
  runner = FakeRunner({"transformers": {"tests/t.py::a", "tests/other.py"}})
  result = rl.find_culprits(CHANGES, failing, runner)
  assert len(runner.calls) == 4  # No early stop: one test stays unexplained.
  assert [(c.name, tests) for c, tests in result.culprits] == [
      ("transformers", ["tests/t.py::a"])]
  assert result.unexplained == ["tests/t.py::needs_two"]
  text = rl.format_search(result, lock_failures=[], not_searched=0)
  assert ("culprit: transformers 5.23.0 -> 5.24.0 breaks 1 test(s): "
          "tests/t.py::a") in text
  assert "unexplained: 1 test(s)" in text and "needs_two" in text


def test_find_culprits_without_failures_runs_nothing():
  runner = FakeRunner({})
  result = rl.find_culprits(CHANGES, [], runner)
  assert runner.calls == [] and result.culprits == []


# --- the decision -------------------------------------------------------


def test_decide_writes_only_when_the_tests_pass():
  assert rl.decide(False, 0, [], changed=True) == "write"
  assert rl.decide(False, 1, [], changed=True) == "search"
  assert rl.decide(False, 5, [], changed=True) == "search"  # No tests ran.
  assert rl.decide(False, 2, [], changed=True) == "search"


def test_decide_report_never_writes():
  assert rl.decide(True, 0, [], changed=True) == "report"
  assert rl.decide(True, 1, [], changed=True) == "search"


def test_decide_keeps_a_lock_that_would_not_install_or_did_not_change():
  assert rl.decide(False, 0, ["transformers 6.1 outside"],
                   changed=True) == "out-of-range"
  assert rl.decide(False, 0, [], changed=False) == "up-to-date"


def _fake_run(monkeypatch, tmp_path, returncode, failing=()):
  """refresh() over a copy of setup.py, with every pip step faked."""
  root = tmp_path / "repo"
  root.mkdir()
  (root / "setup.py").write_text((ROOT / "setup.py").read_text())
  lock = root / "constraints.txt"
  lock.write_text("# old header\njax==0.10.1\nnumpy==2.1.0\n")
  searched = []
  monkeypatch.setattr(rl, "build_venv", lambda *args: None)
  monkeypatch.setattr(rl, "venv_python_version", lambda venv: "3.11")
  monkeypatch.setattr(rl, "freeze",
                      lambda venv: {"jax": "0.10.2", "numpy": "2.1.0"})
  monkeypatch.setattr(
      rl, "run_pytest", lambda *args, **kwargs: rl.PytestResult(
          returncode, list(failing), f"{len(failing)} failed, 7 passed in 1s"))
  monkeypatch.setattr(
      rl, "search_culprits",
      lambda changes, *args: searched.append(changes) or rl.SearchResult(
          [(changes[0], list(failing))], [], ["jax"]))
  args = rl.parse_args([])
  workdir = tmp_path / "work"
  workdir.mkdir()
  return rl.refresh(args, root, workdir), lock.read_text(), searched


def test_refresh_writes_the_lock_when_the_tests_pass(tmp_path, monkeypatch,
                                                     capsys):
  status, lock, searched = _fake_run(monkeypatch, tmp_path, returncode=0)
  assert status == 0 and not searched
  assert lock.startswith("# Generated by scripts/refresh_lock.py")
  assert "jax==0.10.2\nnumpy==2.1.0\n" in lock
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("newest releases pass: 7 passed")


def test_refresh_keeps_the_lock_and_searches_when_tests_fail(
    tmp_path, monkeypatch, capsys):
  status, lock, searched = _fake_run(monkeypatch, tmp_path, returncode=1,
                                     failing=["tests/t.py::a"])
  assert status == 1
  assert lock == "# old header\njax==0.10.1\nnumpy==2.1.0\n"
  assert searched == [[rl.Change("jax", "0.10.1", "0.10.2", True)]]
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("newest releases fail") and "culprit(s): jax" in last


def test_bad_lift_name_exits_2_with_one_line(capsys, monkeypatch):
  # Fails before any venv or pip: the names are checked first.
  monkeypatch.setattr(rl, "build_venv", _no_pip)
  assert rl.main(["--report", "--lift-upper-bounds", "nonexistent"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "'nonexistent'" in err and "transformers" in err


def test_used_keep_venv_folder_exits_2(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(rl, "build_venv", _no_pip)
  (tmp_path / "something").write_text("")
  assert rl.main(["--keep-venv", str(tmp_path)]) == 2
  assert "--keep-venv" in capsys.readouterr().err


def _no_pip(*args, **kwargs):
  raise AssertionError("no venv or pip in these tests")
