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
import sys
from typing import Any, Iterator

from absl import flags

from fundamentals import config as config_lib

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
              else [config_lib.parse_value(field, texts[0])])
    explicit[field.name] = parsed[0]
    if len(parsed) > 1:
      axes[field.name] = parsed
  return explicit, axes


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


def _exit(program: str, error: Exception):
  message = str(error).strip() or type(error).__name__
  print(f'{program.rsplit("/", 1)[-1]}: error: {message}', file=sys.stderr)
  sys.exit(EXIT_USAGE)
