"""The lock (`constraints.txt`): complete, inside setup.py's ranges, and the
way every documented install goes."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def _refresh_lock_module():
  spec = importlib.util.spec_from_file_location(
      "refresh_lock", ROOT / "scripts" / "refresh_lock.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


rl = _refresh_lock_module()


def test_every_line_of_the_lock_is_one_exact_pin():
  lines = [line for line in LOCK.read_text().splitlines()
           if line.strip() and not line.startswith("#")]
  assert lines == sorted(lines, key=lambda line: line.split("==")[0])
  for line in lines:
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9][0-9A-Za-z.!-]*", line), (
        line)
  names = [line.split("==")[0] for line in lines]
  assert len(names) == len(set(names))


def test_the_lock_pins_every_requirement_inside_its_range():
  """A lock outside setup.py's ranges would not install through `-c`."""
  pins = rl.parse_pins(LOCK.read_text())
  install, test = rl.read_requirements(ROOT / "setup.py")
  for text in install + test:
    requirement = Requirement(text)
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is not in constraints.txt"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {name}=={pins[name]}, outside {text!r}")


def test_the_lock_holds_transitive_packages_too():
  pins = rl.parse_pins(LOCK.read_text())
  install, test = rl.read_requirements(ROOT / "setup.py")
  # tensorflow comes in through seqio, tokenizers through transformers.
  assert {"tensorflow", "tokenizers"} <= set(pins)
  assert len(pins) > 2 * len(install + test)


def test_readme_and_ci_install_through_the_lock():
  readme = (ROOT / "README.md").read_text()
  commands = re.findall(r"```sh\n(.*?)```", readme, re.S)
  assert len(commands) == 2
  for command in commands:
    assert re.search(r"pip install -c constraints\.txt -e ", command), command
  ci = (ROOT / ".ci" / "run").read_text()
  assert re.search(r'^pip install -c constraints\.txt -e "\.\[test\]"$', ci,
                   re.M)
