r"""Keeps `constraints.txt` fresh and names the releases that break the tests.

`constraints.txt` pins the whole resolved environment of
`pip install -e ".[test]"` (one `name==version` a line), so that everyone
installs the same versions through it:

  pip install -c constraints.txt -e ".[test]"

This script re-resolves the ranges of `INSTALL_REQUIRES` and `TEST_REQUIRES`
in setup.py (read with `ast`, never executed) to their newest releases in a
fresh virtual environment, runs the test suite there and compares the result
with the lock. Two modes:

* Default (refresh): when the suite passes, rewrite `constraints.txt` with
  the newest versions. When it fails, leave the lock alone and search for
  the culprit: in a second venv that holds exactly the lock, update one
  changed package at a time (direct requirements first) and rerun only the
  failing tests, to name the release that breaks them.
* `--report`: the same run and search, but never write the lock; exit 0 when
  the newest releases pass.

Typical commands, from the repository root (each takes 20+ minutes):

  python scripts/refresh_lock.py                  # refresh the lock
  python scripts/refresh_lock.py --report         # check only
  python scripts/refresh_lock.py --report --lift-upper-bounds
                                                   # would the next majors pass?
  python scripts/refresh_lock.py --report --lift-upper-bounds transformers
  python scripts/refresh_lock.py --pytest-args="-m slow" --keep-venv /tmp/v

`--lift-upper-bounds [PKG ...]` drops the `<`, `<=` and `!=` specifiers (and
turns `~=X.Y` into `>=X.Y`) of all direct requirements or of the named ones;
exact pins such as `torch==2.13.0` stay. A lock that resolves a direct
requirement outside setup.py's ranges would not install, so the default mode
writes one only when every direct requirement stays inside them.

`--pytest-args` takes one string, split like a shell line; give an argument
that starts with a dash with `=`: `--pytest-args=-x`. The tests run with
PROMPT_TUNING_REFRESH_LOCK=1 in the environment.

Exit status: 0 the newest releases pass, 1 they fail, 2 bad input, 3 a step
(venv, pip) failed, 130 interrupted. The last line printed is the verdict.

Needs only the standard library and `packaging`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import importlib.util
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Callable, Iterable, Mapping, Optional, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCK_NAME = "constraints.txt"
REQUIREMENT_LISTS = ("INSTALL_REQUIRES", "TEST_REQUIRES")
PROJECT = "prompt-tuning"
# Bounds the culprit search: each package tried reruns these tests.
MAX_SEARCHED_TESTS = 25
# pytest's "no tests were collected" exit status.
PYTEST_NO_TESTS = 5
# How much of a failed command's output to show.
TAIL_LINES = 30

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_STEP, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# `FAILED tests/x.py::test_y[param] - message`: a parametrized id may hold
# spaces and " - ", so its brackets are matched up to the " - " or the end.
_FAILURE = re.compile(r"^(?:FAILED|ERROR) (\S+?)(\[.*?\])?(?: - .*)?$")
# pytest's closing line; always ends with the duration ("in 1.23s").
_SUMMARY = re.compile(
    r"^=*\s*((?:\d+ \w+(?:, \d+ \w+)*|no tests ran) in [\d.]+s"
    r"(?: \([\d:]+\))?)\s*=*$")
_COUNT = re.compile(r"(\d+) (\w+)")
_PLURALS = {"errors": "error", "warnings": "warning"}


class UsageError(Exception):
  """Bad input: reported in one line, exit status 2."""


class StepFailed(Exception):
  """A venv or pip command failed: its output tail is shown, exit 3."""

  def __init__(self, step: str, returncode: int, output: str):
    super().__init__(step)
    self.step = step
    self.returncode = returncode
    self.output = output


@dataclasses.dataclass(frozen=True)
class Change:
  """A package whose pin differs between the lock and the newest venv."""
  name: str
  locked: Optional[str]  # None: not in the lock (added).
  newest: Optional[str]  # None: gone from the newest venv (removed).
  direct: bool

  @property
  def kind(self) -> str:
    return "direct" if self.direct else "transitive"


@dataclasses.dataclass(frozen=True)
class PytestResult:
  returncode: int
  failing: list[str]
  summary: Optional[str]  # The closing line, e.g. "3 failed, 9 passed in 2s".

  @property
  def counts(self) -> dict[str, int]:
    return summary_counts(self.summary or "")


@dataclasses.dataclass(frozen=True)
class SearchResult:
  culprits: list[tuple[Change, list[str]]]  # Each with the tests it breaks.
  unexplained: list[str]
  tried: list[str]  # Package names, in the order tried.


# --- setup.py and requirements ------------------------------------------


def read_requirements(setup_py: pathlib.Path) -> tuple[list[str], list[str]]:
  """Returns (INSTALL_REQUIRES, TEST_REQUIRES) of `setup_py`, unexecuted."""
  try:
    tree = ast.parse(setup_py.read_text(encoding="utf-8"),
                     filename=str(setup_py))
  except (OSError, SyntaxError) as e:
    raise UsageError(f"cannot read {setup_py}: {e}") from None
  found: dict[str, list[str]] = {}
  for node in tree.body:
    if isinstance(node, ast.Assign):
      targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
      targets, value = [node.target], node.value
    else:
      continue
    for target in targets:
      if isinstance(target, ast.Name) and target.id in REQUIREMENT_LISTS:
        found[target.id] = _literal_strings(value, target.id, setup_py)
  missing = [name for name in REQUIREMENT_LISTS if name not in found]
  if missing:
    raise UsageError(
        f"{setup_py}: no top-level assignment to {', '.join(missing)}")
  for requirement in found["INSTALL_REQUIRES"] + found["TEST_REQUIRES"]:
    _parse_requirement(requirement)
  return found["INSTALL_REQUIRES"], found["TEST_REQUIRES"]


def _literal_strings(node: ast.expr, name: str,
                     setup_py: pathlib.Path) -> list[str]:
  try:
    value = ast.literal_eval(node)
  except ValueError:
    value = None
  if not (isinstance(value, (list, tuple)) and
          all(isinstance(item, str) for item in value)):
    raise UsageError(f"{setup_py}: {name} is not a literal list of strings")
  return list(value)


def _parse_requirement(text: str) -> Requirement:
  try:
    return Requirement(text)
  except InvalidRequirement as e:
    raise UsageError(f"invalid requirement {text!r} in setup.py: {e}") from None


def direct_names(requirements: Iterable[str]) -> set[str]:
  return {canonicalize_name(Requirement(r).name) for r in requirements}


def lift_upper_bound(requirement: str) -> str:
  """`requirement` without its upper bounds, extras and markers intact.

  `<`, `<=` and `!=` go, `~=X.Y` becomes `>=X.Y`; `>=`, `>`, `==` and `===`
  stay: an exact pin is a choice, not a bound (torch==2.13.0 is the one
  CPU-only wheel on the test machines).
  """
  req = Requirement(requirement)
  if not any(s.operator in ("<", "<=", "!=", "~=") for s in req.specifier):
    return requirement  # Keeps the author's spelling.
  kept = []
  for spec in req.specifier:
    if spec.operator == "~=":
      kept.append(Specifier(f">={spec.version}"))
    elif spec.operator not in ("<", "<=", "!="):
      kept.append(spec)
  req.specifier = SpecifierSet(",".join(str(s) for s in kept))
  return str(req)


def lift_requirements(requirements: Sequence[str],
                      names: Optional[Sequence[str]]) -> list[str]:
  """Lifts the bounds of `names`: None lifts none, an empty list all."""
  if names is None:
    return list(requirements)
  valid = direct_names(requirements)
  wanted = {canonicalize_name(n) for n in names}
  for name in names:
    if canonicalize_name(name) not in valid:
      raise UsageError(
          f"--lift-upper-bounds: {name!r} is not a direct requirement in "
          f"setup.py; valid names: {', '.join(sorted(valid))}")
  return [
      lift_upper_bound(r)
      if not wanted or canonicalize_name(Requirement(r).name) in wanted else r
      for r in requirements
  ]


def out_of_range(pins: Mapping[str, str],
                 requirements: Sequence[str]) -> list[str]:
  """Says which pinned direct requirements fall outside their range.

  A lock that pins one outside setup.py's ranges would make
  `pip install -c constraints.txt -e ".[test]"` fail to resolve.
  """
  problems = []
  for text in requirements:
    req = Requirement(text)
    pinned = pins.get(canonicalize_name(req.name))
    if pinned is None or pinned.startswith("@"):
      continue
    try:
      inside = req.specifier.contains(Version(pinned), prereleases=True)
    except InvalidVersion:
      continue
    if not inside:
      problems.append(f"{req.name} {pinned} is outside setup.py's {text!r}")
  return problems


# --- pins: pip freeze output and the lock -------------------------------


def parse_pins(text: str) -> dict[str, str]:
  """Maps normalized name to version for each `name==version` line.

  Names follow PEP 503 and local version labels go: `torch==2.13.0` in a
  constraints file matches the local `2.13.0+cpu` wheel, while `+cpu`
  itself is on no index. Comments, options and editable lines are skipped;
  a direct reference (`name @ url`) keeps `@ url` as its version.
  """
  pins: dict[str, str] = {}
  for line in text.splitlines():
    line = line.split(" #", 1)[0].strip()
    if not line or line.startswith(("#", "-")):
      continue
    try:
      req = Requirement(line)
    except InvalidRequirement:
      continue
    name = canonicalize_name(req.name)
    if req.url:
      pins[name] = f"@ {req.url}"
      continue
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "==="):
      pins[name] = specs[0].version.split("+", 1)[0]
  return dict(sorted(pins.items()))


def normalize_freeze(text: str) -> dict[str, str]:
  """The pins of `pip freeze --all` output, without pip and the project."""
  pins = parse_pins(text)
  for name in ("pip", PROJECT):
    pins.pop(name, None)
  return pins


def pin_line(name: str, version: str) -> str:
  """A requirement line for pip: `name==version`, or `name @ url`."""
  if version.startswith("@"):
    return f"{name} {version}"
  return f"{name}=={version}"


def render_lock(pins: Mapping[str, str], python_version: str,
                date: str) -> str:
  header = [
      f"# Generated by scripts/refresh_lock.py on {date} for Python "
      f"{python_version}; do not edit.",
      "# The whole environment resolved from setup.py's ranges (with the",
      "# `test` extra): the newest releases that passed the test suite.",
      "# Install through it:",
      '#   pip install -c constraints.txt -e ".[test]"',
      "# Refresh it (rewritten only when the newest releases pass the tests):",
      "#   python scripts/refresh_lock.py",
  ]
  lines = [pin_line(name, pins[name]) for name in sorted(pins)]
  return "\n".join(header + lines) + "\n"


def read_lock(path: pathlib.Path) -> Optional[dict[str, str]]:
  """The pins of the lock at `path`, or None when there is none."""
  try:
    return parse_pins(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    return None


def _files_module():
  """prompt_tuning/files.py, the project's one atomic writer, loaded by path:
  importing the package would import jax, which this script must not need."""
  spec = importlib.util.spec_from_file_location(
      "_prompt_tuning_files", REPO_ROOT / "prompt_tuning" / "files.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_lock(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` atomically: no reader sees half a lock."""
  _files_module().write_atomic(path, text)


def diff_locks(locked: Mapping[str, str], newest: Mapping[str, str],
               direct: set[str]) -> list[Change]:
  """The packages changed, added or removed, sorted by name."""
  return [
      Change(name, locked.get(name), newest.get(name), name in direct)
      for name in sorted(set(locked) | set(newest))
      if locked.get(name) != newest.get(name)
  ]


def format_changes(changes: Sequence[Change]) -> str:
  rows = [("package", "locked", "newest", "")]
  rows += [(c.name, c.locked or "-", c.newest or "-", c.kind)
           for c in changes]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  return "".join(
      ("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
       + "  " + row[3]).rstrip() + "\n" for row in rows)


# --- pytest -------------------------------------------------------------


def parse_failures(output: str) -> list[str]:
  """The test ids of the FAILED and ERROR lines of the short summary."""
  lines = _ANSI.sub("", output).splitlines()
  # Only the summary section: a test's own output may hold such lines.
  starts = [i for i, line in enumerate(lines)
            if "short test summary info" in line]
  if starts:
    lines = lines[starts[-1] + 1:]
  ids: dict[str, None] = {}  # A failed call and its teardown error: once.
  for line in lines:
    match = _FAILURE.match(line.rstrip())
    if match:
      ids[match.group(1) + (match.group(2) or "")] = None
  return list(ids)


def parse_summary(output: str) -> Optional[str]:
  """pytest's closing line without its `=` rule, e.g. `2 passed in 1.0s`."""
  for line in reversed(_ANSI.sub("", output).splitlines()):
    match = _SUMMARY.match(line.strip())
    if match:
      return match.group(1)
  return None


def summary_counts(summary: str) -> dict[str, int]:
  """`3 failed, 9 passed, 2 warnings in 1s` -> {failed: 3, passed: 9, ...}."""
  counts = {}
  for number, word in _COUNT.findall(summary.split(" in ", 1)[0]):
    counts[_PLURALS.get(word, word)] = int(number)
  return counts


def failing_targets(result: PytestResult, targets: Sequence[str]) -> set[str]:
  """Which of `targets` failed in a rerun of them.

  A collection error names the file (`tests/x.py`), which fails every
  target in it; a run that broke down (usage error, crash) without naming
  a failure counts as failing all of them.
  """
  failed = {t for t in targets
            if any(t == f or t.startswith(f + "::") for f in result.failing)}
  if not failed and result.returncode not in (0, 1):
    return set(targets)
  return failed


def pytest_command(python: pathlib.Path, args: Sequence[str]) -> list[str]:
  # -rfE: the short summary lines that name failures, whatever the config.
  return [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
          "-rfE", *args]


def venv_env(venv: pathlib.Path) -> dict[str, str]:
  """The environment of the venv's pytest, as if the venv were activated."""
  env = dict(os.environ, PROMPT_TUNING_REFRESH_LOCK="1",
             VIRTUAL_ENV=str(venv))
  env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
  for name in ("PYTHONPATH", "PYTHONHOME"):
    env.pop(name, None)
  return env


def run_pytest(venv: pathlib.Path, args: Sequence[str], root: pathlib.Path,
               stream: bool) -> PytestResult:
  """Runs the venv's pytest in `root`, echoing its output if `stream`."""
  proc = subprocess.Popen(
      pytest_command(venv / "bin" / "python", args), cwd=root,
      env=venv_env(venv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, errors="replace", bufsize=1)
  chunks = []
  try:
    assert proc.stdout is not None
    for line in proc.stdout:
      if stream:
        sys.stdout.write(line)
        sys.stdout.flush()
      chunks.append(line)
    returncode = proc.wait()
  except BaseException:
    proc.kill()
    proc.wait()
    raise
  output = "".join(chunks)
  return PytestResult(returncode, parse_failures(output),
                      parse_summary(output))


# --- culprit search -----------------------------------------------------


def search_order(changes: Iterable[Change]) -> list[Change]:
  """Direct requirements first, then transitive ones, each by name.

  Removed packages cannot be installed at their newest version: skipped.
  """
  return sorted((c for c in changes if c.newest is not None),
                key=lambda c: (not c.direct, c.name))


def find_culprits(changes: Iterable[Change], failing: Sequence[str],
                  run_tests: Callable[[str, str], set[str]]) -> SearchResult:
  """Updates one package at a time to name the ones that break `failing`.

  `run_tests(name, version)` runs the `failing` tests with only `name`
  moved to `version` from the lock and returns the ids that fail. The
  search stops once every failing test is explained.
  """
  targets = list(dict.fromkeys(failing))
  unexplained = set(targets)
  culprits, tried = [], []
  for change in search_order(changes):
    if not unexplained:
      break
    assert change.newest is not None
    tried.append(change.name)
    broken = set(run_tests(change.name, change.newest)) & set(targets)
    if broken:
      culprits.append((change, [t for t in targets if t in broken]))
      unexplained -= broken
  return SearchResult(culprits, [t for t in targets if t in unexplained],
                      tried)


def format_search(result: SearchResult, lock_failures: Sequence[str],
                  not_searched: int) -> str:
  lines = []
  for change, tests in result.culprits:
    lines.append(
        f"culprit: {change.name} {change.locked or '(not locked)'} -> "
        f"{change.newest} breaks {len(tests)} test(s): {', '.join(tests)}")
  if result.unexplained:
    lines.append(
        f"unexplained: {len(result.unexplained)} test(s) fail with no single "
        "package updated (two packages together?): "
        + ", ".join(result.unexplained))
  if lock_failures:
    lines.append(
        f"fail with the locked versions too: {len(lock_failures)} test(s), "
        "not caused by a release: " + ", ".join(lock_failures))
  if not_searched:
    lines.append(f"not searched: {not_searched} more failing test(s) "
                 f"(the search reruns the first {MAX_SEARCHED_TESTS})")
  return "\n".join(lines) + ("\n" if lines else "")


# --- venvs and pip ------------------------------------------------------


def run_step(command: Sequence[str], step: str,
             cwd: Optional[pathlib.Path] = None) -> str:
  """Runs `command` quietly; raises StepFailed with its output on failure."""
  print(f"{step} ...", flush=True)
  result = subprocess.run(list(command), cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          errors="replace")
  if result.returncode != 0:
    raise StepFailed(step, result.returncode, result.stdout)
  return result.stdout


def pip(venv: pathlib.Path, args: Sequence[str], step: str) -> str:
  return run_step([str(venv / "bin" / "python"), "-m", "pip", *args], step)


def write_requirements(path: pathlib.Path, requirements: Sequence[str]) -> None:
  path.write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")


def build_venv(venv: pathlib.Path, requirements_file: pathlib.Path,
               root: pathlib.Path, lock: Optional[pathlib.Path],
               label: str) -> None:
  """A venv with the requirements (through `lock` if given) and the project.

  The project goes in with --no-deps: its dependencies are exactly the
  requirements file, which setup.py's own resolution must not widen.
  """
  run_step([sys.executable, "-m", "venv", str(venv)],
           f"creating the {label} venv in {venv}")
  constraint = ["-c", str(lock)] if lock else []
  pip(venv, ["install", *constraint, "-r", str(requirements_file)],
      f"installing the {label} requirements (minutes)")
  pip(venv, ["install", "--no-deps", "-e", str(root)],
      f"installing the project into the {label} venv")


def venv_python_version(venv: pathlib.Path) -> str:
  out = run_step([str(venv / "bin" / "python"), "-c",
                  "import sys; print('%d.%d' % sys.version_info[:2])"],
                 "reading the venv's Python version")
  return out.strip()


def freeze(venv: pathlib.Path) -> dict[str, str]:
  return normalize_freeze(pip(venv, ["freeze", "--all", "--exclude-editable"],
                              "freezing the newest venv"))


def make_package_runner(venv: pathlib.Path, changes: Sequence[Change],
                        targets: Sequence[str], pytest_args: Sequence[str],
                        root: pathlib.Path) -> Callable[[str, str], set[str]]:
  """`run_tests` for find_culprits, over the venv that holds the lock."""
  by_name = {c.name: c for c in changes}

  def run_tests(name: str, version: str) -> set[str]:
    change = by_name[name]
    pip(venv, ["install", "--no-deps", pin_line(name, version)],
        f"trying {name} {change.locked or '(not locked)'} -> {version}")
    result = run_pytest(venv, [*pytest_args, *targets], root, stream=False)
    failed = failing_targets(result, targets)
    print(f"  {len(failed)} of {len(targets)} test(s) fail", flush=True)
    if change.locked is None:
      pip(venv, ["uninstall", "-y", name], f"removing {name} again")
    else:
      pip(venv, ["install", "--no-deps", pin_line(name, change.locked)],
          f"restoring {name} {change.locked}")
    return failed

  return run_tests


def search_culprits(changes: Sequence[Change], failing: Sequence[str],
                    pytest_args: Sequence[str], lock: pathlib.Path,
                    requirements_file: pathlib.Path, root: pathlib.Path,
                    workdir: pathlib.Path) -> SearchResult:
  """Builds the locked venv and runs find_culprits there; prints the result.

  Tests that fail with the lock itself are set apart first: otherwise the
  first package tried would take the blame for them.
  """
  targets = list(failing[:MAX_SEARCHED_TESTS])
  venv = workdir / "locked"
  build_venv(venv, requirements_file, root, lock, "locked")
  print("rerunning the failing tests with the locked versions ...",
        flush=True)
  baseline = run_pytest(venv, [*pytest_args, *targets], root, stream=False)
  lock_failures = [t for t in targets
                   if t in failing_targets(baseline, targets)]
  searched = [t for t in targets if t not in lock_failures]
  result = find_culprits(
      changes, searched,
      make_package_runner(venv, changes, searched, pytest_args, root))
  print(format_search(result, lock_failures, len(failing) - len(targets)),
        end="")
  return result


# --- the two modes ------------------------------------------------------


def decide(report_only: bool, pytest_returncode: int,
           outside: Sequence[str], changed: bool) -> str:
  """What to do after the newest run. One of:

  "search": the suite failed (exit 5, no tests, counts as failing);
  "report": it passed in --report mode; "out-of-range": it passed but a
  direct requirement resolved outside setup.py's ranges (lifted bounds);
  "up-to-date": it passed and nothing changed; "write": rewrite the lock.
  """
  if pytest_returncode != 0:
    return "search"
  if report_only:
    return "report"
  if outside:
    return "out-of-range"
  return "write" if changed else "up-to-date"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--report", action="store_true",
                      help="never write the lock; exit 0 if the newest pass")
  parser.add_argument("--lift-upper-bounds", nargs="*", metavar="PKG",
                      help="drop the upper bounds of these direct "
                      "requirements (all without names)")
  parser.add_argument("--pytest-args", default="",
                      help='extra pytest arguments in one string, e.g. '
                      '--pytest-args="-m slow"')
  parser.add_argument("--keep-venv", metavar="DIR", type=pathlib.Path,
                      help="build the newest venv in DIR (new or empty) and "
                      "keep it")
  return parser.parse_args(argv)


def split_pytest_args(text: str) -> list[str]:
  try:
    return shlex.split(text)
  except ValueError as e:
    raise UsageError(f"--pytest-args: {e}: {text!r}") from None


def check_keep_venv(path: Optional[pathlib.Path]) -> Optional[pathlib.Path]:
  """An absolute DIR for --keep-venv; refuses one with content in it.

  Packages already there would satisfy the ranges and hide newer releases.
  """
  if path is None:
    return None
  path = path.resolve()
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise UsageError(f"--keep-venv: {path} exists and is not an empty "
                     "folder; give a new one")
  return path


def refresh(args: argparse.Namespace, root: pathlib.Path,
            workdir: pathlib.Path) -> int:
  """The whole run; returns the exit status."""
  install, test = read_requirements(root / "setup.py")
  original = install + test
  newest_requirements = lift_requirements(original, args.lift_upper_bounds)
  pytest_args = split_pytest_args(args.pytest_args)
  venv = check_keep_venv(args.keep_venv) or workdir / "newest"
  lock = root / LOCK_NAME

  newest_file = workdir / "requirements-newest.txt"
  locked_file = workdir / "requirements-locked.txt"
  write_requirements(newest_file, newest_requirements)
  write_requirements(locked_file, original)
  # No constraints file here: re-resolving is the point.
  build_venv(venv, newest_file, root, None, "newest")
  print("running the test suite with the newest releases ...", flush=True)
  result = run_pytest(venv, pytest_args, root, stream=True)
  pins = freeze(venv)
  locked = read_lock(lock)
  changes = diff_locks(locked or {}, pins, direct_names(original))

  if locked is None:
    print(f"\nno {LOCK_NAME} yet: every package is new")
  elif changes:
    print(f"\n{len(changes)} package(s) differ from {LOCK_NAME}:")
    print(format_changes(changes), end="")
  else:
    print(f"\nthe newest releases are those of {LOCK_NAME}")
  outside = out_of_range(pins, original)
  action = decide(args.report, result.returncode, outside,
                  changed=bool(changes) or locked is None)
  passed = f"newest releases pass: {result.counts.get('passed', 0)} passed"
  if action == "report":
    print(passed)
    return EXIT_PASS
  if action == "up-to-date":
    print(f"{passed}; {LOCK_NAME} already up to date")
    return EXIT_PASS
  if action == "out-of-range":
    print("\n".join(outside))
    print(f"{passed}; {LOCK_NAME} left unchanged: widen setup.py's ranges, "
          "then rerun without --lift-upper-bounds")
    return EXIT_PASS
  if action == "write":
    text = render_lock(pins, venv_python_version(venv),
                       datetime.date.today().isoformat())
    write_lock(lock, text)
    print(f"{passed}; {LOCK_NAME} updated ({len(changes)} change(s))")
    return EXIT_PASS
  return report_failure(result, changes, locked, pytest_args, lock,
                        locked_file, root, workdir)


def report_failure(result: PytestResult, changes: Sequence[Change],
                   locked: Optional[dict[str, str]],
                   pytest_args: Sequence[str], lock: pathlib.Path,
                   requirements_file: pathlib.Path, root: pathlib.Path,
                   workdir: pathlib.Path) -> int:
  """Runs the culprit search where it can; prints the failing verdict."""
  outcome = result.summary or f"pytest exit status {result.returncode}"
  culprits = ""
  if result.returncode == PYTEST_NO_TESTS or not result.failing:
    print(f"\nno failing test named ({outcome}): nothing to search")
  elif locked is None:
    print(f"\nno {LOCK_NAME} to compare with: no culprit search")
  elif not changes:
    print("\nno package changed since the lock: the failures do not come "
          "from new releases")
  else:
    print(f"\nsearching for the culprit among {len(changes)} change(s) ...")
    search = search_culprits(changes, result.failing, pytest_args, lock,
                             requirements_file, root, workdir)
    if search.culprits:
      culprits = "; culprit(s): " + ", ".join(
          c.name for c, _ in search.culprits)
  print(f"newest releases fail: {outcome}; {LOCK_NAME} left unchanged"
        f"{culprits}")
  return EXIT_FAIL


def _raise_interrupt(signum: int, frame: object) -> None:
  raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  # A kill cleans up like Ctrl-C: the temporary venvs are gigabytes.
  previous = signal.signal(signal.SIGTERM, _raise_interrupt)
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="refresh_lock_"))
  try:
    return refresh(args, REPO_ROOT, workdir)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except StepFailed as e:
    tail = e.output.rstrip().splitlines()[-TAIL_LINES:]
    print("\n".join(tail), file=sys.stderr)
    print(f"failed: {e.step} (exit status {e.returncode})")
    return EXIT_STEP
  except KeyboardInterrupt:
    print("interrupted")
    return EXIT_INTERRUPTED
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
    signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
  sys.exit(main())
