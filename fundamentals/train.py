"""Training under ``jax.jit``: a pure train step ``(state, batch) -> (state, metrics)``.

The NNX model is split once into a static ``graphdef`` and array state
(parameters, BatchNorm statistics); the jitted steps merge them back inside
(Flax performance guide), so every step is a pure function of explicit state and can
later be vmapped across sweep members. The whole dataset lives on device as uint8;
each step gathers its batch from a per-epoch permutation and normalizes it on device,
so there is no per-step host work.
"""

import concurrent.futures
import functools
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fundamentals import augment as augment_lib
from fundamentals import backprop
from fundamentals import data as data_lib
from fundamentals import diagnostics
from fundamentals import doctor
from fundamentals import losses
from fundamentals import models
from fundamentals import plots
from fundamentals import progress
from fundamentals import report
from fundamentals import rundir
from fundamentals import schedules
from fundamentals import tensorboard_events
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
      bn_impl=config.bn_impl,
      output_init=config.output_init, output_scale=config.output_scale,
      rngs=nnx.Rngs(params=key))


def create_optimizer(config: Config) -> tuple[optax.GradientTransformation,
                                              schedules.Schedule]:
  """SGD (with momentum unless ``momentum=0``) driven by the configured schedule.

  ``optimizer='manual_sgd'`` gives ``backprop.ManualSGD``: the same update written
  out, which the train step feeds with the hand-written gradients.
  """
  schedule = schedules.get_schedule(config.schedule, init_value=config.lr,
                                    total_steps=config.steps,
                                    warmup_steps=config.warmup_steps)
  if config.optimizer == 'manual_sgd':
    return backprop.ManualSGD(schedule, momentum=config.momentum), schedule
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
  ``train_step(..., with_diagnostics=True)`` (a second compiled variant, static flag)
  adds ``metrics['diagnostics']``: ``diagnostics.measure`` of the step's batch,
  gradients and actual update; ordinary steps compute none of it.
  """

  def train_step(state: TrainState, images, labels, perm, position, mean, std,
                 with_diagnostics: bool = False):
    idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
    batch = images[idx]
    if augment is not None:
      batch = augment(jax.random.fold_in(augment_key, state.step), batch)
    x = data_lib.normalize(batch, mean, std)
    y = labels[idx]

    def loss_fn(params):
      logits, batch_stats = apply_model(graphs.train, params, state.batch_stats, x)
      return losses.softmax_cross_entropy(logits, y), (logits, batch_stats)

    if isinstance(tx, backprop.ManualSGD):  # Gradients and update by hand, no optax.
      loss, logits, grads, batch_stats = backprop.value_and_grad_by_hand(
          nnx.merge(graphs.train, state.params, state.batch_stats), x, y)
      params, opt_state = tx.step(state.params, grads, state.opt_state, state.step)
    else:
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'accuracy': losses.accuracy(logits, y)}
    if with_diagnostics:
      metrics['diagnostics'] = diagnostics.measure(
          graphs.train, state.params, state.batch_stats, x, y, grads=grads,
          new_params=params)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  return jax.jit(train_step, donate_argnums=0, static_argnames='with_diagnostics')


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
  for (x, mask), (y, _) in zip(data_lib.padded_batches(images, batch_size),
                               data_lib.padded_batches(labels, batch_size)):
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


class Fit(NamedTuple):
  """What :func:`fit` returns: the summary and the final model, split."""
  summary: dict[str, Any]
  graphs: Graphs
  state: TrainState


def train(config: Config, *, dataset: data_lib.Dataset | None = None,
          overwrite: bool = False, echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Trains one model as ``config`` says; writes the run directory; returns the summary."""
  return fit(config, dataset=dataset, overwrite=overwrite, echo=echo).summary


def fit(config: Config, *, dataset: data_lib.Dataset | None = None,
        overwrite: bool = False, echo: Callable[[str], Any] = print) -> Fit:
  """Trains one model as ``config`` says; writes the run directory; returns ``Fit``.

  Writes ``config.json`` before training; one ``metrics.jsonl`` record per
  ``log_every`` steps and per ``diagnostics_every`` steps (those carry the
  ``diagnostics``), mirrored in TensorBoard event files; and at the end
  ``diagnostics.json`` (init and end statistics and histograms), the figures,
  ``summary.json`` with the doctor's findings, and ``report.md``. The doctor also runs
  on the init (the initial loss and the first step's diagnostics). A non-finite loss
  or gradient stops the run, marked ``diverged`` at the first non-finite step.
  """
  start_time = time.time()
  workdir = rundir.start(config, overwrite=overwrite)
  if dataset is None:
    dataset = data_lib.load_configured(config)
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
  images = jax.device_put(dataset.train_images)
  labels = jax.device_put(dataset.train_labels)
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)

  def epoch_perm(epoch):
    return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)

  # Started first, so that compiling the diagnostics variant overlaps the compiles below.
  init_future = (_measure_init_in_background(train_step, state, images, labels,
                                             epoch_perm(0), mean, std)
                 if config.diagnostics_every else None)
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

  status, diverged_at = 'completed', None
  pending, records, last_time, last_step = [], [], time.time(), 0
  host_work = []  # Callables run after the next step is dispatched.
  snapshots = {}  # 'init', 'end': (step, diagnostics scalars, samples)
  if overwrite:  # Outputs a new run might not rewrite (e.g. without diagnostics).
    for name in ('diagnostics.json', 'report.md', *plots.FIGURES):
      (workdir / name).unlink(missing_ok=True)
  writer = tensorboard_events.create_writer(workdir, overwrite=overwrite)
  bar = progress.Progress(config.steps, echo=echo)
  initial = {'initial_loss': initial_loss, 'expected_initial_loss': expected}
  loop_start = time.time()
  if init_future is None:
    _report_findings(bar.echo, 'doctor at init', doctor.examine(doctor.Run(config, initial)))

  def take_init_diagnostics():
    snapshots['init'] = (1, *diagnostics.to_host(init_future.result()))
    tensorboard_events.write_record(writer, {
        'step': 0, 'train_loss': initial_loss, 'diagnostics': snapshots['init'][1]})
    tensorboard_events.write_histograms(writer, 0, snapshots['init'][2])
    _report_findings(bar.echo, 'doctor at init', doctor.examine(doctor.Run(
        config, initial, diagnostics={'init': snapshots['init'][1]})))

  perm = None
  for step in range(config.steps):
    epoch, position = divmod(step, steps_per_epoch)
    if position == 0:
      perm = epoch_perm(epoch)
    done = step + 1
    diagnose = _is_diagnostics_step(done, config)
    if init_future is not None and (diagnose or init_future.done()):
      take_init_diagnostics()  # Before a diagnostics step: its variant is compiled.
      init_future = None
    state, metrics = train_step(state, images, labels, perm, position, mean, std,
                                with_diagnostics=diagnose)
    pending.append(metrics)
    bar.advance()
    while host_work:  # Written while the device runs the step just dispatched.
      host_work.pop(0)()
    if not _is_record_step(done, config):
      continue
    fetched = jax.device_get(pending)
    now = time.time()
    step_losses = np.array([m['loss'] for m in fetched], np.float64)
    record = {
        'step': done,
        'train_loss': float(np.mean(step_losses)),
        'train_accuracy': float(np.mean([m['accuracy'] for m in fetched])),
        'lr': float(schedule(step)),
        'examples_per_sec': (done - last_step) * config.batch_size / (now - last_time),
    }
    if 'diagnostics' in fetched[-1]:
      scalars, samples = diagnostics.to_host(fetched[-1]['diagnostics'])
      record['diagnostics'] = scalars
      snapshots['end'] = (done, scalars, samples)
      host_work.append(functools.partial(
          tensorboard_events.write_histograms, writer, done, samples))
    diverged_at = first_non_finite_step(step_losses, first_step=last_step + 1,
                                        scalars=record.get('diagnostics'))
    if diverged_at is not None:
      status = 'diverged'
    elif done % config.eval_every == 0 or done == config.steps:
      for split in _eval_splits(dataset):
        result = evaluate(eval_step, state, getattr(dataset, f'{split}_images'),
                          getattr(dataset, f'{split}_labels'), mean, std)
        record.update({f'{split}_loss': result['loss'],
                       f'{split}_accuracy': result['accuracy']})
    pending, last_time, last_step = [], now, done
    records.append(record)
    rundir.append_jsonl(workdir / 'metrics.jsonl', record)
    host_work.append(functools.partial(tensorboard_events.write_record, writer, record))
    bar.record(record)
    if status == 'diverged':
      bar.echo(f'loss is not finite at step {diverged_at}: stopping (diverged)')
      break
  if init_future is not None:
    take_init_diagnostics()
  for work in host_work:
    work()
  bar.close()
  train_loop_s = time.time() - loop_start
  # Drawn while the final evaluation runs on the device.
  drawn = _draw_in_background(workdir, config=config, records=records,
                              snapshots=snapshots, initial=initial)

  summary = {
      'status': status,
      'diverged_at_step': diverged_at,
      'initial_loss': initial_loss,
      'expected_initial_loss': expected,
      'num_params': num_params,
      'num_params_with_redundant_bias': num_params + models.omitted_bias_count(model),
      # Per-channel statistics inputs are normalized with: the training split's only.
      'normalization': {'mean': dataset.mean.tolist(), 'std': dataset.std.tolist(),
                        'train_examples': len(dataset.train_labels)},
      'steps': int(state.step),
      'train_loop_s': train_loop_s,
      'examples_per_sec': int(state.step) * config.batch_size / train_loop_s,
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
  summary['workdir'] = str(workdir)
  _write_outputs(workdir, writer, config=config, summary=summary, records=records,
                 drawn=drawn.result(), start_time=start_time, echo=echo)
  return Fit(summary, graphs, state)


def first_non_finite_step(step_losses: np.ndarray, *, first_step: int,
                          scalars: dict[str, Any] | None = None) -> int | None:
  """The step of the first non-finite loss of a window that began at ``first_step``.

  When the losses are finite but the diagnostics ``scalars`` (measured on the window's
  last step) have a non-finite gradient or parameter norm, that last step; None when
  all is finite.
  """
  non_finite = np.flatnonzero(~np.isfinite(step_losses))
  if non_finite.size:
    return first_step + int(non_finite[0])
  if scalars is not None and not diagnostics.is_finite(scalars):
    return first_step + len(step_losses) - 1
  return None


def _measure_init_in_background(train_step: Callable, state: TrainState, images, labels,
                                perm, mean, std) -> concurrent.futures.Future:
  """The first step's diagnostics (the init), measured on a copy of the initial state.

  A background thread runs that first step with ``with_diagnostics=True``, so the
  diagnostics variant compiles while training starts with the ordinary one (which
  hides the compilation wherever a core is free, e.g. on an accelerator host; on a
  busy 2-core CPU it saves little). NNX and JAX keep their trace contexts per thread.
  """
  initial = jax.tree.map(jnp.copy, state)  # Copied now: training donates ``state``.

  def first_step():
    _, metrics = train_step(initial, images, labels, perm, 0, mean, std,
                            with_diagnostics=True)
    return jax.device_get(metrics['diagnostics'])

  return _in_background(first_step)


def _in_background(fn: Callable[[], Any]) -> concurrent.futures.Future:
  """Runs ``fn()`` in a new thread; ``.result()`` returns its value or raises its error."""
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  future = pool.submit(fn)
  pool.shutdown(wait=False)
  return future


def _is_diagnostics_step(done: int, config: Config) -> bool:
  """Diagnostics every ``diagnostics_every`` steps and at the last (the init: above)."""
  every = config.diagnostics_every
  return bool(every) and (done % every == 0 or done == config.steps)


def _is_record_step(done: int, config: Config) -> bool:
  """A metrics record every ``log_every`` steps, at diagnostics steps, and at the end."""
  return (done % config.log_every == 0 or done == config.steps
          or _is_diagnostics_step(done, config))


def _draw_in_background(workdir: pathlib.Path, *, config: Config,
                        records: list[dict[str, Any]], snapshots: dict[str, tuple],
                        initial: dict[str, float]) -> concurrent.futures.Future:
  """Writes diagnostics.json and the figures in a thread; its result is
  ``(diagnostics scalars per phase, {figure file: caption})``."""

  def draw():
    measured = {phase: {'step': step, 'scalars': scalars,
                        'histograms': diagnostics.histograms(samples)}
                for phase, (step, scalars, samples) in snapshots.items()}
    if measured:
      rundir.write_json(workdir / 'diagnostics.json', measured)
    series = ([(measured['init']['step'], measured['init']['scalars'])]
              if 'init' in measured else [])
    series += [(r['step'], r['diagnostics']) for r in records if 'diagnostics' in r]
    figures = plots.save_figures(
        workdir, records=records, series=series,
        histograms={phase: m['histograms'] for phase, m in measured.items()},
        activation=config.activation,
        unit_health=diagnostics.unit_health(config.activation), **initial)
    return {phase: m['scalars'] for phase, m in measured.items()}, figures

  return _in_background(draw)


def _write_outputs(workdir: pathlib.Path, writer, *, config: Config,
                   summary: dict[str, Any], records: list[dict[str, Any]],
                   drawn: tuple[dict[str, Any], dict[str, str]], start_time: float,
                   echo: Callable[[str], Any]):
  """The doctor's findings, summary.json and report.md; closes the event file."""
  scalars, figures = drawn
  findings = doctor.examine(doctor.Run(config, summary, records, scalars))
  _report_findings(echo, 'doctor', findings)
  summary['findings'] = findings
  summary['wall_time_s'] = time.time() - start_time
  rundir.write_json(workdir / 'summary.json', summary)
  report.write(workdir / 'report.md', config=config, summary=summary, findings=findings,
               figures=figures, diagnostics=scalars)
  writer.add_text('doctor', '\n\n'.join(doctor.format_finding(f) for f in findings)
                  or 'no findings')
  writer.close()
  files = sorted(p.name for p in workdir.iterdir() if not p.name.startswith('events.'))
  echo(f'wrote {workdir}/ ({", ".join(files)}, TensorBoard events) in '
       f'{summary["wall_time_s"]:.1f}s')


def _report_findings(echo: Callable[[str], Any], title: str,
                     findings: list[dict[str, Any]]):
  if not findings:
    echo(f'{title}: no findings')
    return
  echo(f'{title}: {len(findings)} finding{"s" if len(findings) > 1 else ""}')
  for f in findings:
    echo('  ' + doctor.format_finding(f).replace('\n', '\n  '))


def _eval_splits(dataset: data_lib.Dataset) -> tuple[str, ...]:
  """The held-out splits to evaluate: validation (when there is one) and test."""
  return ('validation', 'test') if len(dataset.validation_labels) else ('test',)
