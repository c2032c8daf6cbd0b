"""Checkpoints of a run in training, so that a killed run goes on where it was.

``<workdir>/checkpoint/<step>/`` holds the run's ``TrainState`` (orbax, its leaves in
order; PRNG keys as key data) and ``<workdir>/checkpoint/<step>.json`` what the host
needs besides (status, init diagnostics), written atomically after the state: a step
with both is a whole checkpoint. Writers save every run of a group first and
:func:`prune` the older steps after, so a kill in between leaves a step they share.
Only process 0 of a multi-host run saves and restores (its checkpointer waits for no
other process); the others get the state by broadcast.

Also here: when a checkpoint is due (:func:`is_due`) and from which step a run, or a
group of runs trained together, can go on (:func:`resume_step`), or why it cannot.
"""

import dataclasses
import json
import pathlib
import shutil
from typing import Any, Sequence

import jax
import numpy as np

from fundamentals import rundir
from fundamentals import runtime

DIRNAME = 'checkpoint'


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


def save_arrays(path: pathlib.Path, tree):
  """Saves the raw leaves of ``tree`` (:func:`raw_leaves`) into the orbax directory
  ``path``, replacing one left there (e.g. by a process killed while saving it)."""
  path = pathlib.Path(path)
  if path.exists():
    shutil.rmtree(path)
  checkpointer = _checkpointer()
  checkpointer.save(path.resolve(), {'leaves': raw_leaves(tree)})
  checkpointer.wait_until_finished()


def restore_arrays(path: pathlib.Path) -> list[np.ndarray]:
  """The raw leaves :func:`save_arrays` saved in ``path``, as NumPy arrays (on any
  machine: they hold no device placement)."""
  return [np.asarray(x) for x in _checkpointer().restore(pathlib.Path(path).resolve())['leaves']]


def save(workdir: pathlib.Path, step: int, state, *, host: dict[str, Any]):
  """Saves ``state`` after ``step`` steps, then ``host`` (JSON-ready) beside it."""
  root = pathlib.Path(workdir) / DIRNAME
  save_arrays(root / str(step), state)
  rundir.write_json(root / f'{step}.json', {'step': step, **host})


def available(workdir: pathlib.Path) -> dict[int, dict[str, Any]]:
  """``{step: host}`` of the whole checkpoints in ``workdir``."""
  root = pathlib.Path(workdir) / DIRNAME
  found = {}
  for path in root.glob('*.json') if root.is_dir() else []:
    if path.stem.isdigit() and (root / path.stem).is_dir():
      try:
        found[int(path.stem)] = json.loads(path.read_text())
      except json.JSONDecodeError:
        continue
  return found


def restore_leaves(workdir: pathlib.Path, step: int) -> list[np.ndarray]:
  """The raw leaves saved after ``step`` steps (see :func:`from_raw_leaves`)."""
  return restore_arrays(pathlib.Path(workdir) / DIRNAME / str(step))


def prune(workdir: pathlib.Path, *, keep: int):
  """Removes every checkpoint but step ``keep``."""
  root = pathlib.Path(workdir) / DIRNAME
  for path in root.iterdir() if root.is_dir() else []:
    if path.name not in (str(keep), f'{keep}.json'):
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
               hosts: Sequence[dict[str, Any]], step: int):
  """Every run's checkpoint (diverged ones too), then the older ones removed: a kill
  in between leaves a step all runs of the group have."""
  for workdir, state, host in zip(workdirs, states, hosts):
    save(workdir, step, state, host=host)
  for workdir in workdirs:
    prune(workdir, keep=step)


def resumable(config) -> tuple[dict[int, dict[str, Any]], str]:
  """``({step: host side} of its checkpoints, '')`` when ``config.workdir`` holds an
  unfinished run of this same config that saved some; else ``({}, why not)``. (In a
  multi-host run every process reads them: a shared file system.)"""
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(config.workdir) if config.workdir else None
  if workdir is None or not (workdir / 'config.json').exists():
    return {}, 'it holds no run'
  if (workdir / 'summary.json').exists():
    return {}, 'that run finished'
  try:
    stored = Config.from_json((workdir / 'config.json').read_text())
  except (ValueError, TypeError) as e:
    return {}, f'its config.json is unreadable ({e})'
  stored = dataclasses.replace(stored, workdir=config.workdir)  # Same folder, any spelling.
  if stored != config:
    return {}, f'that run had other settings ({", ".join(stored.differences(config))})'
  found = available(workdir)
  return found, '' if found else 'that run saved no checkpoint'


def resume_step(configs: Sequence[Any], *, overwrite: bool
                ) -> tuple[int, list[dict[int, dict[str, Any]]]]:
  """The newest step every run of ``configs`` has a checkpoint of, and each run's
  ``{step: host side}``; ``(0, [])`` to start afresh.

  Raises FileExistsError saying why a run cannot go on (it finished, saved no
  checkpoint, had other settings, or the group shares no step), unless
  ``overwrite`` allows starting afresh.
  """
  found, why_not = zip(*[resumable(c) for c in configs])
  shared = set.intersection(*(set(f) for f in found)) if all(found) else set()
  if shared:
    return max(shared), list(found)
  if not overwrite:
    reasons = [f'{c.workdir}: {why}' for c, why in zip(configs, why_not)
               if why and (pathlib.Path(c.workdir) / 'config.json').exists()]
    if reasons or any(found):
      raise FileExistsError('cannot resume ' + '; '.join(reasons or [
          'these runs have no checkpoint step in common: ' + ', '.join(
              f'{c.workdir}: {sorted(f)}' for c, f in zip(configs, found))])
          + ' (--overwrite starts afresh)')
  return 0, []
