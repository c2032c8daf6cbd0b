"""Flags made from knobs: what a user's mistake becomes (one line, exit status 2)."""

import contextlib
import io

from absl import flags
import pytest

from fundamentals import cli
from fundamentals.config import Config


@pytest.fixture
def flag_values() -> flags.FlagValues:
  values = flags.FlagValues()
  cli.define(Config, flag_values=values)
  return values


def test_a_list_given_to_a_flag_that_takes_one_value_is_named_so(flag_values):
  flag_values(['launch.py', '--image_size=32,64', '--workdir=runs/a,b'])
  with pytest.raises(ValueError, match=r"^--image_size=32,64: 'image_size' takes one value "
                                       r"\(it cannot be swept\); sweepable: \['activation'"):
    cli.values(Config, flag_values=flag_values)
  flag_values.unparse_flags()
  flag_values(['launch.py', '--image_size=big', '--workdir=runs/a,b'])
  with pytest.raises(ValueError, match='^--image_size=big: must be an integer$'):
    cli.values(Config, flag_values=flag_values)
  flag_values.unparse_flags()
  flag_values(['launch.py', '--workdir=runs/a,b'])  # A name may hold a comma.
  assert cli.values(Config, flag_values=flag_values) == ({'workdir': 'runs/a,b'}, {})


def test_a_user_error_is_one_line_even_when_a_library_wrote_several():
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exited:
    with cli.user_errors('path/to/launch.py'):
      raise ValueError('Parsing failed.\n  The format must be:\n\n    name[/config]\n')
  assert exited.value.code == cli.EXIT_USAGE == 2
  assert stderr.getvalue() == ('launch.py: error: Parsing failed. The format must be: '
                               'name[/config]\n')
  assert cli.one_line(FileNotFoundError()) == 'FileNotFoundError'
