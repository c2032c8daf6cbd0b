"""Command-line flags made from knobs: one absl flag per field of a knob dataclass.

``define(cls)`` turns every field declared with ``config.knob`` into a flag: its
default, help text (with the valid names, and whether a comma-separated list sweeps
it) and ``--helpfull`` group come from the declaration; sweepable fields and tuples
take comma-separated lists. ``values(cls)`` reads the flags back as the explicitly
given values and the sweep axes; validation is the dataclass's and the registries',
never the flags'. A flag that cannot be parsed, like any other user error, is one
line on stderr and exit status 2 (:func:`parse_flags`, :func:`user_errors`).
"""

import contextlib
import dataclasses
import errno
import linecache
import pathlib
import shlex
import sys
from typing import Any, Iterator

from absl import flags

from fundamentals import config as config_lib
from fundamentals import train

FLAGS = flags.FLAGS

# launch.py's exit status, for schedulers and scripts (README.md, "Exit status").
EXIT_COMPLETED = 0
EXIT_CRASHED = 1  # An unexpected error: Python's own status for an uncaught exception.
EXIT_USAGE = 2  # A user error (flag, file, folder), refused before any work.
EXIT_DIVERGED = 3  # A run, or a member of a sweep or experiment, diverged.
EXIT_INTERRUPTED = 4  # Stopped by SIGTERM or SIGINT, checkpointed: --resume goes on.

USER_ERRORS = (ValueError, OSError)
"""What a user's input raises before any work starts: bad values (ValueError),
missing data or an occupied directory (FileNotFoundError, FileExistsError…)."""


def _help(field: dataclasses.Field) -> str:
  meta, text = field.metadata, field.metadata['help']
  if meta.get('choices'):
    text += f' One of: {", ".join(meta["choices"]())}.'
  if meta.get('sweep'):
    text += ' A comma-separated list sweeps it.'
  return text


def flag_name(field: dataclasses.Field, prefix: str = '') -> str:
  """``<prefix><name>``, the name a knob's ``flag`` metadata gives (for a flag that
  cannot be a field name, such as ``--from``) or its field name."""
  return prefix + (field.metadata.get('flag') or field.name)


def define(cls, *, prefix: str = '', flag_values: flags.FlagValues = FLAGS):
  """Defines ``--<prefix><field>`` for every field of the knob dataclass ``cls``."""
  for field in dataclasses.fields(cls):
    name, meta = flag_name(field, prefix), field.metadata
    options = dict(flag_values=flag_values, module_name=meta['group'])
    if field.type is bool and not meta['sweep']:
      flags.DEFINE_boolean(name, field.default, _help(field), **options)
    elif meta['sweep'] or config_lib.is_tuple(field.type):
      default = field.default if isinstance(field.default, tuple) else [field.default]
      flags.DEFINE_list(name, [config_lib.format_value(v) for v in default], _help(field),
                        **options)
    else:
      flags.DEFINE_string(name, config_lib.format_value(field.default), _help(field),
                          **options)


def values(cls, *, prefix: str = '', flag_values: flags.FlagValues = FLAGS
           ) -> tuple[dict[str, Any], dict[str, list[Any]]]:
  """The fields given on the command line, parsed, and the sweep axes among them.

  Returns ``(explicit, axes)``: ``explicit`` maps each field whose flag was given to
  its value (a swept field: its first value); ``axes`` maps each swept field to all
  its values. Raises ValueError naming a flag whose value does not parse.
  """
  explicit, axes = {}, {}
  for field in dataclasses.fields(cls):
    flag = flag_values[flag_name(field, prefix)]
    if not flag.present:
      continue
    if isinstance(flag.value, bool):
      explicit[field.name] = flag.value
      continue
    texts = flag.value if isinstance(flag.value, list) else [flag.value]
    parsed = (config_lib.parse_values(field, texts) if isinstance(flag.value, list)
              else [_parse_one(field, texts[0], prefix=prefix, cls=cls)])
    explicit[field.name] = parsed[0]
    if len(parsed) > 1:
      axes[field.name] = parsed
  return explicit, axes


def _parse_one(field: dataclasses.Field, text: str, *, prefix: str, cls) -> Any:
  """A single-valued flag's value; a list given to it is named as such (a sweep of a
  field that cannot be swept), not as a value of the wrong kind."""
  try:
    return config_lib.parse_value(field, text)
  except ValueError:
    if ',' not in text:
      raise
    sweepable = (f'; sweepable: {config_lib.sweepable_fields()}'
                 if cls is config_lib.Config else '')
    raise ValueError(f'--{flag_name(field, prefix)}={text}: {field.name!r} takes one value '
                     f'(it cannot be swept){sweepable}') from None


def given(cls, *, prefix: str = '', flag_values: flags.FlagValues = FLAGS) -> list[str]:
  """The flags of ``cls``'s fields that were given on the command line."""
  return [f'--{flag_name(f, prefix)}' for f in dataclasses.fields(cls)
          if flag_values[flag_name(f, prefix)].present]


def explicit(cls, *, prefix: str = '', flag_values: flags.FlagValues = FLAGS
             ) -> dict[str, Any]:
  """The fields of ``cls`` given on the command line (one value each), parsed;
  raises ValueError on a bad one."""
  given_values, axes = values(cls, prefix=prefix, flag_values=flag_values)
  if axes:
    raise ValueError(f'{", ".join(f"--{prefix}{k}" for k in axes)} take one value')
  return given_values


def build(cls, *, prefix: str = '', flag_values: flags.FlagValues = FLAGS):
  """``cls`` from its flags (one value each); raises ValueError on a bad one."""
  return cls(**explicit(cls, prefix=prefix, flag_values=flag_values))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a user's mistake as one line and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _exit(argv[0], e)


@contextlib.contextmanager
def user_errors(program: str) -> Iterator[None]:
  """Turns the errors of a user's input into one line on stderr and exit status 2."""
  try:
    yield
  except USER_ERRORS as e:
    _exit(program, e)


def one_line(error: Exception) -> str:
  """The error's message as one line (a library's message may span several: its
  lines are joined), or its type's name when it has none."""
  return ' '.join(line.strip() for line in str(error).splitlines() if line.strip()
                  ) or type(error).__name__


def _exit(program: str, error: Exception):
  print(f'{program.rsplit("/", 1)[-1]}: error: {one_line(error)}', file=sys.stderr)
  sys.exit(EXIT_USAGE)


def run_work(work, *, program: str, levels: int, judged: bool,
             shard: tuple[int, int], root: str | None = None) -> int:
  """Runs the planned ``work``; returns launch.py's exit status (``EXIT_*``), its line
  said. ``levels``, ``root``: where the --workdir is (:func:`go_on_command`);
  ``judged``: whether a divergence exits 3, counted over this ``shard``'s members."""
  try:
    with train.stop_on_signals(), errors_during_work(program):
      result = work()
  except train.Stopped as stopped:  # Its checkpoint and summary are written.
    print(f'{program}: {stopped}; go on with: {go_on_command(stopped, levels=levels, root=root)}',
          file=sys.stderr)
    return EXIT_INTERRUPTED
  if train.stop_requested():
    print(f'{program}: {train.stop_requested()} came as the last run was ending; it '
          'finished', file=sys.stderr)
  k, n = shard  # This job's members (sweep.shard): the ones it answers for.
  mine = result['members'][k::n] if judged and 'members' in result else None
  diverged = diverged_runs(result, mine) if judged else []
  if not diverged:
    return EXIT_COMPLETED
  print(f'{program}: ' + (
      f'{len(diverged)} of {len(mine)} runs diverged: {", ".join(diverged)}'
      if mine is not None else
      f'the run diverged at step {result["diverged_at_step"]} (a loss that is not '
      f'finite): {result["workdir"]}/summary.json'), file=sys.stderr)
  return EXIT_DIVERGED


def diverged_runs(summary: dict[str, Any], members: list[dict[str, Any]] | None
                  ) -> list[str]:
  """The runs that diverged: of ``members`` (a sweep's, as ``runner.execute`` returns
  them), their names; else of the single run's ``summary``, its directory."""
  if members is not None:
    return [m['name'] for m in members if m['status'] == 'diverged']
  return [summary['workdir']] if summary.get('status') == 'diverged' else []


def go_on_command(stopped: train.Stopped, *, levels: int, root: str | None = None) -> str:
  """The command that goes on after ``stopped``: this one without --overwrite (which
  would start afresh), with the --workdir it wrote to (``root``, or ``levels`` above
  the stopped run's: 0 a single run, 1 a sweep or experiment, the nearest folder above
  it with a ``sweep.json`` (a member may lie deeper, as ``batchnorm``'s ``grid/…``), 2
  ``--experiment=all``, the folder above that) and, for a single run, --resume (a
  sweep resumes by running again)."""
  args = [a for a in sys.argv[1:]
          if a.split('=')[0].lstrip('-') not in ('overwrite', 'nooverwrite')]
  if not FLAGS['workdir'].present:
    workdir = pathlib.Path(stopped.workdirs[0])
    if root is None and levels:
      sweeps = [p for p in workdir.parents if (p / 'sweep.json').is_file()]
      root = (sweeps[0] if levels == 1 else sweeps[0].parent) if sweeps else (
          workdir.parents[levels - 1])
    args.append(f'--workdir={root or workdir}')
  if not levels and not FLAGS['resume'].value:
    args.append('--resume')
  return shlex.join(['python', sys.argv[0], *args])


@contextlib.contextmanager
def errors_during_work(program: str) -> Iterator[None]:
  """One line for what goes wrong after planning, and no traceback: a user error
  met only then (a directory another process took meanwhile, a damaged file the
  library names: FileExistsError, FileNotFoundError, a ValueError raised by
  fundamentals or experiments) exits 2 as before any work; a disk that refuses
  (any other OSError: full, read-only, no permission) exits 1 naming the file and
  the errno. Anything else is a crash: its traceback, exit 1."""
  try:
    yield
  except (FileExistsError, FileNotFoundError) as e:
    _fail(program, e, EXIT_USAGE)
  except ValueError as e:
    if not _raised_by_the_library(e):
      raise
    _fail(program, e, EXIT_USAGE)
  except OSError as e:
    _fail(program, e, EXIT_CRASHED)


def _fail(program: str, error: Exception, status: int):
  """One line on stderr (an OSError's file, reason and errno name), then exit."""
  if isinstance(error, OSError) and error.errno and error.filename:
    message = (f'{error.filename}: {error.strerror} '
               f'({errno.errorcode.get(error.errno, error.errno)})')
  else:
    message = one_line(error)
  print(f'{program}: error: {message}', file=sys.stderr)
  sys.exit(status)


_LIBRARY = (str(pathlib.Path(__file__).resolve().parent),  # fundamentals/ and experiments/.
            str(pathlib.Path(__file__).resolve().parent.parent / 'experiments'))


def _raised_by_the_library(error: BaseException) -> bool:
  """Whether ``error`` was raised by a ``raise`` statement of fundamentals/ or
  experiments/ (the innermost frame of its traceback): a message written for a user,
  not a failure deep in JAX, nor a bug such as ``max([])`` inside the library."""
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  if tb is None:
    return False
  filename = tb.tb_frame.f_code.co_filename
  in_library = str(pathlib.Path(filename).resolve()).startswith(
      tuple(root + '/' for root in _LIBRARY))
  return in_library and linecache.getline(filename, tb.tb_lineno).lstrip().startswith('raise')
