"""The T5X-style command line shared by the train, eval and infer binaries.

A binary is a gin-configurable function whose arguments all come from gin;
`run(main_fn)` turns a T5X command line into that configuration and calls it:

  prompt_tuning.train \
    --gin_file=models/t5_1_1_base.gin --gin_file=methods/prompt_tuning.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000

Gin files are found relative to the current directory, `--gin_search_paths`
and the gin directory shipped with the package (always searched, so
`runs/...`, `models/...` and `methods/...` resolve after `pip install`).
Mistakes a user must fix (an unknown flag, binding or configurable, a gin file
not found, a macro never set) are checked before `main_fn` runs, so nothing is
written; each is reported as one line naming the bad value and the fix, with
exit status 2 (the usage-error status of argparse).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import pathlib
import re
import sys
import tokenize
from typing import Any, Callable, Optional, Sequence

from absl import flags
import gin
import jax

from prompt_tuning import console
from prompt_tuning import files
from prompt_tuning import gin_checks
from prompt_tuning import gin_paths

logger = logging.getLogger(__name__)

# What `write_config` / `write_operative_config` write under MODEL_DIR (T5X).
CONFIG_FILENAME = "config.gin"

# Exit status for a usage error (argparse's; absl's app.run uses 1 for all).
USAGE_EXIT_CODE = 2
# Errors that name bad input (see `run`); anything else keeps its traceback.
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError,
                FloatingPointError)
INPUT_ERROR_EXIT_CODE = 1

# How to set the macros that are usually set by a whole gin file.
_MACRO_HINTS = {
    "MODEL_CONFIG": (
        "add --gin_file=models/<name>.gin (e.g. models/t5_1_1_base.gin), or"
        " --gin_file=models/from_checkpoint.gin for Hugging Face/Orbax"
        " checkpoints that store their config"),
    "METHOD": (
        "add --gin_file=methods/<name>.gin (e.g. methods/prompt_tuning.gin)"),
}

# What gin raises for a bad file or binding (the parser's own errors and the
# imports a gin file asks for); anything else is a bug, not a usage error.
_GIN_ERRORS = (ValueError, KeyError, SyntaxError, OSError, ImportError,
               tokenize.TokenError)

# Search paths already handed to gin: it keeps them for the whole process and
# has no way to remove one, so `run` called again must not add duplicates.
_ADDED_SEARCH_PATHS: set[str] = set()


class UsageError(Exception):
  """A command-line or gin mistake the user must fix.

  `run` prints it as one line on stderr and exits with status 2. A binary
  may raise it too (e.g. for a bad MODEL_DIR) to get the same treatment.
  """

  def __init__(self, message: str):
    super().__init__(message)
    # Gin appends "In call to configurable ..." to errors raised inside a
    # configurable (through a proxy that forwards attributes); `message`
    # keeps what the user needs.
    self.message = message


class Interrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM stopped a binary; `message` says where and how to
  resume. `run` prints it as one line and exits with `exit_code` (130 for
  SIGINT, 143 for SIGTERM, the shells' 128 + signal number)."""

  def __init__(self, message: str, exit_code: int = 130):
    super().__init__(message)
    self.message = message
    self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class Flags:
  """The parsed command line (T5X flag names)."""

  gin_files: tuple[str, ...] = ()  # --gin_file, in order: later overrides.
  # --gin_bindings and rewritten --gin.NAME=VALUE, in command-line order.
  gin_bindings: tuple[str, ...] = ()
  gin_search_paths: tuple[str, ...] = ()  # Comma-split --gin_search_paths.
  tfds_data_dir: Optional[str] = None
  coordinator_address: Optional[str] = None  # host:port of process 0.
  process_count: Optional[int] = None
  process_index: Optional[int] = None
  multiprocess_gpu: bool = False  # T5X: jax.distributed even without address.
  log_to_stderr: bool = False  # --logtostderr / --alsologtostderr.
  verbosity: Optional[int] = None  # --verbosity / -v: raw library logs.
  help: bool = False


def _define_flags() -> flags.FlagValues:
  """A fresh flag registry, so `run` can be called many times in a process.

  absl's global FLAGS keeps values and definitions across calls; a private
  FlagValues keeps absl's syntax (--flag=value, --flag value, --noflag,
  --flagfile) without that state.
  """
  fv = flags.FlagValues()
  flags.DEFINE_multi_string(
      "gin_file", None,
      "Gin file to parse; repeat it, later files override earlier ones. A path"
      " or a path relative to a search path, e.g. runs/prompt_finetune.gin.",
      flag_values=fv)
  flags.DEFINE_multi_string(
      "gin_bindings", None,
      "Gin binding applied after the files, e.g. \"MODEL_DIR='/tmp/run'\";"
      " repeatable. --gin.NAME=VALUE is the same as"
      " --gin_bindings='NAME = VALUE' (strings need quotes:"
      " --gin.MODEL_DIR=\"'/tmp/run'\").",
      flag_values=fv)
  flags.DEFINE_multi_string(
      "gin_search_paths", None,
      "Comma-separated folders searched for --gin_file and gin `include`s;"
      " repeatable. The current folder and the package's gin folder are"
      " always searched.",
      flag_values=fv)
  flags.DEFINE_string(
      "tfds_data_dir", None,
      "Where TFDS data sets live; overrides the data_dir of seqio's TFDS"
      " sources.",
      flag_values=fv)
  flags.DEFINE_string(
      "coordinator_address", None,
      "host:port of process 0 for multi-process runs; every process gets the"
      " same value. Calls jax.distributed.initialize.",
      flag_values=fv)
  flags.DEFINE_integer(
      "process_count", None,
      "Number of processes (with --coordinator_address).",
      lower_bound=1, flag_values=fv)
  flags.DEFINE_integer(
      "process_index", None,
      "This process's index, 0 to process_count-1 (with"
      " --coordinator_address).",
      lower_bound=0, flag_values=fv)
  flags.DEFINE_boolean(
      "multiprocess_gpu", False,
      "Initialize jax.distributed even without --coordinator_address, from"
      " the cluster's environment (e.g. SLURM).",
      flag_values=fv)
  flags.DEFINE_boolean(
      "logtostderr", False, "Raw logs, INFO and above, to stderr.",
      flag_values=fv)
  flags.DEFINE_boolean(
      "alsologtostderr", False, "Raw logs, INFO and above, to stderr.",
      flag_values=fv)
  flags.DEFINE_integer(
      "verbosity", None,
      "Show every library's raw log (TensorFlow, seqio, absl, orbax) at"
      " absl's level: 1 debug, 0 info, -1 warning, -2 error. Without it the"
      " binaries print their own screens and one line per warning that needs"
      " action. PROMPT_TUNING_RAW_LOGS=1 does the same as --verbosity=0.",
      short_name="v", flag_values=fv)
  flags.DEFINE_boolean(
      "help", False, "Show this help and exit.", short_name="h",
      flag_values=fv)
  return fv


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Rewrites each `--gin.NAME=VALUE` to `--gin_bindings=NAME = VALUE` (T5X).

  Args:
    args: command-line arguments.

  Returns:
    `args` with the `--gin.` flags rewritten in place, so they keep their
    order relative to `--gin_bindings`.

  Raises:
    UsageError: a `--gin.` flag without `=VALUE`.
  """
  rewritten = []
  for arg in args:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep or not name:
        raise UsageError(
            f"{arg!r} has no value: write --gin.NAME=VALUE (e.g."
            " --gin.TRAIN_STEPS=100, --gin.MODEL_DIR=\"'/tmp/run'\")")
      arg = f"--gin_bindings={name} = {value}"
    rewritten.append(arg)
  return rewritten


def parse_flags(argv: Sequence[str], prog: str = "prompt_tuning") -> Flags:
  """Parses the command line (without the program name) into `Flags`.

  Raises:
    UsageError: an unknown flag, a bad value, a positional argument, or
      process flags that do not go together.
  """
  fv = _define_flags()
  try:
    rest = fv([prog, *rewrite_gin_args(argv)])
  except flags.Error as e:
    raise UsageError(f"{e} (see --help)") from e
  if len(rest) > 1:
    raise UsageError(
        f"unexpected argument {rest[1]!r}: every option is a flag, e.g."
        f" --gin_file={rest[1]} (see --help)")
  parsed = Flags(
      gin_files=tuple(fv.gin_file or ()),
      gin_bindings=tuple(fv.gin_bindings or ()),
      gin_search_paths=tuple(
          p.strip() for value in fv.gin_search_paths or ()
          for p in value.split(",") if p.strip()),
      tfds_data_dir=fv.tfds_data_dir,
      coordinator_address=fv.coordinator_address,
      process_count=fv.process_count,
      process_index=fv.process_index,
      multiprocess_gpu=fv.multiprocess_gpu,
      log_to_stderr=fv.logtostderr or fv.alsologtostderr,
      verbosity=fv.verbosity,
      help=fv.help,
  )
  _check_process_flags(parsed)
  return parsed


def _check_process_flags(f: Flags) -> None:
  given = f.process_count is not None or f.process_index is not None
  if given and not (f.coordinator_address or f.multiprocess_gpu):
    raise UsageError(
        "--process_count/--process_index need --coordinator_address=HOST:PORT"
        " (the address of process 0)")
  if (f.process_count is not None and f.process_index is not None
      and f.process_index >= f.process_count):
    raise UsageError(
        f"--process_index={f.process_index} must be below"
        f" --process_count={f.process_count} (indices start at 0)")


def help_text(main_fn: Callable[..., Any], prog: str) -> str:
  """The `--help` text: what the binary does and the flags."""
  doc = inspect.getdoc(main_fn) or ""
  summary = doc.splitlines()[0] if doc else ""
  return (
      f"usage: {prog} --gin_file=FILE... [--gin.NAME=VALUE...] [flags]\n\n"
      f"{summary}\nThe arguments of `{main_fn.__name__}` come from gin "
      "(the model and mesh from the models/ and run files).\n\n"
      f"flags:\n{_define_flags().get_help(prefix='  ')}\n")


def initialize_distributed(coordinator_address: Optional[str],
                           process_count: Optional[int],
                           process_index: Optional[int],
                           multiprocess_gpu: bool = False) -> bool:
  """Joins a multi-process run; returns whether jax.distributed was started.

  Must run before anything touches jax devices. On CPU, cross-process
  collectives use gloo, the default of `jax_cpu_collectives_implementation`
  in this jax; nothing needs setting.

  Raises:
    UsageError: jax rejects the process flags (e.g. a missing
      --process_count that no cluster manager supplies).
  """
  if not coordinator_address and not multiprocess_gpu:
    return False
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=process_count,
        process_id=process_index)
  except (ValueError, TypeError) as e:
    raise UsageError(
        f"cannot start the multi-process run: {console.first_line(e)}; pass"
        " --coordinator_address=HOST:PORT, --process_count=N and"
        " --process_index=I on every process") from e
  # Not jax.process_index(): that would start the backends here.
  logger.info("Joined a multi-process run as process %s of %s (coordinator"
              " %s).", process_index, process_count, coordinator_address)
  return True


def set_tfds_data_dir(tfds_data_dir: Optional[str]) -> None:
  """Points seqio's TFDS sources at `tfds_data_dir`; imports seqio only then."""
  if not tfds_data_dir:
    return
  import seqio  # pylint: disable=g-import-not-at-top  # Heavy: TF, TFDS.

  seqio.set_tfds_data_dir_override(tfds_data_dir)


def gin_search_paths(extra: Sequence[str] = ()) -> list[str]:
  """Folders searched for gin files, in order: cwd, `extra`, shipped gin dir."""
  paths = [".", *(os.path.abspath(os.path.expanduser(p)) for p in extra),
           gin_paths.gin_search_path()]
  return list(dict.fromkeys(paths))


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
  """The path of gin file `name`: as given, or under the first search path.

  Raises:
    UsageError: no such file; the message lists the search paths.
  """
  if "://" in name:  # A remote path: gin's registered file readers decide.
    return name
  path = os.path.expanduser(name)
  candidates = ([path] if os.path.isabs(path)
                else [os.path.join(p, path) for p in search_paths])
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  if os.path.isabs(path):
    raise UsageError(f"gin file {name} does not exist")
  guess = _closest_gin_file(path, search_paths[1:])
  raise UsageError(
      f"gin file {name} not found in the search paths"
      f" {', '.join(search_paths)}:"
      + (f" did you mean {guess}?" if guess else "")
      + " Check the name, or add its folder with --gin_search_paths=DIR")


def _closest_gin_file(name: str, roots: Sequence[str]) -> Optional[str]:
  """The shipped (or --gin_search_paths) gin file whose name is nearest."""
  known = sorted({
      p.relative_to(root).as_posix()
      for root in map(pathlib.Path, roots) if root.is_dir()
      for p in root.rglob("*.gin")})
  matches = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
  return matches[0] if matches else None


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses the files in order, then the bindings, then checks the result.

  The config is left unlocked (not `gin.finalize`d) so a binary can still
  bind values; the checks `gin.finalize` would run are run here.

  Args:
    gin_files: names or paths, resolved against `gin_search_paths(...)`.
    gin_bindings: gin statements, e.g. "TRAIN_STEPS = 10".
    search_paths: extra folders to search (`--gin_search_paths`).

  Raises:
    UsageError: a file not found, a syntax error, an unknown configurable or
      parameter, a failed `import` in a gin file, a macro referenced but
      never set, or a `%gin.REQUIRED` value never overridden.
  """
  paths = gin_search_paths(search_paths)
  for path in paths[1:]:  # Gin already searches '' (the cwd) first.
    if path not in _ADDED_SEARCH_PATHS:
      gin.add_config_file_search_path(path)
      _ADDED_SEARCH_PATHS.add(path)
  # Resolve all files first: a typo in the last one fails before any import.
  resolved = [resolve_gin_file(name, paths) for name in gin_files]

  def include(name: str) -> Optional[str]:
    try:
      return resolve_gin_file(name, paths)
    except UsageError:
      return None

  sources = []  # What was parsed, for the checks (gin reads URLs itself).
  for name, path in zip(gin_files, resolved):
    source = None if "://" in path else gin_checks.read_file(path)
    try:
      with _quiet_include_probes():
        gin.parse_config_file(path)
    except _GIN_ERRORS as e:
      raise UsageError(
          f"gin file {name}: {_describe(e, source, include)}") from e
    sources += [source] if source else []
  for binding in gin_bindings:  # One at a time, to name the bad one.
    source = gin_checks.Source(binding)
    try:
      gin.parse_config(binding)
    except _GIN_ERRORS as e:
      raise UsageError(f"gin binding {binding!r}:"
                       f" {_describe(e, source, include, binding)}") from e
    sources.append(source)
  _check_unset(gin_checks.unset(sources, include))
  _check_unread(gin_checks.unread_macros(sources, include))
  try:
    with gin.unlock_config():  # Run finalize's checks, leave it unlocked.
      gin.finalize()
  except _GIN_ERRORS as e:  # One the checks above did not foresee.
    raise UsageError(console.first_line(e)) from e


class _quiet_include_probes:  # pylint: disable=invalid-name
  """Drops gin's "Path not found" log lines while it resolves includes.

  gin probes each search path for an `include`d file and logs an ERROR for
  every miss, even when a later path has the file; a missing file is still
  reported, as one UsageError.
  """

  @staticmethod
  def filter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")

  def __enter__(self):
    logging.getLogger().addFilter(self.filter)

  def __exit__(self, *exc):
    logging.getLogger().removeFilter(self.filter)


def check_required_arguments(main_fn: Callable[..., Any]) -> None:
  """Fails unless gin binds every argument of `main_fn` without a default.

  Raises:
    UsageError: naming the first unbound argument and how to set it.
  """
  bound = gin.get_bindings(main_fn, resolve_references=False)
  name = main_fn.__name__
  for param in inspect.signature(main_fn).parameters.values():
    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
      continue
    required = param.default is param.empty or param.default is gin.REQUIRED
    if required and param.name not in bound:
      raise UsageError(
          f"{name}.{param.name} is not set: add the --gin_file that sets it"
          f" (e.g. runs/<name>.gin) or --gin.{name}.{param.name}=VALUE")


def run(main_fn: Callable[[], Any],
        argv: Optional[Sequence[str]] = None) -> Any:
  """Parses a T5X command line into gin, then calls `main_fn()`.

  Order: flags; jax.distributed (before anything touches devices); the TFDS
  data dir; gin files, then bindings and --gin.NAME=VALUE in command-line
  order; checks; `main_fn()`.

  Args:
    main_fn: a gin-configurable function taking all its arguments from gin
      (its module is imported, so its configurables are registered).
    argv: the arguments after the program name; default `sys.argv[1:]`.

  Returns:
    What `main_fn` returns. Do not return it from a console-script entry
    point (`sys.exit` would treat it as an error status).

  Raises:
    SystemExit: 2 after a one-line message on stderr, for a `UsageError`
      (including one raised by `main_fn`); 1 after a one-line message for
      bad input `main_fn` reports (INPUT_ERRORS); 0 after `--help`.
  """
  prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else (
      main_fn.__name__)
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    parsed = parse_flags(argv, prog)
    if parsed.help:
      sys.stdout.write(help_text(main_fn, prog))
      raise SystemExit(0)
    verbosity = parsed.verbosity
    if parsed.log_to_stderr and verbosity is None:
      verbosity = 0
    with console.log_policy(verbosity):
      initialize_distributed(parsed.coordinator_address,
                             parsed.process_count, parsed.process_index,
                             parsed.multiprocess_gpu)
      set_tfds_data_dir(parsed.tfds_data_dir)
      parse_gin(parsed.gin_files, parsed.gin_bindings,
                parsed.gin_search_paths)
      check_required_arguments(main_fn)
      logger.info("Gin config:\n%s", gin.config_str())
      return main_fn()
  except UsageError as e:
    message = getattr(e, "message", None) or str(e)
    sys.stderr.write(f"{prog}: error: {_one_line(message)}\n")
    raise SystemExit(USAGE_EXIT_CODE) from e
  except KeyboardInterrupt as e:
    # Ctrl-C: one line, not a traceback. What was committed stays (checkpoints
    # and exports are written whole or not at all).
    message = getattr(e, "message", None) or (
        "interrupted; files already saved are intact: rerun the same command "
        "to resume.")
    sys.stderr.write(f"{prog}: {message}\n")
    raise SystemExit(getattr(e, "exit_code", 130)) from None
  except INPUT_ERRORS as e:
    # Bad input found while running (a missing checkpoint, an unknown task,
    # a prompt of the wrong shape, a NaN loss): one line, not a traceback.
    # gin appends "In call to configurable ..." lines; the first line is the
    # message. PROMPT_TUNING_TRACEBACK=1 shows the whole trace.
    if os.environ.get("PROMPT_TUNING_TRACEBACK") == "1":
      raise
    sys.stderr.write(f"{prog}: error: {console.first_line(e)}\n")
    raise SystemExit(INPUT_ERROR_EXIT_CODE) from e


def write_config(model_dir: str) -> Optional[str]:
  """Writes the full gin config to MODEL_DIR/config.gin; call at start.

  Everything parsed, used or not, so a run that dies early still records
  what it was asked to do. Process 0 only; atomic (a reader never sees a
  half-written file).

  Returns:
    The path written, or None on other processes.
  """
  return _write_on_process_0(model_dir, gin.config_str())


def write_operative_config(model_dir: str) -> Optional[str]:
  """Writes the operative gin config to MODEL_DIR/config.gin; call at end.

  Only the values the run actually used (T5X's record of a run); replaces
  what `write_config` wrote. Process 0 only; atomic.

  Returns:
    The path written, or None on other processes.
  """
  return _write_on_process_0(model_dir, gin.operative_config_str())


def _write_on_process_0(model_dir: str, text: str) -> Optional[str]:
  return files.write_text_on_process_0(
      os.path.join(model_dir, CONFIG_FILENAME), text)


def _check_unset(unset: list[gin_checks.Unset]) -> None:
  """Fails on the first macro never set, or value left at %gin.REQUIRED.

  gin itself reports these only at `finalize` (with the whole config in the
  message) or when the configurable is called, after files may be written.
  """
  if not unset:
    return
  first, others = unset[0], [u.name for u in unset[1:]]
  if first.user is not None:
    raise UsageError(
        f"macro {first.name} is used by {first.user} but never set:"
        f" {_macro_hint(first.name)}"
        + (f" (also unset: {', '.join(others)})" if others else ""))
  if first.is_macro:
    raise UsageError(f"macro {first.name} is required (%gin.REQUIRED):"
                     f" {_macro_hint(first.name)}")
  raise UsageError(f"{first.name} is required (%gin.REQUIRED): set it with"
                   f" --gin.{first.name}=VALUE or in a --gin_file")


def _check_unread(unread: list[tuple[str, list[str]]]) -> None:
  """Fails on the first macro set with --gin.NAME that nothing reads."""
  if not unread:
    return
  name, read = unread[0]
  guess = difflib.get_close_matches(name, read, n=1, cutoff=0.6)
  raise UsageError(
      f"macro {name} is set but no binding reads it, so it would have no "
      "effect: " + (f"did you mean --gin.{guess[0]}?" if guess else
                    "check its name (macros are UPPER_CASE, e.g. "
                    "--gin.TRAIN_STEPS=100) or the gin files given"))


def _macro_hint(name: str) -> str:
  return _MACRO_HINTS.get(
      name, f"set it with --gin.{name}=VALUE (strings quoted:"
      f" --gin.{name}=\"'...'\") or in a --gin_file")


def _describe(e: BaseException, source: Optional[gin_checks.Source],
              include: gin_checks.Resolver,
              binding: Optional[str] = None) -> str:
  """One line for a gin parse error: what is wrong, where, and the fix."""
  if isinstance(e, tokenize.TokenError):
    return "unexpected end of input: an unclosed bracket or quote?"
  if isinstance(e, SyntaxError):
    word = gin_checks.unparsable_value(e)
    message = (f"cannot parse {word!r} as a value" if word
               else console.first_line(e.msg or "invalid syntax").rstrip("."))
    if binding is not None:
      return f"{message}; {_binding_syntax_hint(binding)}"
    where = (f" ({e.filename}, line {e.lineno})" if e.filename and e.lineno
             else "")
    return (f"{message}{where}; gin values are Python literals (strings"
            " quoted), @refs or %MACROS")
  problem = gin_checks.first_problem(source, include) if source else None
  return problem or console.first_line(e)


def _binding_syntax_hint(binding: str) -> str:
  """Usually a string value the shell stripped of its quotes."""
  name, _, value = (part.strip() for part in binding.partition("="))
  if value and re.match(r"[A-Za-z_/.~]", value) and value not in (
      "True", "False", "None"):
    return (f"a string value needs quotes inside the shell's, e.g."
            f" --gin.{name}=\"'{value}'\"")
  return ("write NAME = VALUE with a Python literal, @ref or %MACRO as VALUE;"
          " quote strings")


def _one_line(text: str) -> str:
  return re.sub(r"\s*\n\s*", " ", text.strip())
