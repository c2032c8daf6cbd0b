"""The files of a run directory (config.json, metrics.jsonl, summary.json), and where
fundamentals keeps its caches."""

import contextlib
import datetime
import json
import math
import os
import pathlib
import uuid
from typing import Any, Iterator, TextIO


def _jsonable(value: Any) -> Any:
  """JSON has no NaN/Infinity: non-finite floats become strings ('nan', 'inf');
  NumPy scalars become Python numbers and booleans."""
  if hasattr(value, 'dtype') and hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def finite(value: Any) -> bool:
  """Whether ``value`` is a finite number (records hold non-finite ones as strings)."""
  return isinstance(value, (int, float)) and math.isfinite(value)


def check_available(path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
  """Raises FileExistsError unless ``path`` may become a run directory: it is none
  yet, or an empty or new folder, or holds a run that ``overwrite`` may replace."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise FileExistsError(f'--workdir={path} exists and is not a directory')
  if (path / 'config.json').exists() and not overwrite:
    raise FileExistsError(
        f'--workdir={path} already holds a run; choose another --workdir '
        '(or pass --overwrite to replace it)')
  return path


def create(path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
  """Creates the run directory; refuses to reuse one that holds a run unless told to."""
  path = check_available(path, overwrite=overwrite)
  path.mkdir(parents=True, exist_ok=True)
  if overwrite:
    (path / 'metrics.jsonl').unlink(missing_ok=True)
  return path


def default_cache_dir() -> pathlib.Path:
  """``$FUNDAMENTALS_CACHE``, default ``~/.cache/fundamentals``: decoded image folders,
  JAX's compilation cache."""
  return pathlib.Path(os.environ.get(
      'FUNDAMENTALS_CACHE', pathlib.Path.home() / '.cache' / 'fundamentals'))


def default_path(experiment: str) -> str:
  """``runs/<YYYYmmdd-HHMMSS>-<experiment>``: a new directory for every run."""
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  return f'runs/{stamp}-{experiment}'


def start(config, *, overwrite: bool = False) -> pathlib.Path:
  """Creates the run directory of ``config`` (its ``workdir`` or a new default) and
  writes ``config.json`` into it; returns the directory."""
  path = create(config.workdir or default_path(config.experiment), overwrite=overwrite)
  write_json(path / 'config.json', config.to_dict())
  return path


@contextlib.contextmanager
def atomic_open(path: pathlib.Path) -> Iterator[TextIO]:
  """A new file beside ``path``, open for writing, renamed onto ``path`` when the block
  ends (removed if it raises): a reader sees the old file or the new one, whole.

  Made by ``open``, so its mode is the umask's (0o666 & ~umask, like the figures and
  every other file of a run), not ``tempfile``'s 0o600 that hides it from colleagues.
  """
  temporary = path.with_name(f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp')
  try:
    with open(temporary, 'x') as f:
      yield f
    os.replace(temporary, path)
  except BaseException:
    temporary.unlink(missing_ok=True)
    raise


def write_json(path: pathlib.Path, value: Any):
  """Writes ``value`` as JSON atomically (:func:`atomic_open`)."""
  with atomic_open(path) as f:
    json.dump(_jsonable(value), f, indent=2, sort_keys=True)
    f.write('\n')


def append_jsonl(path: pathlib.Path, record: dict[str, Any]):
  """Appends one JSON record as a line."""
  with open(path, 'a') as f:
    f.write(json.dumps(_jsonable(record), sort_keys=True) + '\n')


def write_jsonl(path: pathlib.Path, records: list[dict[str, Any]]):
  """Writes records as JSON lines atomically (:func:`atomic_open`)."""
  with atomic_open(path) as f:
    for record in records:
      f.write(json.dumps(_jsonable(record), sort_keys=True) + '\n')


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a JSON-lines file. A last line cut short (a run killed while
  appending it) is left out; a bad line elsewhere raises."""
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1 or line.endswith('\n'):
        raise
  return records


def write_text(path: pathlib.Path, text: str):
  """Writes ``text`` atomically (:func:`atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)
