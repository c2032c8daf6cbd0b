"""Checkpoints of a run in training, so that a killed run goes on where it was.

``<workdir>/checkpoint/<step>/`` holds the run's ``TrainState`` (orbax), and
``<workdir>/checkpoint/latest.json`` what the host needs besides: the step and the
init diagnostics. ``latest.json`` is written atomically after the state is complete, so
it always names a whole checkpoint; older checkpoints are then removed.
"""

import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from fundamentals import rundir

DIRNAME = 'checkpoint'


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(workdir: pathlib.Path, step: int, state, *, host: dict[str, Any]):
  """Saves ``state`` (any pytree; PRNG keys as their key data) after ``step`` steps,
  with ``host`` (JSON-ready) in ``latest.json``; keeps only this checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  # Slow to import.
  root = pathlib.Path(workdir) / DIRNAME
  leaves = [jax.random.key_data(x) if _is_key(x) else x for x in jax.tree.leaves(state)]
  path = root / str(step)
  if path.exists():  # Left by a run killed while saving it.
    shutil.rmtree(path)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path.resolve(), {'leaves': [np.asarray(x) for x in jax.device_get(leaves)]})
  checkpointer.wait_until_finished()
  rundir.write_json(root / 'latest.json', {'step': step, **host})
  for old in root.iterdir():
    if old.is_dir() and old.name != str(step):
      shutil.rmtree(old, ignore_errors=True)


def latest(workdir: pathlib.Path) -> dict[str, Any] | None:
  """``latest.json`` of the newest whole checkpoint (with its ``step``), or None."""
  path = pathlib.Path(workdir) / DIRNAME / 'latest.json'
  if not path.exists():
    return None
  import json  # pylint: disable=g-import-not-at-top
  try:
    host = json.loads(path.read_text())
  except json.JSONDecodeError:
    return None
  return host if (path.parent / str(host.get('step'))).is_dir() else None


def restore(workdir: pathlib.Path, step: int, like):
  """The state saved after ``step`` steps, with the structure (and key types) of
  ``like``; arrays come back as NumPy."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = (pathlib.Path(workdir) / DIRNAME / str(step)).resolve()
  leaves = ocp.StandardCheckpointer().restore(path)['leaves']
  template, treedef = jax.tree.flatten(like)
  if len(leaves) != len(template):
    raise ValueError(f'checkpoint {path} holds {len(leaves)} arrays; this run has '
                     f'{len(template)}: a different model or optimizer')
  restored = [jax.random.wrap_key_data(np.asarray(x), impl=jax.random.key_impl(t))
              if _is_key(t) else np.asarray(x, dtype=np.asarray(t).dtype)
              for x, t in zip(leaves, template)]
  return jax.tree.unflatten(treedef, restored)


def remove(workdir: pathlib.Path):
  shutil.rmtree(pathlib.Path(workdir) / DIRNAME, ignore_errors=True)
