"""The files of a run directory (config.json, metrics.jsonl, summary.json), who may
write them, and where fundamentals keeps its caches.

One writer per run directory: a run takes its directory (:func:`claim`) before it
reads or changes anything there, with an exclusive ``flock`` on the hidden file
``.lock`` in it, which records the holder (pid, host, command). A second run, or a
``--resume``, into a directory another process holds is refused naming that
process. The lock lasts until :func:`release` or the end of the process: the kernel
drops it when a process ends, however (SIGKILL included), so no stale lock is left
to clean up. ``flock`` is emulated over NFS, so it also holds between hosts that
share a file system.

Writes fail loudly and leave nothing half-done: :func:`atomic_open` leaves the old
file whole and no temporary when it fails, :func:`append_jsonl` undoes a record it
could not write whole, and both raise an ``OSError`` that names the file and the
errno (a failed ``write`` alone names neither).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import pathlib
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator, TextIO

from absl import logging

LOCK = '.lock'
SWEEP_MANIFEST = 'sweep.json'  # sweep.MANIFEST: a directory holding a sweep.


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
  """Raises an OSError saying why, unless ``path`` may become a run directory: it is
  none yet, or an empty or new folder, or holds a run that ``overwrite`` may
  replace; no other process holds it (:func:`check_not_in_use`); and it, or the
  folder it would be made in, can be written. Writes nothing."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise FileExistsError(f'--workdir={path} exists and is not a directory')
  if (path / SWEEP_MANIFEST).exists() and not overwrite:
    raise FileExistsError(
        f'--workdir={path} holds a sweep or experiment ({SWEEP_MANIFEST}); choose another '
        '--workdir for a single run (re-running the sweep\'s own command resumes it)')
  if (path / 'config.json').exists() and not overwrite:
    raise FileExistsError(
        f'--workdir={path} already holds a run; choose another --workdir '
        '(or pass --overwrite to replace it)')
  check_not_in_use(path)
  check_writable(path)
  return path


def check_writable(path: str | os.PathLike) -> pathlib.Path:
  """Raises NotADirectoryError or PermissionError (naming the folder and the errno)
  unless ``path``, or the nearest folder above it that exists, can be written."""
  path = pathlib.Path(path)
  existing = path
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise NotADirectoryError(f'--workdir={path}: {existing} is a file, not a folder; '
                             'choose another --workdir')
  if not os.access(existing, os.W_OK | os.X_OK):
    code = errno.EROFS if _read_only_file_system(existing) else errno.EACCES
    why = 'is on a read-only file system' if code == errno.EROFS else 'is not writable'
    raise PermissionError(f'--workdir={path} cannot be written: {existing} {why} '
                          f'({errno.errorcode[code]}: {os.strerror(code)}); choose '
                          'another --workdir')
  return path


def _read_only_file_system(path: pathlib.Path) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


# The run directories this process holds: their open lock files, and how many claims
# each has (a sweep claims a member, then its training run claims it again), by the
# directory's (device, inode): the same under any name, and after a move.
_held: dict[tuple[int, int], tuple[TextIO, int]] = {}
_holding = threading.RLock()


def _key(path: pathlib.Path) -> tuple[int, int] | None:
  try:
    stat = os.stat(path)
  except OSError:
    return None
  return stat.st_dev, stat.st_ino


def claim(path: str | os.PathLike) -> pathlib.Path:
  """Takes the run directory ``path`` (made if missing) for this process: an
  exclusive, non-blocking ``flock`` on ``path/.lock``, which then records this
  process (pid, host, command). Held until as many :func:`release` calls as claims,
  or until the process ends. A process may claim a directory it holds again.

  Raises FileExistsError naming the process that holds it (:func:`in_use_message`).
  """
  path = pathlib.Path(path)
  with _holding:
    path.mkdir(parents=True, exist_ok=True)
    key = _key(path)
    if key in _held and _same_file(_held[key][0], path / LOCK):
      lock, claims = _held[key]
      _held[key] = (lock, claims + 1)
      return path
    if key in _held:  # A directory removed while held, its inode reused since.
      _held.pop(key)[0].close()
    with _naming(path / LOCK):
      lock = open(path / LOCK, 'a+')  # pylint: disable=consider-using-with  # Held.
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(lock, wait=True)
      lock.close()
      raise FileExistsError(in_use_message(path, holder)) from None
    except OSError as e:  # A file system without locks (ENOLCK, EOPNOTSUPP): go on.
      logging.warning('cannot lock %s (%s): a second run into it would not be refused',
                      path / LOCK, e.strerror)
    _write_holder(lock)
    _held[key] = (lock, 1)
  return path


def _same_file(lock: TextIO, path: pathlib.Path) -> bool:
  try:
    held, there = os.fstat(lock.fileno()), os.stat(path)
  except OSError:
    return False
  return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def release(path: str | os.PathLike):
  """Gives back one claim of ``path`` (:func:`claim`); the last one unlocks it. A
  directory this process does not hold is left alone."""
  with _holding:
    key = _key(pathlib.Path(path))
    if key not in _held:
      return
    lock, claims = _held.pop(key)
    if claims > 1:
      _held[key] = (lock, claims - 1)
      return
    with contextlib.suppress(OSError):  # Its holder's record is no longer true.
      lock.seek(0)
      lock.truncate()
      lock.flush()
    lock.close()  # Closing the last descriptor drops the flock.


def holds(path: str | os.PathLike) -> bool:
  """Whether this process holds the run directory ``path``."""
  with _holding:
    return _key(pathlib.Path(path)) in _held


def check_not_in_use(path: str | os.PathLike) -> pathlib.Path:
  """Raises FileExistsError naming the process that holds ``path`` (another one
  than this), without writing anything: for planning, before any work; a process
  that takes the directory in between is refused by :func:`claim`."""
  path = pathlib.Path(path)
  if holds(path):
    return path
  try:
    lock = open(path / LOCK)  # pylint: disable=consider-using-with
  except OSError:  # No lock file (never run), or none we may read: claim will tell.
    return path
  with lock:
    try:  # A shared lock is refused while another process holds the exclusive one.
      fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      raise FileExistsError(in_use_message(path, _read_holder(lock, wait=True))) from None
    except OSError:
      return path
    fcntl.flock(lock, fcntl.LOCK_UN)
  return path


def in_use_message(path: pathlib.Path, holder: dict[str, Any]) -> str:
  """``--workdir=P is in use by process PID (COMMAND); …``: one line for a refusal."""
  pid = holder.get('pid', 'unknown')
  where = (f' on {holder["host"]}' if holder.get('host')
           and holder['host'] != socket.gethostname() else '')
  what = holder.get('command') or 'its command is not recorded'
  return (f'--workdir={path} is in use by process {pid}{where} ({what}); wait for it to '
          'end or choose another --workdir')


def _write_holder(lock: TextIO):
  """Records this process in its lock file. A lock whose record cannot be written
  (a full disk) still holds: the record only names the holder to others."""
  command = ' '.join([pathlib.Path(sys.argv[0]).name if sys.argv else 'python',
                      *sys.argv[1:]])
  record = {'pid': os.getpid(), 'host': socket.gethostname(),
            'command': command if len(command) <= 200 else command[:199] + '…'}
  with contextlib.suppress(OSError):
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps(record) + '\n')
    lock.flush()


def _read_holder(lock: TextIO, *, wait: bool = False) -> dict[str, Any]:
  """The record of the process holding ``lock``; ``wait``: up to 0.5 s for one that
  has just taken it to write its record."""
  for attempt in range(6 if wait else 1):
    if attempt:
      time.sleep(0.1)
    try:
      lock.seek(0)
      record = json.loads(lock.read() or 'null')
    except (OSError, ValueError):
      record = None
    if isinstance(record, dict):
      return record
  return {}


def create(path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
  """Creates the run directory and takes it (:func:`claim`); refuses one that
  holds a run unless told to replace it, and one another process holds."""
  path = check_available(path, overwrite=overwrite)  # Before making anything.
  with _holding:
    claim(path)
    try:  # Again, now that no other process can: one may have made it meanwhile.
      check_available(path, overwrite=overwrite)
    except OSError:
      release(path)
      raise
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
  """Creates and takes the run directory of ``config`` (its ``workdir`` or a new
  default, :func:`create`) and writes ``config.json`` into it; returns the
  directory. Checking that it holds no run and writing ``config.json`` are one step:
  of two runs started into one directory at once, exactly one gets it."""
  with _holding:  # Threads of this process too, which share its claims.
    path = create(config.workdir or default_path(config.experiment), overwrite=overwrite)
    try:
      write_json(path / 'config.json', config.to_dict())
    except BaseException:
      release(path)
      raise
  return path


@contextlib.contextmanager
def _naming(path: pathlib.Path, *aliases: pathlib.Path) -> Iterator[None]:
  """Re-raises an OSError that names no file (a failed ``write``) or one of
  ``aliases`` (a temporary) as the same error naming ``path``."""
  try:
    yield
  except OSError as e:
    if e.errno is None or (e.filename is not None
                           and str(e.filename) not in map(str, aliases)):
      raise
    raise OSError(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def atomic_open(path: pathlib.Path) -> Iterator[TextIO]:
  """A new file beside ``path``, open for writing, renamed onto ``path`` when the block
  ends (removed if it raises): a reader sees the old file or the new one, whole. An
  OSError (e.g. a full disk) names ``path`` and its errno.

  Made by ``open``, so its mode is the umask's (0o666 & ~umask, like the figures and
  every other file of a run), not ``tempfile``'s 0o600 that hides it from colleagues.
  """
  path = pathlib.Path(path)
  temporary = path.with_name(f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp')
  try:
    with _naming(path, temporary):
      with open(temporary, 'x') as f:
        yield f
      os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      temporary.unlink(missing_ok=True)
    raise


def write_json(path: pathlib.Path, value: Any):
  """Writes ``value`` as JSON atomically (:func:`atomic_open`)."""
  with atomic_open(path) as f:
    json.dump(_jsonable(value), f, indent=2, sort_keys=True)
    f.write('\n')


def append_jsonl(path: pathlib.Path, record: dict[str, Any]):
  """Appends one JSON record as a line. If it cannot be written whole (a full disk),
  the file is cut back to where it was, so that it never ends in half a record, and
  the OSError names the file and its errno."""
  line = (json.dumps(_jsonable(record), sort_keys=True) + '\n').encode()
  with _naming(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # open()'s mode.
    try:
      end = os.lseek(fd, 0, os.SEEK_END)
      try:
        rest = memoryview(line)
        while rest:
          rest = rest[os.write(fd, rest):]
      except OSError:
        with contextlib.suppress(OSError):
          os.ftruncate(fd, end)
        raise
    finally:
      os.close(fd)


def write_jsonl(path: pathlib.Path, records: list[dict[str, Any]]):
  """Writes records as JSON lines atomically (:func:`atomic_open`)."""
  with atomic_open(path) as f:
    for record in records:
      f.write(json.dumps(_jsonable(record), sort_keys=True) + '\n')


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a JSON-lines file. A last line cut short (no newline: a run
  killed while appending it) is left out; a bad line elsewhere raises ValueError
  naming the file and the line."""
  path = pathlib.Path(path)
  *lines, last = path.read_bytes().split(b'\n')  # ``last``: b'' after a final newline.
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError: not text.
      why = f'{e.msg} at column {e.colno}' if isinstance(e, json.JSONDecodeError) else e
      raise ValueError(f'{path}: line {number} is not JSON ({why}); restore the file '
                       'from a copy, or start the run afresh (--overwrite)') from None
    if not isinstance(record, dict):
      raise ValueError(f'{path}: line {number} is not a record (a JSON object) but '
                       f'{type(record).__name__}; restore the file from a copy, or start '
                       'the run afresh (--overwrite)')
    records.append(record)
  if last.strip():
    try:
      record = json.loads(last)
    except ValueError:  # Cut short.
      record = None
    if isinstance(record, dict):
      records.append(record)
  return records


def write_text(path: pathlib.Path, text: str):
  """Writes ``text`` atomically (:func:`atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)
