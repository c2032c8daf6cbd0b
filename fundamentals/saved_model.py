"""The model a run keeps: ``<workdir>/model/``, to evaluate and predict with later.

* ``model/final/``: the parameters and BatchNorm statistics after the last step (of a
  run stopped early: at its stop), orbax;
* ``model/best/``: the same at the step of the lowest validation loss, for runs with a
  validation split (``--validation_fraction``, or the dataset's own);
* ``model/model.json``: what using them anywhere takes: the run's config, the class
  names, the normalization the model was trained with (the *training* split's
  per-channel mean and std), the image shape, and the steps the two models are of.

The arrays are NumPy leaves of ``(params, batch_stats)`` in flatten order, with no
device placement, so a model saved on an accelerator loads on a CPU and back: the
loader builds the model from the config and puts the arrays into it.
"""

import functools
import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from fundamentals import checkpoints
from fundamentals import data as data_lib
from fundamentals import models
from fundamentals import rundir
from fundamentals.config import Config

DIRNAME = 'model'
META = 'model.json'
KINDS = ('final', 'best')
"""The models a run keeps; ``auto`` (for loading) is ``best`` when there is one."""


def directory(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir) / DIRNAME


def model_arrays(state) -> tuple[Any, Any]:
  """What a kept model holds of a ``train.TrainState``: its parameters and BatchNorm
  statistics (not the optimizer state)."""
  return state.params, state.batch_stats


def save(workdir: str | pathlib.Path, kind: str, state, *, meta: dict[str, Any]):
  """Saves ``state``'s model as ``kind`` ('final' or 'best') and updates model.json
  with ``meta`` (e.g. ``{'final_step': 1500}``) over what it held."""
  if kind not in KINDS:
    raise ValueError(f'Unknown model kind {kind!r}; valid: {list(KINDS)}')
  root = directory(workdir)
  root.mkdir(parents=True, exist_ok=True)
  checkpoints.save_arrays(root / kind, model_arrays(state))
  rundir.write_json(root / META, {**read_meta(workdir, missing_ok=True), **meta})


def describe(config: Config, dataset: data_lib.Dataset) -> dict[str, Any]:
  """The part of model.json a run knows from the start: config, classes, inputs."""
  return {
      'config': config.to_dict(),
      'class_names': list(dataset.class_names),
      'image_shape': list(dataset.train_images.shape[1:]),
      'normalization': {'mean': np.asarray(dataset.mean).tolist(),
                        'std': np.asarray(dataset.std).tolist()},
  }


def has(workdir: str | pathlib.Path, kind: str) -> bool:
  """Whether the run in ``workdir`` kept a model of ``kind``."""
  return f'{kind}_step' in read_meta(workdir, missing_ok=True)


def read_meta(workdir: str | pathlib.Path, *, missing_ok: bool = False) -> dict[str, Any]:
  """model.json of the run in ``workdir``; raises FileNotFoundError / ValueError
  naming the file when there is none, or it is damaged."""
  path = directory(workdir) / META
  if not path.exists():
    if missing_ok:
      return {}
    why = ('it does not exist' if not pathlib.Path(workdir).exists() else
           'it holds no kept model (runs keep one when they finish)')
    raise FileNotFoundError(f'--from={workdir}: {why}; expected {path}')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is damaged ({e})') from None


class Loaded(NamedTuple):
  """A kept model, ready to run: its graph (evaluation mode), arrays and description."""
  graph: nnx.GraphDef
  params: Any
  batch_stats: Any
  config: Config
  kind: str
  meta: dict[str, Any]

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.meta['class_names'])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.meta['image_shape'])

  @property
  def step(self) -> int:
    return self.meta[f'{self.kind}_step']


def resolve_kind(meta: dict[str, Any], kind: str, *, workdir) -> str:
  """``kind``, with ``auto`` read as ``best`` when the run kept one, else ``final``;
  raises ValueError when the run kept no such model."""
  if kind == 'auto':
    kind = 'best' if 'best_step' in meta else 'final'
  if kind not in KINDS:
    raise ValueError(f'--model={kind}: valid: auto, {", ".join(KINDS)}')
  if f'{kind}_step' not in meta:
    raise ValueError(f'{workdir} kept no {kind} model' + (
        ' (a best model needs a validation split: --validation_fraction)'
        if kind == 'best' else ' (the run has not finished)'))
  return kind


def load(workdir: str | pathlib.Path, kind: str = 'auto') -> Loaded:
  """The kept model ``kind`` ('final', 'best' or 'auto') of the run in ``workdir``."""
  meta = read_meta(workdir)
  kind = resolve_kind(meta, kind, workdir=workdir)
  config = Config.from_dict(meta['config'])
  model = models.create_model(config, num_features=int(np.prod(meta['image_shape'])),
                              num_classes=len(meta['class_names']), key=jax.random.key(0))
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  try:
    leaves = checkpoints.restore_arrays(directory(workdir) / kind)
  except (FileNotFoundError, ValueError, OSError) as e:
    raise ValueError(f'{directory(workdir) / kind}: cannot read the kept model ({e})'
                     ) from None
  params, batch_stats = checkpoints.from_raw_leaves(leaves, like=(params, batch_stats))
  model.eval()
  return Loaded(nnx.graphdef(model), params, batch_stats, config, kind, meta)


def logits(loaded: Loaded, images: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
  """The model's logits ``[N, classes]`` (float32) of uint8 images ``[N, H, W, C]``,
  normalized as the model was trained (model.json), in evaluation mode."""
  images = np.asarray(images)
  if tuple(images.shape[1:]) != loaded.image_shape:
    raise ValueError(f'images of shape {tuple(images.shape[1:])}; the model takes '
                     f'{loaded.image_shape}')
  mean = np.asarray(loaded.meta['normalization']['mean'], np.float32)
  std = np.asarray(loaded.meta['normalization']['std'], np.float32)
  step = make_logits_step(loaded.graph)
  return batched(lambda x: step(loaded.params, loaded.batch_stats, x, mean, std), images,
                 batch_size=batch_size)


def batched(logits_fn, images: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
  """``logits_fn`` over ``images`` in padded fixed-size batches (one compiled shape),
  the padding dropped: ``[N, classes]`` float32."""
  out = []
  for x, mask in data_lib.padded_batches(images, min(batch_size, max(len(images), 1))):
    out.append(np.asarray(logits_fn(x))[np.asarray(mask, bool)])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities, softmax(z)_k = exp(z_k − max z) / Σ_j exp(z_j − max z)."""
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean −log softmax(z)_y = mean(logsumexp(z) − z_y), in float64."""
  z = np.asarray(logits, np.float64)
  top = z.max(-1)
  logsumexp = top + np.log(np.exp(z - top[:, None]).sum(-1))
  return float(np.mean(logsumexp - z[np.arange(len(z)), np.asarray(labels)]))


@functools.lru_cache(maxsize=16)
def make_logits_step(graph: nnx.GraphDef):
  """``logits_step(params, batch_stats, images, mean, std) -> logits``, jitted: the
  model of the evaluation-mode ``graph`` on uint8 images normalized by ``mean``, ``std``
  (one per graph and process)."""

  def logits_step(params, batch_stats, images, mean, std):
    return models.apply(graph, params, batch_stats,
                        data_lib.normalize(images, mean, std))[0]

  return jax.jit(logits_step)


def label_map(loaded: Loaded, class_names) -> np.ndarray:
  """``map[dataset label] = model label``, matching classes by name (an image folder
  lists its classes sorted, the run's dataset may not); raises ValueError when the
  dataset's classes are not the model's."""
  theirs = tuple(class_names)
  if sorted(theirs) != sorted(loaded.class_names):
    missing = [c for c in loaded.class_names if c not in theirs][:5]
    extra = [c for c in theirs if c not in loaded.class_names][:5]
    raise ValueError(
        f'the dataset has {len(theirs)} classes, the model {len(loaded.class_names)}; '
        'they must have the same names'
        + (f'; the model\'s not in the dataset: {missing}' if missing else '')
        + (f'; the dataset\'s not in the model: {extra}' if extra else ''))
  return np.array([loaded.class_names.index(name) for name in theirs], np.int32)


def as_config_overrides(workdir: str | pathlib.Path) -> dict[str, Any]:
  """The kept model's data settings, as Config overrides: evaluating a run reads
  the data it was trained on unless flags say otherwise."""
  config = read_meta(workdir)['config']
  return {k: config[k] for k in ('dataset', 'data_dir', 'image_size',
                                 'validation_fraction') if k in config}
