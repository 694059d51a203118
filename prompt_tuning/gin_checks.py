"""Gin mistakes, found from gin's public parser and registry.

gin reports a bad statement only as message text, whose wording changes
between gin-config releases. So the binaries do not read that text: they
re-read the gin text with gin's own parser (`gin.config_parser`), ask the
registry (`gin.get_configurable`, `gin.query_parameter`) about each
statement, and name the first one gin cannot take. The same statements show
which macros are used but never set and which `%gin.REQUIRED` values are
left, before a binary runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import tokenize
from typing import Callable, Iterator, Optional, Union

import gin
from gin import config_parser

# An included gin file's name -> its path (None: not found). Files named
# by URL are left to gin: `open` cannot read them.
Resolver = Callable[[str], Optional[str]]
Statement = Union[config_parser.BindingStatement,
                  config_parser.ImportStatement,
                  config_parser.IncludeStatement,
                  config_parser.BlockDeclaration]

_REQUIRED = "gin.REQUIRED"


@dataclasses.dataclass(frozen=True)
class _Macro:
  name: str


@dataclasses.dataclass(frozen=True)
class _Reference:
  selector: str  # As written, maybe scoped.


class _Recorder(config_parser.ParserDelegate):
  """Keeps macros and references as plain names (gin's own delegate looks
  them up, and raises, while parsing)."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    del evaluate
    return _Reference(scoped_configurable_name)

  def macro(self, macro_name):
    return _Macro(macro_name)


@dataclasses.dataclass(frozen=True)
class Source:
  """Gin text and where it came from (`path` None for a --gin binding)."""

  text: str
  path: Optional[str] = None


def _statements(source: Source, resolve: Resolver
                ) -> Iterator[tuple[Source, Statement]]:
  """Every statement in gin's order: an include's at the include."""
  for statement in config_parser.ConfigParser(source.text, _Recorder()):
    yield source, statement
    if isinstance(statement, config_parser.IncludeStatement):
      path = resolve(statement.filename)
      if path is not None and "://" not in path:
        yield from _statements(read_file(path), resolve)


def read_file(path: str) -> Source:
  with open(path, encoding="utf-8") as f:
    return Source(f.read(), path)


def _values(value) -> Iterator[object]:
  """`value` and everything nested in it."""
  yield value
  if isinstance(value, dict):
    value = list(value.keys()) + list(value.values())
  if isinstance(value, (list, tuple)):
    for item in value:
      yield from _values(item)


def where(source: Source, statement: Statement) -> str:
  """" (FILE, line N)" for a file's statement; "" for a --gin binding."""
  if source.path is None:
    return ""
  return f" ({source.path}, line {statement.location.line_num})"


def _binding_name(statement: config_parser.BindingStatement) -> str:
  scope = f"{statement.scope}/" if statement.scope else ""
  if not statement.arg_name:  # A macro: NAME = value.
    return f"{scope}{statement.selector}"
  return f"{scope}{statement.selector.rsplit('.', 1)[-1]}.{statement.arg_name}"


# --- After gin rejected a file or binding: which statement, and why.


def first_problem(source: Source, resolve: Resolver) -> Optional[str]:
  """What is wrong with the first statement of `source` (or of a file it
  includes) that gin cannot take, with where and the fix; None when every
  statement looks right (the caller then shows gin's own first line)."""
  for src, statement in _statements(source, resolve):
    if (isinstance(statement, config_parser.IncludeStatement)
        and resolve(statement.filename) is None):
      return (f"included file {statement.filename} not found"
              f"{where(src, statement)}; check the include or add its folder"
              " with --gin_search_paths=DIR")
    problem = _problem(statement)
    if problem:
      return problem(where(src, statement))
  return None


def _problem(statement: Statement) -> Optional[Callable[[str], str]]:
  if isinstance(statement, config_parser.ImportStatement):
    if statement.module.startswith("__gin__"):  # gin's own switches.
      return None
    try:
      importlib.import_module(statement.module)
    except ImportError as e:
      failure = str(e)
      return lambda at: (f"its import failed{at}: {failure}; install that"
                         " module or fix the import line")
    return None
  if isinstance(statement, config_parser.BlockDeclaration):
    return _unknown(statement.selector)
  if not isinstance(statement, config_parser.BindingStatement):
    return None
  for value in _values(statement.value):
    if isinstance(value, _Reference):
      unknown = _unknown(value.selector.rsplit("/", 1)[-1])
      if unknown:
        return unknown
  if not statement.arg_name:
    return None
  unknown = _unknown(statement.selector)
  if unknown:
    return unknown
  takes = parameters_of(statement.selector)
  if takes is not None and statement.arg_name not in takes:
    fn, param = statement.selector, statement.arg_name
    return lambda at: (f"{fn} has no parameter {param!r}{at}; check the"
                       f" spelling ({fn} takes: {', '.join(takes)})")
  return None


def _unknown(selector: str) -> Optional[Callable[[str], str]]:
  try:
    gin.get_configurable(selector)
    return None
  except ValueError:
    return lambda at: (f"No configurable matching {selector!r}{at}; check the"
                       " spelling, or import the module that defines it in a"
                       " gin file (e.g. `import prompt_tuning.methods`)")


def parameters_of(selector: str) -> Optional[tuple[str, ...]]:
  """The parameters a configurable takes; None when it takes any keyword
  or cannot be inspected."""
  try:
    params = inspect.signature(gin.get_configurable(selector)).parameters
  except (ValueError, TypeError):  # Ambiguous or not inspectable.
    return None
  if any(p.kind is p.VAR_KEYWORD for p in params.values()):
    return None
  return tuple(params)


def unparsable_value(error: SyntaxError) -> Optional[str]:
  """The bare word gin's parser stopped at, e.g. tmp in `x.name = tmp`
  (most often a string the shell stripped of its quotes); None otherwise."""
  if not error.text or error.offset is None:
    return None
  rest = error.text[error.offset:]
  try:
    token = next(tokenize.generate_tokens(io.StringIO(rest).readline))
  except (tokenize.TokenError, StopIteration, SyntaxError):
    return None
  if token.type == tokenize.NAME and token.string not in (
      "True", "False", "None"):
    return token.string
  return None


# --- After everything parsed: macros never set, REQUIRED values left.


@dataclasses.dataclass(frozen=True)
class Unset:
  """A macro used but never set (`user`: the first binding using it) or a
  binding left at %gin.REQUIRED (`user` None)."""

  name: str
  user: Optional[str] = None
  is_macro: bool = True


def unset(sources: list[Source], resolve: Resolver) -> list[Unset]:
  """Macros that the bindings' final values use but nobody set, in order;
  when there are none, the bindings whose final value is %gin.REQUIRED."""
  final: dict[tuple, config_parser.BindingStatement] = {}
  for source in sources:
    for _, statement in _statements(source, resolve):
      if isinstance(statement, config_parser.BindingStatement):
        final[_key(statement)] = statement  # A later binding overrides.
  macros: dict[str, str] = {}
  for statement in final.values():
    for value in _values(statement.value):
      if isinstance(value, _Macro) and not _is_set(value.name):
        macros.setdefault(value.name, _binding_name(statement))
  if macros:
    return [Unset(name, user) for name, user in macros.items()]
  return [Unset(_binding_name(s), is_macro=not s.arg_name)
          for s in final.values()
          if isinstance(s.value, _Macro) and s.value.name == _REQUIRED]


def unread_macros(sources: list[Source], resolve: Resolver
                  ) -> list[tuple[str, list[str]]]:
  """Macros a --gin binding sets that no binding's final value reads (a
  typo such as TRAIN_STEP for TRAIN_STEPS is accepted by gin and has no
  effect), each with the macros that are read, for "did you mean"."""
  final: dict[tuple, config_parser.BindingStatement] = {}
  set_on_command_line: list[str] = []
  for source in sources:
    for src, statement in _statements(source, resolve):
      if isinstance(statement, config_parser.BindingStatement):
        final[_key(statement)] = statement
        if src.path is None and not statement.arg_name:
          set_on_command_line.append(statement.selector)
  read = {value.name for statement in final.values()
          for value in _values(statement.value) if isinstance(value, _Macro)}
  return [(name, sorted(read)) for name in dict.fromkeys(set_on_command_line)
          if name not in read]


def _is_set(macro_name: str) -> bool:
  """Whether a macro, or a gin constant of that name, has a value."""
  for key in (f"{macro_name}/gin.macro.value", macro_name):
    try:
      gin.query_parameter(key)
      return True
    except ValueError:
      pass
  return False


def _key(statement: config_parser.BindingStatement) -> tuple:
  """The same binding however its selector is spelled."""
  if not statement.arg_name:
    return (statement.scope, statement.selector)
  try:
    target = gin.get_configurable(statement.selector)
  except ValueError:
    target = statement.selector
  return (statement.scope, target, statement.arg_name)
