"""gin mistakes found from gin's parser and registry, not its message text."""

from __future__ import annotations

import gin
import pytest

from prompt_tuning import gin_checks


@gin.configurable
def gin_checks_test_fn(steps: int = 0, name: str = ""):
  return steps, name


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _no_includes(name):
  del name
  return None


def _problem(text, path="f.gin", resolve=_no_includes):
  return gin_checks.first_problem(gin_checks.Source(text, path), resolve)


def test_unknown_parameter_names_line_and_parameters():
  problem = _problem("gin_checks_test_fn.steps = 1\n"
                     "gin_checks_test_fn.stepz = 2\n")
  assert problem == ("gin_checks_test_fn has no parameter 'stepz' (f.gin,"
                     " line 2); check the spelling (gin_checks_test_fn"
                     " takes: steps, name)")


def test_unknown_configurable_and_reference():
  assert _problem("no_such_fn.x = 1").startswith(
      "No configurable matching 'no_such_fn' (f.gin, line 1)")
  assert _problem("gin_checks_test_fn.name = @scope/no_such_ref()"
                  ).startswith("No configurable matching 'no_such_ref'")


def test_failed_import_and_missing_include_name_line():
  assert _problem("\nimport no_such_module_xyz\n").startswith(
      "its import failed (f.gin, line 2): No module named"
      " 'no_such_module_xyz'")
  assert _problem("include 'nowhere.gin'\n").startswith(
      "included file nowhere.gin not found (f.gin, line 1)")


def test_problem_inside_an_included_file_names_that_file(tmp_path):
  inner = tmp_path / "inner.gin"
  inner.write_text("gin_checks_test_fn.bad = 1\n")
  problem = _problem("include 'inner.gin'\n",
                     resolve=lambda name: str(tmp_path / name))
  assert f"({inner}, line 1)" in problem


def test_a_binding_has_no_location_and_good_text_no_problem():
  assert _problem("gin_checks_test_fn.stepz = 1", path=None).startswith(
      "gin_checks_test_fn has no parameter 'stepz'; ")
  assert _problem("gin_checks_test_fn.steps = %S") is None


@pytest.mark.parametrize("binding, word", [
    ("f.name = tmp", "tmp"), ("f.name = tmp/run", "tmp"),
    ("f.name = /tmp/run", None), ("f.n = 3 4", None)])
def test_unparsable_value_is_the_bare_word(binding, word):
  with pytest.raises(SyntaxError) as error:
    gin.parse_config(binding)
  assert gin_checks.unparsable_value(error.value) == word


def _unset(*texts):
  sources = [gin_checks.Source(t) for t in texts]
  for source in sources:
    gin.parse_config(source.text)
  return gin_checks.unset(sources, _no_includes)


def test_unset_macros_in_order_of_use_and_constants_are_set():
  assert _unset("gin_checks_test_fn.steps = %A",
                "gin_checks_test_fn.name = [%B, %A, %gin.REQUIRED]") == [
                    gin_checks.Unset("A", "gin_checks_test_fn.steps"),
                    gin_checks.Unset("B", "gin_checks_test_fn.name")]
  assert _unset("A = 1", "gin_checks_test_fn.steps = %A") == []


def test_a_later_binding_overrides_an_unset_macro_or_required_value():
  assert _unset("gin_checks_test_fn.steps = %A",
                "gin_checks_test_fn.steps = 3") == []
  assert _unset("S = %gin.REQUIRED", "S = 2",
                "gin_checks_test_fn.steps = %S") == []


def test_required_values_left():
  assert _unset("S = %gin.REQUIRED", "gin_checks_test_fn.steps = %S",
                "gin_checks_test_fn.name = %gin.REQUIRED") == [
                    gin_checks.Unset("S", is_macro=True),
                    gin_checks.Unset("gin_checks_test_fn.name",
                                     is_macro=False)]
