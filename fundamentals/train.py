"""Training under ``jax.jit``: a pure train step ``(state, batch) -> (state, metrics)``.

The NNX model is split once into a static ``graphdef`` and array state
(parameters, BatchNorm statistics); the jitted steps merge them back inside
(Flax performance guide), so every step is a pure function of explicit state and can
later be vmapped across sweep members. The whole dataset lives on device as uint8;
each step gathers its batch from a per-epoch permutation and normalizes it on device,
so there is no per-step host work.
"""

import datetime
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fundamentals import augment as augment_lib
from fundamentals import data as data_lib
from fundamentals import losses
from fundamentals import models
from fundamentals import rundir
from fundamentals import schedules
from fundamentals.config import Config


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState


class Graphs(NamedTuple):
  """The static structure of the model, in training and in evaluation mode."""
  train: nnx.GraphDef
  eval: nnx.GraphDef


def create_model(config: Config, dataset: data_lib.Dataset, key: jax.Array) -> models.MLP:
  return models.MLP(
      dataset.num_features, config.hidden, dataset.num_classes,
      activation=config.activation, init=config.init, batchnorm=config.batchnorm,
      bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
      output_init=config.output_init, output_scale=config.output_scale,
      rngs=nnx.Rngs(params=key))


def create_optimizer(config: Config) -> tuple[optax.GradientTransformation,
                                              schedules.Schedule]:
  """SGD (with momentum unless ``momentum=0``) driven by the configured schedule."""
  schedule = schedules.get_schedule(config.schedule, init_value=config.lr,
                                    total_steps=config.steps,
                                    warmup_steps=config.warmup_steps)
  return optax.sgd(schedule, momentum=config.momentum or None), schedule


def split_model(model: models.MLP,
                tx: optax.GradientTransformation) -> tuple[Graphs, TrainState]:
  """Splits once into static graphs (train/eval mode) and a pure ``TrainState``."""
  model.eval()
  eval_graph = nnx.graphdef(model)
  model.train()
  train_graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=tx.init(params))
  return Graphs(train_graph, eval_graph), state


def apply_model(graph: nnx.GraphDef, params, batch_stats, x):
  """Runs the model; returns logits and the (possibly updated) BatchNorm statistics.

  The statistics are rebuilt in the current trace (``tree.map`` makes fresh
  variables), so training mode may update them inside ``jax.grad``.
  """
  model = nnx.merge(graph, params, jax.tree.map(lambda v: v, batch_stats))
  logits = model(x)
  return logits, nnx.state(model, nnx.BatchStat)


def make_train_step(graphs: Graphs, tx: optax.GradientTransformation, *,
                    batch_size: int, augment: Callable | None = None,
                    augment_key: jax.Array | None = None) -> Callable:
  """Returns ``train_step(state, images, labels, perm, position, mean, std)``.

  The batch is ``perm[position·B : (position+1)·B]`` of the on-device dataset.
  ``augment(key, images) -> images`` (uint8 in, uint8 out), if given, transforms the
  training batch only, with key ``fold_in(augment_key, step)``.
  """

  def train_step(state: TrainState, images, labels, perm, position, mean, std):
    idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
    batch = images[idx]
    if augment is not None:
      batch = augment(jax.random.fold_in(augment_key, state.step), batch)
    x = data_lib.normalize(batch, mean, std)
    y = labels[idx]

    def loss_fn(params):
      logits, batch_stats = apply_model(graphs.train, params, state.batch_stats, x)
      return losses.softmax_cross_entropy(logits, y), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'accuracy': losses.accuracy(logits, y)}
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphs: Graphs) -> Callable:
  """Returns ``eval_step(state, images, labels, mask, mean, std) -> (Σ loss, Σ correct)``.

  Evaluation mode: BatchNorm uses its running averages.
  """

  def eval_step(state: TrainState, images, labels, mask, mean, std):
    logits, _ = apply_model(graphs.eval, state.params, state.batch_stats,
                            data_lib.normalize(images, mean, std))
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(per_example * mask), jnp.sum(correct * mask)

  return jax.jit(eval_step)


def evaluate(eval_step: Callable, state: TrainState, images: np.ndarray,
             labels: np.ndarray, mean, std, *, batch_size: int = 500) -> dict[str, float]:
  """Mean loss and accuracy over a whole split, in padded fixed-size batches."""
  n = len(labels)
  batch_size = min(batch_size, n)
  loss_sum, correct_sum = 0.0, 0.0
  for start in range(0, n, batch_size):
    x = images[start:start + batch_size]
    y = labels[start:start + batch_size]
    mask = np.ones(len(y), np.float32)
    pad = batch_size - len(y)
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    batch_loss, batch_correct = eval_step(state, x, y, mask, mean, std)
    loss_sum += float(batch_loss)
    correct_sum += float(batch_correct)
  return {'loss': loss_sum / n, 'accuracy': correct_sum / n}


def measure_initial_loss(graphs: Graphs, state: TrainState, dataset: data_lib.Dataset,
                         *, num_examples: int = 1024) -> float:
  """Training-mode loss of the untrained model on the first training examples.

  Training mode (batch statistics) is what the first step sees; the running averages
  are still their initial (0, 1) and would misstate the loss.
  """
  x = data_lib.normalize(jnp.asarray(dataset.train_images[:num_examples]),
                         dataset.mean, dataset.std)
  logits, _ = jax.jit(apply_model, static_argnums=0)(
      graphs.train, state.params, state.batch_stats, x)
  return float(losses.softmax_cross_entropy(
      logits, jnp.asarray(dataset.train_labels[:num_examples])))


def default_workdir(config: Config) -> str:
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  return f'runs/{stamp}-{config.experiment}'


def train(config: Config, *, dataset: data_lib.Dataset | None = None,
          overwrite: bool = False, echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Trains one model as ``config`` says; writes the run directory; returns the summary.

  Writes ``config.json`` before training, one ``metrics.jsonl`` record per
  ``log_every`` steps, and ``summary.json`` at the end.
  """
  start_time = time.time()
  workdir = rundir.create(config.workdir or default_workdir(config), overwrite=overwrite)
  rundir.write_json(workdir / 'config.json', config.to_dict())
  if dataset is None:
    dataset = data_lib.load(config.dataset, data_dir=config.data_dir,
                            validation_fraction=config.validation_fraction,
                            image_size=config.image_size)
  num_train = len(dataset.train_labels)
  if config.batch_size > num_train:
    raise ValueError(f'batch_size={config.batch_size} exceeds the {num_train} '
                     f'training examples of {dataset.name}')
  steps_per_epoch = num_train // config.batch_size

  init_key, shuffle_key, augment_key = jax.random.split(jax.random.key(config.seed), 3)
  model = create_model(config, dataset, init_key)
  tx, schedule = create_optimizer(config)
  graphs, state = split_model(model, tx)
  num_params = models.count_params(state.params)
  train_step = make_train_step(graphs, tx, batch_size=config.batch_size,
                               augment=augment_lib.make_augment(config.augment),
                               augment_key=augment_key)
  if config.augment:
    augment_lib.save_preview(workdir / 'augment_preview.png', dataset.train_images[:6],
                             config.augment, seed=config.seed)
  eval_step = make_eval_step(graphs)

  expected = losses.expected_initial_loss(dataset.num_classes)
  initial_loss = measure_initial_loss(graphs, state, dataset)
  echo(f'{dataset.name}: {num_train} train / {len(dataset.test_labels)} test, '
       f'{dataset.num_classes} classes; MLP {config.hidden} {config.activation} '
       f'init={config.init} batchnorm={config.batchnorm}, {num_params:,} parameters')
  echo(f'initial loss {initial_loss:.4f}  (expected ln({dataset.num_classes}) = '
       f'{expected:.4f}, ratio {initial_loss / expected:.2f})')

  images = jax.device_put(dataset.train_images)
  labels = jax.device_put(dataset.train_labels)
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
  status, diverged_at = 'completed', None
  pending, last_time, last_step = [], time.time(), 0
  perm = None
  for step in range(config.steps):
    epoch, position = divmod(step, steps_per_epoch)
    if position == 0:
      perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
    state, metrics = train_step(state, images, labels, perm, position, mean, std)
    pending.append(metrics)
    done = step + 1
    if done % config.log_every and done != config.steps:
      continue
    fetched = jax.device_get(pending)
    now = time.time()
    record = {
        'step': done,
        'train_loss': float(np.mean([m['loss'] for m in fetched])),
        'train_accuracy': float(np.mean([m['accuracy'] for m in fetched])),
        'lr': float(schedule(step)),
        'examples_per_sec': (done - last_step) * config.batch_size / (now - last_time),
    }
    pending, last_time, last_step = [], now, done
    if not math.isfinite(record['train_loss']):
      status, diverged_at = 'diverged', done
    elif done % config.eval_every == 0 or done == config.steps:
      for split in _eval_splits(dataset):
        result = evaluate(eval_step, state, getattr(dataset, f'{split}_images'),
                          getattr(dataset, f'{split}_labels'), mean, std)
        record.update({f'{split}_loss': result['loss'],
                       f'{split}_accuracy': result['accuracy']})
    rundir.append_jsonl(workdir / 'metrics.jsonl', record)
    echo(_progress_line(record, config.steps))
    if status == 'diverged':
      echo(f'loss is not finite at step {done}: stopping (diverged)')
      break

  summary = {
      'status': status,
      'diverged_at_step': diverged_at,
      'initial_loss': initial_loss,
      'expected_initial_loss': expected,
      'num_params': num_params,
      'steps': int(state.step),
  }
  if status == 'completed':
    for split in ('train', *_eval_splits(dataset)):
      result = evaluate(eval_step, state, getattr(dataset, f'{split}_images'),
                        getattr(dataset, f'{split}_labels'), mean, std)
      summary[f'final_{split}_loss'] = result['loss']
      summary[f'final_{split}_accuracy'] = result['accuracy']
    echo(f'final: train loss {summary["final_train_loss"]:.4f} acc '
         f'{summary["final_train_accuracy"]:.2%} | test loss '
         f'{summary["final_test_loss"]:.4f} acc {summary["final_test_accuracy"]:.2%}')
  summary['wall_time_s'] = time.time() - start_time
  summary['workdir'] = str(workdir)
  rundir.write_json(workdir / 'summary.json', summary)
  echo(f'wrote {workdir}/ (config.json, metrics.jsonl, summary.json) in '
       f'{summary["wall_time_s"]:.1f}s')
  return summary


def _eval_splits(dataset: data_lib.Dataset) -> tuple[str, ...]:
  """The held-out splits to evaluate: validation (when there is one) and test."""
  return ('validation', 'test') if len(dataset.validation_labels) else ('test',)


def _progress_line(record: dict[str, Any], total_steps: int) -> str:
  line = (f'step {record["step"]:>{len(str(total_steps))}}/{total_steps}  '
          f'loss {record["train_loss"]:.4f}  acc {record["train_accuracy"]:.2%}  '
          f'lr {record["lr"]:.4g}  {record["examples_per_sec"]:,.0f} ex/s')
  if 'test_loss' in record:
    line += f'  | test loss {record["test_loss"]:.4f} acc {record["test_accuracy"]:.2%}'
  return line
