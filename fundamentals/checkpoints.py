"""Checkpoints of a run in training, so that a killed run goes on where it was.

``<workdir>/checkpoint/<step>/`` holds the run's ``TrainState`` (orbax, its leaves in
order; PRNG keys as key data) and ``<workdir>/checkpoint/<step>.json`` what the host
needs besides (status, init diagnostics) and the integrity of the saved state (the
:func:`checksum` of its leaves, the SHA-256 of each file orbax wrote), written
atomically after the state: a step with both is a whole checkpoint. Writers
save every run of a group first and :func:`prune` each to its newest
``keep_checkpoints`` steps after, so a kill in between leaves a step they share, and a
damaged latest checkpoint has an older one to fall back to. Only process 0 of a
multi-host run saves and restores (its checkpointer waits for no other process); the
others get the state by broadcast.

A checkpoint is trusted once it verifies (:func:`verify`): its host file reads, its
files are those saved, orbax restores its arrays, and they have the checksum saved with
them. From which step a run,
or a group of runs trained together, goes on (:func:`resume_step`) is the newest step
every run of it can trust, found by restoring each candidate; the checkpoints it passes
over are named in a warning and left as they are (nothing is deleted or rewritten
before verification). Also here: when a checkpoint is due (:func:`is_due`).
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging as py_logging
import os
import pathlib
import re
import shutil
from typing import Any, Iterator, Sequence

from absl import logging
import jax
import numpy as np

from fundamentals import rundir
from fundamentals import runtime

DIRNAME = 'checkpoint'
STALE = ('*.orbax-checkpoint-tmp*', '.*.tmp')
"""What a killed save leaves in ``checkpoint/``: orbax's temporary directory of the
step it was writing, a temporary host file (``rundir.atomic_open``)."""
# Status names of tensorstore errors that say what the file system refused.
_STATUS_ERRNO = {'RESOURCE_EXHAUSTED': errno.ENOSPC, 'PERMISSION_DENIED': errno.EACCES}
_warned: set[str] = set()  # Planning and training check the same checkpoints: warn once.


def _checkpointer():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  # Slow to import.
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=jax.process_index(), active_processes={jax.process_index()}))


def raw_leaves(state) -> list[np.ndarray]:
  """The leaves of ``state`` as NumPy arrays, PRNG keys as their key data."""
  leaves = [jax.random.key_data(x) if runtime.is_prng_key(x) else x for x in jax.tree.leaves(state)]
  return [np.asarray(x) for x in jax.device_get(leaves)]


def from_raw_leaves(leaves: list[np.ndarray], like):
  """The inverse of :func:`raw_leaves`: the structure, dtypes and key types of
  ``like``; raises ValueError when the arrays do not fit it."""
  template, treedef = jax.tree.flatten(like)
  shapes = [np.shape(x) for x in raw_leaves(like)]
  if [np.shape(x) for x in leaves] != shapes:
    raise ValueError(f'the checkpoint holds {len(leaves)} arrays of shapes '
                     f'{[np.shape(x) for x in leaves][:4]}…; this run has {len(shapes)} of '
                     f'{shapes[:4]}…: a different model or optimizer')
  return jax.tree.unflatten(treedef, [
      jax.random.wrap_key_data(np.asarray(x), impl=jax.random.key_impl(t)) if runtime.is_prng_key(t)
      else np.asarray(x, dtype=np.asarray(t).dtype) for x, t in zip(leaves, template)])


def checksum(leaves: Sequence[np.ndarray]) -> str:
  """``'sha256:<hex>'``: SHA-256 of each array's dtype, shape and bytes (C order), in
  order. Equal for equal arrays on any machine (the dtype names the byte order)."""
  digest = hashlib.sha256()
  for x in leaves:
    x = np.asarray(x)
    digest.update(f'{x.dtype.str}{x.shape};'.encode())
    digest.update(np.ascontiguousarray(x).tobytes())
  return 'sha256:' + digest.hexdigest()


def file_digests(path: pathlib.Path) -> dict[str, str]:
  """``{relative path: SHA-256 hex}`` of every file under the directory ``path``."""
  path = pathlib.Path(path)
  return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
          for f in sorted(path.rglob('*')) if f.is_file()}


def disk_error(error: BaseException, path: pathlib.Path) -> OSError | None:
  """``error`` as an OSError naming ``path`` and the errno, when the file system caused
  it: an OSError in its chain, or an orbax (tensorstore) error carrying
  ``os_error_code`` or a status such as ``RESOURCE_EXHAUSTED`` (a full disk); else None.

  >>> str(disk_error(ValueError("RESOURCE_EXHAUSTED: Failed writing: [os_error_code='28']"),
  ...                pathlib.Path('/runs/a/checkpoint/8')))
  "[Errno 28] No space left on device: '/runs/a/checkpoint/8'"
  """
  seen = []
  while error is not None and all(error is not e for e in seen):
    seen.append(error)
    code = error.errno if isinstance(error, OSError) else None
    if not code:
      found = re.search(r"os_error_code='?(\d+)", str(error))
      code = int(found.group(1)) if found else next(
          (number for status, number in _STATUS_ERRNO.items() if status in str(error)), None)
    if code:
      return OSError(code, os.strerror(code), str(path))
    error = error.__cause__ or error.__context__
  return None


class _OrbaxErrors(py_logging.Filter):
  """Drops orbax's ERROR records (with tracebacks of its background threads): the
  error they report is raised to the caller, as one OSError when the disk refused."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.levelno >= py_logging.ERROR
                and f'{os.sep}orbax{os.sep}' in record.pathname)


@contextlib.contextmanager
def _orbax_errors_raised_not_logged() -> Iterator[None]:
  logger, quiet = py_logging.getLogger('absl'), _OrbaxErrors()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _remove_partial(path: pathlib.Path):
  """``path`` and orbax's temporary directories of it."""
  shutil.rmtree(path, ignore_errors=True)
  for temporary in path.parent.glob(f'{path.name}.orbax-checkpoint-tmp*'):
    shutil.rmtree(temporary, ignore_errors=True)


def save_arrays(path: pathlib.Path, tree) -> dict[str, Any]:
  """Saves the raw leaves of ``tree`` (:func:`raw_leaves`) into the orbax directory
  ``path``, replacing one left there (e.g. by a process killed while saving it);
  returns what :func:`verify` checks of it: ``'checksum'`` (the leaves'
  :func:`checksum`) and ``'files'`` (the :func:`file_digests` of ``path``).

  When the file system refuses (a full disk, a read-only one), raises an OSError that
  names ``path`` and the errno (:func:`disk_error`) and leaves nothing of ``path``.
  """
  path = pathlib.Path(path)
  leaves = raw_leaves(tree)
  try:
    if path.exists():
      shutil.rmtree(path)
    with _orbax_errors_raised_not_logged():
      checkpointer = _checkpointer()
      checkpointer.save(path.resolve(), {'leaves': leaves})
      checkpointer.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  # Re-raised.
    _remove_partial(path)
    error = disk_error(e, path)
    if error is None:
      raise
    raise error from e
  return {'checksum': checksum(leaves), 'files': file_digests(path)}


def restore_arrays(path: pathlib.Path) -> list[np.ndarray]:
  """The raw leaves :func:`save_arrays` saved in ``path``, as NumPy arrays (on any
  machine: they hold no device placement)."""
  return [np.asarray(x) for x in _checkpointer().restore(pathlib.Path(path).resolve())['leaves']]


def remove_stale(workdir: pathlib.Path):
  """Removes what killed saves left in ``workdir``'s checkpoints (``STALE``). Only for
  the run that holds the directory (``rundir.claim``): another one's save in progress
  looks the same."""
  root = pathlib.Path(workdir) / DIRNAME
  for pattern in STALE:
    for path in root.glob(pattern) if root.is_dir() else []:
      shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def save(workdir: pathlib.Path, step: int, state, *, host: dict[str, Any]):
  """Saves ``state`` after ``step`` steps, then ``host`` (JSON-ready) beside it with
  the integrity of the saved state (:func:`save_arrays`: ``'checksum'``, ``'files'``).

  First removes what killed saves left (:func:`remove_stale`) and a checkpoint of
  ``step`` already there (its host file first, so that it never pairs with these
  arrays). A failed save (e.g. an OSError of a full disk, naming the path and errno)
  leaves nothing of ``step``; the other checkpoints stay as they were.
  """
  root = pathlib.Path(workdir) / DIRNAME
  remove_stale(workdir)
  (root / f'{step}.json').unlink(missing_ok=True)
  try:
    integrity = save_arrays(root / str(step), state)
    rundir.write_json(root / f'{step}.json', {'step': step, **host, **integrity})
  except BaseException:
    shutil.rmtree(root / str(step), ignore_errors=True)
    raise


def _step_of(name: str) -> int | None:
  """The step a ``checkpoint/`` entry is of (``8``, ``8.json``), else None."""
  stem = name[:-len('.json')] if name.endswith('.json') else name
  return int(stem) if stem.isdigit() else None


def _read_host(root: pathlib.Path, step: int) -> tuple[dict[str, Any] | None, str]:
  """``(host, '')`` from ``<step>.json``, or ``(None, what is wrong with it)``."""
  path = root / f'{step}.json'
  try:
    host = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # Unreadable, not UTF-8, not JSON.
    return None, f'its host file {path.name} is unreadable ({_brief(e)})'
  if not isinstance(host, dict) or host.get('step') != step:
    return None, f'its host file {path.name} is damaged (not the host side of step {step})'
  files = host.get('files', {})
  if not (isinstance(host.get('checksum', ''), str) and isinstance(files, dict)
          and all(isinstance(v, str) for v in files.values())):
    return None, f'its host file {path.name} is damaged (its checksums are not strings)'
  return host, ''


def _whole(workdir: pathlib.Path) -> dict[int, tuple[dict[str, Any] | None, str]]:
  """Per step with both its directory and its host file: :func:`_read_host`'s."""
  root = pathlib.Path(workdir) / DIRNAME
  steps = {_step_of(p.name) for p in root.glob('*.json')} if root.is_dir() else set()
  return {step: _read_host(root, step) for step in sorted(steps - {None})
          if (root / str(step)).is_dir()}


def available(workdir: pathlib.Path) -> dict[int, dict[str, Any]]:
  """``{step: host}`` of the whole checkpoints in ``workdir`` whose host file reads
  (not yet verified: :func:`verify`)."""
  return {step: host for step, (host, _) in _whole(workdir).items() if host is not None}


def _brief(error: BaseException) -> str:
  """``error`` in one short line: its type and the first line of its message, without
  tensorstore's spec and the database path (the checkpoint is named beside it)."""
  text = (str(error).strip().splitlines() or [''])[0]
  text = re.sub(r'\s*\[tensorstore_spec=.*', '', text)
  text = re.sub(r' in OCDBT database at local file "[^"]*"', '', text)
  return f'{type(error).__name__}: {text[:200]}'


def _restored(workdir: pathlib.Path, step: int) -> tuple[list[np.ndarray] | None, str]:
  """``(leaves, '')`` of a checkpoint that verifies, else ``(None, what is wrong)``."""
  root = pathlib.Path(workdir) / DIRNAME
  host, why = _read_host(root, step)
  if host is None:
    return None, why
  why = _changed_file(root / str(step), host.get('files'))
  if why:  # Found before orbax reads it (which fails with noise from its threads).
    return None, why
  try:
    leaves = restore_arrays(root / str(step))
  except Exception as e:  # pylint: disable=broad-except  # Any failure: not trusted.
    return None, f'orbax cannot restore it ({_brief(e)})'
  saved = host.get('checksum')
  if saved is not None and saved != (restored := checksum(leaves)):
    return None, f'checksum mismatch (saved {saved[:19]}…, restored {restored[:19]}…)'
  return leaves, ''


def _changed_file(path: pathlib.Path, saved: dict[str, str] | None) -> str:
  """What differs of the files under ``path`` from their ``saved`` digests ('' if
  none, or if none were saved); files added since are no damage."""
  for name, digest in (saved or {}).items():
    if not (path / name).is_file():
      return f'its file {name} is missing'
    try:
      now = hashlib.sha256((path / name).read_bytes()).hexdigest()
    except OSError as e:
      return f'its file {name} is unreadable ({e.strerror})'
    if now != digest:
      return (f'checksum mismatch of its file {name} (saved sha256:{digest[:12]}…, now '
              f'sha256:{now[:12]}…)')
  return ''


def verify(workdir: pathlib.Path, step: int) -> str:
  """What is wrong with ``workdir``'s checkpoint of ``step``; '' when it can be trusted:
  its host file reads and is of ``step``, every file orbax wrote is there with the
  digest saved (not truncated, emptied, flipped or deleted), orbax restores the arrays
  and they have the checksum saved. A checkpoint saved before these were kept (no
  ``'files'``, no ``'checksum'`` in its host file) is trusted once orbax restores it."""
  return _restored(workdir, step)[1]


def restore_leaves(workdir: pathlib.Path, step: int) -> list[np.ndarray]:
  """The raw leaves saved after ``step`` steps (see :func:`from_raw_leaves`), verified
  (:func:`verify`); raises ValueError naming the checkpoint and what is wrong with it."""
  leaves, why = _restored(workdir, step)
  if leaves is None:
    raise ValueError(f'{pathlib.Path(workdir) / DIRNAME / str(step)}: {why}')
  return leaves


def prune(workdir: pathlib.Path, *, keep: int, newest: int = 1):
  """Keeps the ``newest`` newest whole checkpoints up to step ``keep`` (step ``keep``
  among them; by default it alone) and removes the others before it, half-saved ones
  and what killed saves left (``STALE``) included. Only older checkpoints whose host
  file reads and whose files have their saved digests count among the kept: a damaged
  one (such as one a resumed run fell back from) never takes a good one's place.
  Checkpoints of steps after ``keep`` stay (e.g. a damaged one a resumed run fell back
  from, until it saves past it)."""
  if newest < 1:
    raise ValueError(f'{newest=} must be >= 1')
  root = pathlib.Path(workdir) / DIRNAME
  intact = sorted(s for s, (host, _) in _whole(workdir).items() if s < keep
                  and host is not None and not _changed_file(root / str(s), host.get('files')))
  kept = {keep, *(intact[-(newest - 1):] if newest > 1 else ())}
  for path in root.iterdir() if root.is_dir() else []:
    step = _step_of(path.name)
    if step is None or (step < keep and step not in kept):
      shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()


def remove(workdir: pathlib.Path):
  shutil.rmtree(pathlib.Path(workdir) / DIRNAME, ignore_errors=True)


def is_due(done: int, last_checkpoint: int, config) -> bool:
  """Whether to save after ``done`` steps (a record step): at the first record step
  at or after each multiple of ``checkpoint_every`` (0: never), so that checkpoints
  change no record; not at the end, since a finished run needs none."""
  every = config.checkpoint_every
  return bool(every) and done < config.steps and done // every > last_checkpoint // every


def save_group(workdirs: Sequence[pathlib.Path], states: Sequence[Any],
               hosts: Sequence[dict[str, Any]], step: int, *, keep: int):
  """Every run's checkpoint (diverged ones too), then each run's older ones pruned to
  its ``keep`` newest steps (``keep_checkpoints``): a kill in between leaves a step all
  runs of the group have, and a failed save (a full disk) removes nothing older."""
  for workdir, state, host in zip(workdirs, states, hosts):
    save(workdir, step, state, host=host)
  for workdir in workdirs:
    prune(workdir, keep=step, newest=keep)


def resumable(config) -> tuple[dict[int, dict[str, Any]], str]:
  """``({step: host side} of its checkpoints, '')`` when ``config.workdir`` holds an
  unfinished run of this same config that saved some (not yet verified); else ``({},
  why not)``. Unfinished: no ``summary.json``, or one of status ``interrupted`` (a
  graceful stop). (In a multi-host run every process reads them: a shared file system.)"""
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(config.workdir) if config.workdir else None
  if workdir is None or not (workdir / 'config.json').exists():
    return {}, 'it holds no run'
  if (workdir / 'summary.json').exists():
    try:
      summary = json.loads((workdir / 'summary.json').read_text())
    except (OSError, ValueError) as e:
      return {}, f'its summary.json is unreadable ({_brief(e)})'
    if not isinstance(summary, dict) or summary.get('status') != 'interrupted':
      return {}, 'that run finished'
  try:
    stored = Config.from_json((workdir / 'config.json').read_text())
  except (ValueError, TypeError) as e:
    return {}, f'its config.json is unreadable ({e})'
  stored = dataclasses.replace(stored, workdir=config.workdir)  # Same folder, any spelling.
  if stored != config:
    return {}, f'that run had other settings ({", ".join(stored.differences(config))})'
  whole = _whole(workdir)
  found = {step: host for step, (host, _) in whole.items() if host is not None}
  if found or not whole:
    return found, '' if found else 'that run saved no checkpoint'
  return {}, 'none of its checkpoints can be trusted: ' + '; '.join(
      f'{workdir / DIRNAME / str(step)}: {why}' for step, (_, why) in whole.items())


def _newest_trusted(workdirs: Sequence[pathlib.Path]) -> tuple[int, list[str]]:
  """The newest step whose checkpoint verifies in every one of ``workdirs`` (0: none),
  and what is wrong with each newer one passed over (``'<path>: <why>'``)."""
  shared = set.intersection(*(set(_whole(w)) for w in workdirs))
  damaged = []
  for step in sorted(shared, reverse=True):
    wrong = [f'{pathlib.Path(w) / DIRNAME / str(step)}: {why}' for w in workdirs
             if (why := verify(w, step))]
    if not wrong:
      return step, damaged
    damaged += wrong
  return 0, damaged


def _warn_once(message: str):
  if message not in _warned and runtime.is_main_process():
    _warned.add(message)
    logging.warning('%s', message)


def resume_step(configs: Sequence[Any], *, overwrite: bool
                ) -> tuple[int, list[dict[int, dict[str, Any]]]]:
  """The newest step every run of ``configs`` has a checkpoint of that verifies
  (:func:`verify`, restoring it), and each run's ``{step: host side}``; ``(0, [])`` to
  start afresh. Each damaged checkpoint passed over gets one warning naming it and what
  is wrong; none is removed or changed here.

  Raises FileExistsError saying why a run cannot go on (it finished, saved no
  checkpoint, had other settings, the group shares no step, or no shared step can be
  trusted, naming each damaged checkpoint), unless ``overwrite`` allows starting afresh.
  """
  found, why_not = zip(*[resumable(c) for c in configs])
  reasons = [f'{c.workdir}: {why}' for c, why in zip(configs, why_not)
             if why and (pathlib.Path(c.workdir) / 'config.json').exists()]
  step, damaged = _newest_trusted([c.workdir for c in configs]) if all(found) else (0, [])
  then = f'going on from step {step}' if step else 'starting afresh (--overwrite)'
  if step or overwrite:
    for wrong in damaged:
      _warn_once(f'{wrong}; {then}')
  if step:
    return step, list(found)
  if not overwrite and (reasons or any(found)):
    raise FileExistsError(f'cannot resume {_why_not(configs, reasons, found, damaged)} '
                          '(--overwrite starts afresh)')
  return 0, []


def _why_not(configs: Sequence[Any], reasons: list[str],
             found: Sequence[dict[int, Any]], damaged: list[str]) -> str:
  """Why :func:`resume_step` cannot go on, in one line."""
  if reasons:
    return '; '.join(reasons)
  if damaged and len(configs) == 1:
    return f'{configs[0].workdir}: none of its checkpoints can be trusted: ' + '; '.join(damaged)
  if damaged:
    return (', '.join(str(c.workdir) for c in configs)
            + ': no checkpoint step these runs share can be trusted: ' + '; '.join(damaged))
  return 'these runs have no checkpoint step in common: ' + ', '.join(
      f'{c.workdir}: {sorted(f)}' for c, f in zip(configs, found))
