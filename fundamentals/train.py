"""Training under ``jax.jit``: a pure train step ``(state, batch) -> (state, metrics)``.

The NNX model is split once into a static ``graphdef`` and array state
(parameters, BatchNorm statistics); the jitted steps merge them back inside
(Flax performance guide), so every step is a pure function of explicit state and can
later be vmapped across sweep members. The whole dataset lives on device as uint8;
each step gathers its batch from a per-epoch permutation and normalizes it on device,
so there is no per-step host work.
"""

import concurrent.futures
import dataclasses
import functools
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fundamentals import augment as augment_lib
from fundamentals import backprop
from fundamentals import checkpoints
from fundamentals import data as data_lib
from fundamentals import diagnostics
from fundamentals import doctor
from fundamentals import initializers
from fundamentals import losses
from fundamentals import models
from fundamentals import plots
from fundamentals import progress
from fundamentals import report
from fundamentals import rundir
from fundamentals import runtime
from fundamentals import schedules
from fundamentals import signal_propagation
from fundamentals import tensorboard_events
from fundamentals.config import Config


# Config fields that enter the compiled train step as values, not as constants: runs
# that differ only in these share one compilation, and ``fit_group`` (``--vectorize``)
# trains them together in one vmapped program. Whether momentum is 0 changes the
# optimizer state, so that part of it is structure; ``manual_sgd`` keeps lr and momentum
# as constants.
PER_RUN = ('seed', 'init', 'output_init', 'output_scale', 'lr', 'momentum')


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState
  augment_key: jax.Array | None = None  # Step t augments with fold_in(key, t).


class Graphs(NamedTuple):
  """The static structure of the model, in training and in evaluation mode."""
  train: nnx.GraphDef
  eval: nnx.GraphDef


def create_model(config: Config, dataset: data_lib.Dataset, key: jax.Array) -> models.MLP:
  """The configured MLP. A data-dependent init (LSUV) is built with its per-tensor
  starting point; :func:`fit` then applies it on data (:func:`apply_data_dependent_init`)."""
  return models.MLP(
      dataset.num_features, config.hidden, dataset.num_classes,
      activation=config.activation,
      init=initializers.DATA_DEPENDENT.get(config.init, config.init),
      batchnorm=config.batchnorm,
      bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
      bn_impl=config.bn_impl,
      output_init=config.output_init, output_scale=config.output_scale,
      rngs=nnx.Rngs(params=key))


def apply_data_dependent_init(config: Config, model: models.MLP,
                              dataset: data_lib.Dataset, *,
                              num_examples: int = 1024) -> list[dict[str, float]] | None:
  """LSUV (``config.init == 'lsuv'``) on the first training examples, normalized;
  rescales ``model``'s hidden kernels in place and returns the per-layer
  ``{'iterations', 'variance'}``. None for the other (per-tensor) inits."""
  if config.init not in initializers.DATA_DEPENDENT:
    return None
  x = data_lib.normalize(jnp.asarray(dataset.train_images[:num_examples]),
                         dataset.mean, dataset.std)
  return signal_propagation.apply_lsuv(model, x)


def scheduled_sgd(learning_rate: float, momentum: float | None = None, *,
                  shape: schedules.Schedule) -> optax.GradientTransformation:
  """SGD with η_t = η · s(t): ``shape`` s is the schedule with peak 1.

  The same updates as ``optax.sgd(η·s, momentum)`` (bit for bit where s(t)·η rounds
  as η·s(t) does: constant, cosine and exponential schedules); under
  ``optax.inject_hyperparams`` η and μ live in the optimizer state, so they are
  arguments of the compiled step rather than constants folded into it.
  """
  trace = optax.trace(decay=momentum) if momentum is not None else optax.identity()
  return optax.chain(trace, optax.scale_by_schedule(lambda count: -learning_rate * shape(count)))


def create_optimizer(config: Config) -> tuple[optax.GradientTransformation,
                                              schedules.Schedule]:
  """SGD (with momentum unless ``momentum=0``) driven by the configured schedule.

  Returns ``(tx, schedule)`` with ``schedule(t)`` = η_t. The learning rate and
  momentum are hyperparameters in ``tx``'s state (``optax.inject_hyperparams``).
  ``optimizer='manual_sgd'`` gives ``backprop.ManualSGD``: the same update written
  out, which the train step feeds with the hand-written gradients.
  """
  shape = schedules.get_schedule(config.schedule, init_value=1.0, total_steps=config.steps,
                                 warmup_steps=config.warmup_steps)
  lr = config.lr
  # η as a (not weakly typed) array of the default float type, as inject_hyperparams
  # holds it, so that both optimizers round η·s(t) alike.
  schedule = lambda step: jnp.asarray(lr, jnp.result_type(float)) * shape(step)
  if config.optimizer == 'manual_sgd':
    return backprop.ManualSGD(schedule, momentum=config.momentum), schedule
  tx = optax.inject_hyperparams(scheduled_sgd, static_args=('shape',))(
      learning_rate=lr, momentum=config.momentum or None, shape=shape)
  return tx, schedule


def canonical_config(config: Config) -> Config:
  """``config`` with its per-run values (``PER_RUN``) set to the defaults.

  Runs with equal canonical configs have the same compiled structure: they share one
  compilation and can be trained together by :func:`fit_group`.
  """
  defaults = Config()
  values = {name: getattr(defaults, name) for name in PER_RUN}
  values['momentum'] = defaults.momentum if config.momentum else 0.0
  if config.optimizer == 'manual_sgd':
    values.update(lr=config.lr, momentum=config.momentum)
  return dataclasses.replace(config, **values, workdir='')


def split_model(model: models.MLP, tx: optax.GradientTransformation, *,
                augment_key: jax.Array | None = None) -> tuple[Graphs, TrainState]:
  """Splits once into static graphs (train/eval mode) and a pure ``TrainState``."""
  model.eval()
  eval_graph = nnx.graphdef(model)
  model.train()
  train_graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=tx.init(params),
                     augment_key=augment_key)
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
                    mesh: jax.sharding.Mesh | None = None,
                    vectorized: bool = False) -> Callable:
  """Returns ``train_step(state, images, labels, perm, position, mean, std)``, jitted.

  The batch is ``perm[position·B : (position+1)·B]`` of the on-device dataset.
  ``augment(key, images) -> images`` (uint8 in, uint8 out), if given, transforms the
  training batch only, with key ``fold_in(state.augment_key, step)``.
  ``train_step(..., with_diagnostics=True)`` (a second compiled variant, static flag)
  adds ``metrics['diagnostics']``: ``diagnostics.measure`` of the step's batch,
  gradients and actual update; ordinary steps compute none of it.

  With a ``mesh`` (``runtime.data_mesh``) the batch is split over its devices
  (data parallelism): parameters stay replicated, and XLA sums gradients and
  BatchNorm's batch statistics over the global batch. ``vectorized``: ``state`` and
  ``perm`` carry a leading axis of runs, trained together (``jax.vmap``) on the
  shared dataset.
  """

  def train_step(state: TrainState, images, labels, perm, position, mean, std,
                 with_diagnostics: bool = False):
    idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
    batch = images[idx]
    if augment is not None:
      batch = augment(jax.random.fold_in(state.augment_key, state.step), batch)
    x = data_lib.normalize(batch, mean, std)
    y = labels[idx]
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, runtime.batch_sharded(mesh))
      y = jax.lax.with_sharding_constraint(y, runtime.batch_sharded(mesh))

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
    if mesh is not None:  # Whole on every device, so that every host can read them.
      metrics = jax.lax.with_sharding_constraint(metrics, runtime.replicated(mesh))
    return state._replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                          opt_state=opt_state), metrics

  if vectorized:
    single = train_step

    def train_step(state, images, labels, perm, position, mean, std,  # pylint: disable=function-redefined
                   with_diagnostics=False):
      step = functools.partial(single, with_diagnostics=with_diagnostics)
      return jax.vmap(step, in_axes=(0, None, None, 0, None, None, None))(
          state, images, labels, perm, position, mean, std)

  return jax.jit(train_step, donate_argnums=0, static_argnames='with_diagnostics')


def make_eval_step(graphs: Graphs, *, vectorized: bool = False) -> Callable:
  """Returns ``eval_step(state, images, labels, mask, mean, std) -> (Σ loss, Σ correct)``.

  Evaluation mode: BatchNorm uses its running averages. ``vectorized``: ``state``
  has a leading axis of runs, and so have the sums.
  """

  def eval_step(state: TrainState, images, labels, mask, mean, std):
    logits, _ = apply_model(graphs.eval, state.params, state.batch_stats,
                            data_lib.normalize(images, mean, std))
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(per_example * mask), jnp.sum(correct * mask)

  if vectorized:
    return jax.jit(jax.vmap(eval_step, in_axes=(0, None, None, None, None, None)))
  return jax.jit(eval_step)


class Steps(NamedTuple):
  train: Callable
  eval: Callable


@functools.lru_cache(maxsize=16)
def compiled_steps(graphs: Graphs, canonical: Config, *,
                   mesh: jax.sharding.Mesh | None = None,
                   vectorized: bool = False) -> Steps:
  """The jitted train and eval steps of one structure, made once per process.

  Every run whose graphs and :func:`canonical_config` are equal gets the same jitted
  functions, and so (for equal shapes) the same compiled programs: learning rate,
  momentum, seed and init are values in the state, not constants.
  """
  tx, _ = create_optimizer(canonical)
  return Steps(
      make_train_step(graphs, tx, batch_size=canonical.batch_size,
                      augment=augment_lib.make_augment(canonical.augment), mesh=mesh,
                      vectorized=vectorized),
      make_eval_step(graphs, vectorized=vectorized))


def evaluate(eval_step: Callable, state: TrainState, images: np.ndarray,
             labels: np.ndarray, mean, std, *, batch_size: int = 500) -> dict[str, Any]:
  """Mean loss and accuracy over a whole split, in padded fixed-size batches.

  Floats; arrays with one entry per run for a vectorized ``eval_step``.
  """
  n = len(labels)
  batch_size = min(batch_size, n)
  loss_sum, correct_sum = 0.0, 0.0
  for (x, mask), (y, _) in zip(data_lib.padded_batches(images, batch_size),
                               data_lib.padded_batches(labels, batch_size)):
    batch_loss, batch_correct = eval_step(state, x, y, mask, mean, std)
    loss_sum = loss_sum + np.asarray(batch_loss, np.float64)
    correct_sum = correct_sum + np.asarray(batch_correct, np.float64)
  if np.ndim(loss_sum):
    return {'loss': loss_sum / n, 'accuracy': correct_sum / n}
  return {'loss': float(loss_sum) / n, 'accuracy': float(correct_sum) / n}


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
          overwrite: bool = False, resume: bool = False,
          echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Trains one model as ``config`` says; writes the run directory; returns the summary."""
  return fit(config, dataset=dataset, overwrite=overwrite, resume=resume,
             echo=echo).summary


def train_group(configs: Sequence[Config], *, dataset: data_lib.Dataset | None = None,
                overwrite: bool = False, resume: bool = False,
                echo: Callable[[str], Any] = print) -> list[dict[str, Any]]:
  """:func:`fit_group`'s summaries: runs of one structure trained together."""
  return [f.summary for f in fit_group(configs, dataset=dataset, overwrite=overwrite,
                                       resume=resume, echo=echo)]


def fit(config: Config, *, dataset: data_lib.Dataset | None = None,
        overwrite: bool = False, resume: bool = False,
        echo: Callable[[str], Any] = print) -> Fit:
  """Trains one model as ``config`` says; writes the run directory; returns ``Fit``.

  Writes ``config.json`` before training; one ``metrics.jsonl`` record per
  ``log_every`` steps and per ``diagnostics_every`` steps (those carry the
  ``diagnostics``), mirrored in TensorBoard event files; and at the end
  ``diagnostics.json`` (init and end statistics and histograms), the figures,
  ``summary.json`` with the doctor's findings, and ``report.md``. The doctor also runs
  on the init (the initial loss and the first step's diagnostics). A non-finite loss
  or gradient stops the run, marked ``diverged`` at the first non-finite step.
  Checkpoints and ``resume``: :func:`fit_group`.
  """
  return fit_group([config], dataset=dataset, overwrite=overwrite, resume=resume,
                   echo=echo)[0]


class _Run:
  """The host side of one run of a group: its directory, records, snapshots, status."""

  def __init__(self, config: Config, workdir: pathlib.Path, *, schedule, initial,
               prefix: str, echo: Callable[[str], Any], overwrite: bool,
               resume_step: int = 0):
    self.config, self.workdir, self.schedule = config, workdir, schedule
    self.initial = initial  # {'initial_loss', 'expected_initial_loss'}
    self.prefix = prefix  # Before each line of a vectorized run: '[its directory] '.
    self.out = echo  # Where lines go; the progress bar's echo once there is one.
    self.records: list[dict[str, Any]] = []
    self.snapshots: dict[str, tuple] = {}  # 'init', 'end': (step, scalars, samples)
    self.status, self.diverged_at = 'completed', None
    self.lsuv: list[dict[str, float]] | None = None  # Per layer, with --init=lsuv.
    self.init_histograms = None  # Of the init snapshot, once computed (or restored).
    if resume_step:  # TensorBoard drops the killed run's events after the checkpoint.
      self.writer = tensorboard_events.create_writer(workdir, purge_step=resume_step + 1)
      return
    if overwrite:  # Outputs a new run might not rewrite (e.g. without diagnostics).
      for name in ('diagnostics.json', 'report.md', *plots.FIGURES):
        (workdir / name).unlink(missing_ok=True)
      checkpoints.remove(workdir)
    self.writer = tensorboard_events.create_writer(workdir, overwrite=overwrite)

  def resume(self, host: dict[str, Any]):
    """Takes up a checkpoint's host side: status, records up to its step (those
    after it are dropped from ``metrics.jsonl``), init diagnostics."""
    self.status, self.diverged_at = host['status'], host['diverged_at']
    path = self.workdir / 'metrics.jsonl'
    if path.exists():  # Not in another process's scratch directory.
      self.records = [r for r in rundir.read_jsonl(path) if r['step'] <= host['step']]
      rundir.write_jsonl(path, self.records)
    if 'init' in host:
      self.snapshots['init'] = (host['init']['step'], host['init']['scalars'], None)
      self.init_histograms = host['init']['histograms']

  def checkpoint_host(self) -> dict[str, Any]:
    """What a checkpoint keeps of the host side besides the step: the status (a
    diverged run of a group is saved too, so that the group resumes together) and
    the init diagnostics."""
    host = {'status': self.status, 'diverged_at': self.diverged_at}
    if 'init' in self.snapshots:
      step, scalars, samples = self.snapshots['init']
      if self.init_histograms is None:
        self.init_histograms = diagnostics.histograms(samples)
      host['init'] = {'step': step, 'scalars': scalars, 'histograms': self.init_histograms}
    return host

  @property
  def active(self) -> bool:
    return self.status != 'diverged'

  def echo(self, line: str):
    self.out(self.prefix + line.replace('\n', '\n' + self.prefix))


def fit_group(configs: Sequence[Config], *, dataset: data_lib.Dataset | None = None,
              overwrite: bool = False, resume: bool = False,
              echo: Callable[[str], Any] = print) -> list[Fit]:
  """Trains runs that differ only in ``PER_RUN`` values together; one ``Fit`` per run.

  One run trains on its own (:func:`fit`). Several train in one jitted program,
  ``jax.vmap`` over a leading axis of their states and shuffling orders, on the shared
  on-device dataset (``--vectorize``): each still gets its own run directory, records,
  diagnostics, figures and summary, the same as alone up to float rounding. A run
  that diverges is marked ``diverged`` and no longer recorded; the others go on.

  Every ``checkpoint_every`` steps each run saves a checkpoint (``checkpoints``).
  ``resume``: runs whose directories hold this config and checkpoints of one step go on
  from there (``metrics.jsonl`` cut back to it) with the same numbers as without the
  interruption; otherwise they start afresh, as with ``overwrite``.
  """
  configs = list(configs)
  if not configs:
    raise ValueError('fit_group needs at least one config')
  config = configs[0]
  structure = canonical_config(config)
  for other in configs[1:]:
    if canonical_config(other) != structure:
      differ = canonical_config(other).differences(structure)
      raise ValueError(f'runs trained together may differ only in {list(PER_RUN)} '
                       f'(and momentum only while nonzero); {other.workdir!r} also '
                       f'differs in {differ}')
  vectorized = len(configs) > 1
  workdirs = [c.workdir for c in configs]
  if vectorized and (not all(workdirs) or len(set(workdirs)) < len(workdirs)):
    raise ValueError(f'runs trained together need a workdir each, all different; got '
                     f'{workdirs}')
  start_time = time.time()
  mesh = runtime.data_mesh(config.batch_size) if config.data_parallel else None
  found, why_not = zip(*[_resumable(c) for c in configs]) if resume else ((), ())
  shared = set.intersection(*(set(f) for f in found)) if found and all(found) else set()
  start_step = max(shared, default=0)  # The newest step every run has a checkpoint of.
  resumed = start_step > 0
  if resume and not resumed and not overwrite:
    reasons = [f'{c.workdir}: {why}' for c, why in zip(configs, why_not)
               if why and (pathlib.Path(c.workdir) / 'config.json').exists()]
    if reasons or any(found):
      raise FileExistsError('cannot resume ' + '; '.join(reasons or [
          'these runs have no checkpoint step in common: ' + ', '.join(
              f'{c.workdir}: {sorted(f)}' for c, f in zip(configs, found))])
          + ' (--overwrite starts afresh)')
  workdirs = [_start_workdir(c, overwrite=overwrite, resume=resumed) for c in configs]
  if dataset is None:
    dataset = data_lib.load_configured(config)
  num_train = len(dataset.train_labels)
  if config.batch_size > num_train:
    raise ValueError(f'batch_size={config.batch_size} exceeds the {num_train} '
                     f'training examples of {dataset.name}')
  steps_per_epoch = num_train // config.batch_size

  expected = losses.expected_initial_loss(dataset.num_classes)
  runs, states, shuffle_keys = [], [], []
  for c, workdir in zip(configs, workdirs):
    init_key, shuffle_key, augment_key = jax.random.split(jax.random.key(c.seed), 3)
    model = create_model(c, dataset, init_key)
    lsuv = apply_data_dependent_init(c, model, dataset)
    tx, schedule = create_optimizer(c)
    graphs, state = split_model(model, tx, augment_key=augment_key if c.augment else None)
    initial_loss = measure_initial_loss(graphs, state, dataset)
    run = _Run(c, workdir, schedule=schedule, prefix=f'[{workdir.name}] ' if vectorized
               else '', echo=echo, overwrite=overwrite, resume_step=start_step,
               initial={'initial_loss': initial_loss, 'expected_initial_loss': expected})
    run.lsuv = lsuv
    if resumed:  # Process 0 reads the checkpoint; the other processes get it from it.
      leaves = runtime.on_main_process(
          functools.partial(checkpoints.restore_leaves, workdir, start_step))
      state = checkpoints.from_raw_leaves(
          runtime.share(leaves, like=checkpoints.raw_leaves(state)), like=state)
      run.resume(found[len(runs)][start_step])
    runs.append(run)
    states.append(state)
    shuffle_keys.append(shuffle_key)
    if c.augment:
      augment_lib.save_preview(workdir / 'augment_preview.png', dataset.train_images[:6],
                               c.augment, seed=c.seed)
  num_params = models.count_params(states[0].params)
  omitted_bias = models.omitted_bias_count(model)
  echo(f'{dataset.name}: {num_train} train / {len(dataset.test_labels)} test, '
       f'{dataset.num_classes} classes; MLP {config.hidden} {config.activation} '
       f'init={",".join(dict.fromkeys(c.init for c in configs))} '
       f'batchnorm={config.batchnorm}, {num_params:,} parameters'
       + (f'; {len(runs)} runs vectorized' if vectorized else '')
       + (f'; batch split over {mesh.size} devices' if mesh is not None else ''))
  for run in runs:
    if run.lsuv:
      run.echo('LSUV: layer output variances ' + ', '.join(
          f'{layer["variance"]:.3f} ({layer["iterations"]} rescaling'
          f'{"s" if layer["iterations"] != 1 else ""})' for layer in run.lsuv))
    run.echo(f'initial loss {run.initial["initial_loss"]:.4f}  (expected '
             f'ln({dataset.num_classes}) = {expected:.4f}, ratio '
             f'{run.initial["initial_loss"] / expected:.2f})')
    if resumed:
      run.echo(f'resumed from the checkpoint at step {start_step}')

  steps = compiled_steps(graphs, structure, mesh=mesh, vectorized=vectorized)
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *states) if vectorized else states[0]
  place = ((lambda x: runtime.replicate(x, mesh)) if mesh is not None
           else jax.device_put)
  state = place(state)
  images, labels = place(dataset.train_images), place(dataset.train_labels)
  mean, std = place(np.asarray(dataset.mean)), place(np.asarray(dataset.std))

  def epoch_perm(epoch):
    perms = [jax.random.permutation(jax.random.fold_in(key, epoch), num_train)
             for key in shuffle_keys]
    return place(jnp.stack(perms) if vectorized else perms[0])

  # Started before training, so that compiling the diagnostics variant overlaps the
  # compilation of the ordinary step.
  init_future = (_measure_init_in_background(steps.train, state, images, labels,
                                             epoch_perm(0), mean, std,
                                             in_order=mesh is not None)
                 if config.diagnostics_every and not resumed else None)
  pending, last_time, last_step = [], time.time(), start_step
  last_checkpoint = start_step
  host_work = []  # Callables run after the next step is dispatched.
  bar = progress.Progress(config.steps, echo=echo, start_step=start_step)
  for run in runs:
    run.out = bar.echo
  loop_start = time.time()
  if init_future is None and not resumed:
    for run in runs:
      _report_findings(run.echo, 'doctor at init',
                       doctor.examine(doctor.Run(run.config, run.initial)))

  def take_init_diagnostics():
    for run, measured in zip(runs, _per_run(init_future.result(), vectorized)):
      run.snapshots['init'] = (1, *diagnostics.to_host(measured))
      tensorboard_events.write_record(run.writer, {
          'step': 0, 'train_loss': run.initial['initial_loss'],
          'diagnostics': run.snapshots['init'][1]})
      tensorboard_events.write_histograms(run.writer, 0, run.snapshots['init'][2])
      _report_findings(run.echo, 'doctor at init', doctor.examine(doctor.Run(
          run.config, run.initial, diagnostics={'init': run.snapshots['init'][1]})))

  perm = None
  for step in range(start_step, config.steps):
    epoch, position = divmod(step, steps_per_epoch)
    if position == 0 or perm is None:
      perm = epoch_perm(epoch)
    done = step + 1
    diagnose = _is_diagnostics_step(done, config)
    if init_future is not None and (diagnose or init_future.done()):
      take_init_diagnostics()  # Before a diagnostics step: its variant is compiled.
      init_future = None
    state, metrics = steps.train(state, images, labels, perm, position, mean, std,
                                 with_diagnostics=diagnose)
    pending.append(metrics)
    bar.advance()
    while host_work:  # Written while the device runs the step just dispatched.
      host_work.pop(0)()
    if not _is_record_step(done, config):
      continue
    fetched = _per_run(jax.device_get(pending), vectorized)
    now = time.time()
    new_records = {}
    for i, run in enumerate(runs):
      if not run.active:
        continue
      step_losses = np.array([m['loss'] for m in fetched[i]], np.float64)
      record = {
          'step': done,
          'train_loss': float(np.mean(step_losses)),
          'train_accuracy': float(np.mean([m['accuracy'] for m in fetched[i]])),
          'lr': float(run.schedule(step)),
          'examples_per_sec': (done - last_step) * config.batch_size / (now - last_time),
      }
      if 'diagnostics' in fetched[i][-1]:
        scalars, samples = diagnostics.to_host(fetched[i][-1]['diagnostics'])
        record['diagnostics'] = scalars
        run.snapshots['end'] = (done, scalars, samples)
        host_work.append(functools.partial(
            tensorboard_events.write_histograms, run.writer, done, samples))
      run.diverged_at = first_non_finite_step(step_losses, first_step=last_step + 1,
                                              scalars=record.get('diagnostics'))
      if run.diverged_at is not None:
        run.status = 'diverged'
      new_records[i] = record
    if ((done % config.eval_every == 0 or done == config.steps)
        and any(run.active for run in runs)):
      for split in _eval_splits(dataset):
        result = evaluate(steps.eval, state, getattr(dataset, f'{split}_images'),
                          getattr(dataset, f'{split}_labels'), mean, std)
        for i, run in enumerate(runs):
          if run.active:
            new_records[i].update({f'{split}_loss': _item(result['loss'], i),
                                   f'{split}_accuracy': _item(result['accuracy'], i)})
    pending, last_time, last_step = [], now, done
    for i, record in new_records.items():
      run = runs[i]
      run.records.append(record)
      rundir.append_jsonl(run.workdir / 'metrics.jsonl', record)
      host_work.append(functools.partial(tensorboard_events.write_record, run.writer,
                                         record))
      if vectorized:
        bar.echo(run.prefix + progress.format_record(record, config.steps))
      else:
        bar.record(record)
      if not run.active:
        run.echo(f'loss is not finite at step {run.diverged_at}: stopping (diverged)')
    if _checkpoint_due(done, last_checkpoint, config):
      if init_future is not None:
        take_init_diagnostics()
        init_future = None
      for work in host_work:  # TensorBoard up to the checkpoint, on disk first.
        work()
      host_work.clear()
      for run in runs:
        run.writer.flush()
      runtime.on_main_process(functools.partial(
          _save_checkpoints, runs, _per_run(state, vectorized), done))
      last_checkpoint = done
    if not any(run.active for run in runs):
      break
  if init_future is not None:
    take_init_diagnostics()
  for work in host_work:
    work()
  bar.close()
  train_loop_s = time.time() - loop_start
  # Drawn while the final evaluation runs on the device.
  drawn = _in_background(lambda: [_draw(run) for run in runs])

  final = {}
  if any(run.status == 'completed' for run in runs):
    for split in ('train', *_eval_splits(dataset)):
      final[split] = evaluate(steps.eval, state, getattr(dataset, f'{split}_images'),
                              getattr(dataset, f'{split}_labels'), mean, std)
  fits, final_states = [], _per_run(state, vectorized)
  for i, (run, drawing) in enumerate(zip(runs, drawn.result())):
    run_steps = run.records[-1]['step'] if run.records else 0
    summary = {
        'status': run.status,
        'diverged_at_step': run.diverged_at,
        **run.initial,
        'num_params': num_params,
        'num_params_with_redundant_bias': num_params + omitted_bias,
        # Per-channel statistics inputs are normalized with: the training split's only.
        'normalization': {'mean': dataset.mean.tolist(), 'std': dataset.std.tolist(),
                          'train_examples': num_train},
        'steps': run_steps,
        # Of the group's training loop, for a vectorized run.
        'train_loop_s': train_loop_s,
        'examples_per_sec': (run_steps - start_step) * config.batch_size / train_loop_s,
        'devices': mesh.size if mesh is not None else 1,
        'vectorized_runs': len(runs),
    }
    if run.lsuv:
      summary['lsuv'] = run.lsuv
    if resumed:
      summary['resumed_from_step'] = start_step
    if run.status == 'completed':
      for split, result in final.items():
        summary[f'final_{split}_loss'] = _item(result['loss'], i)
        summary[f'final_{split}_accuracy'] = _item(result['accuracy'], i)
      run.echo(f'final: train loss {summary["final_train_loss"]:.4f} acc '
               f'{summary["final_train_accuracy"]:.2%} | test loss '
               f'{summary["final_test_loss"]:.4f} acc {summary["final_test_accuracy"]:.2%}')
    summary['workdir'] = str(run.workdir)
    _write_outputs(run, summary=summary, drawn=drawing, start_time=start_time)
    checkpoints.remove(run.workdir)  # Finished (summary written): nothing to resume.
    fits.append(Fit(summary, graphs, final_states[i]))
    if not runtime.is_main_process():  # Its copy of process 0's files.
      shutil.rmtree(run.workdir, ignore_errors=True)
  return fits


def _resumable(config: Config) -> tuple[dict[int, dict[str, Any]], str]:
  """``({step: host side} of its checkpoints, '')`` when ``config.workdir`` holds an
  unfinished run of this same config that saved some; else ``({}, why not)``. (In a
  multi-host run every process reads them: a shared file system.)"""
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
  found = checkpoints.available(workdir)
  return found, '' if found else 'that run saved no checkpoint'


def _start_workdir(config: Config, *, overwrite: bool, resume: bool = False
                   ) -> pathlib.Path:
  """The run directory (kept as it is to ``resume``); in a multi-host run, only
  process 0 writes the real one (the others write to a temporary directory, removed
  at the end)."""
  if resume:
    workdir = runtime.on_main_process(lambda: pathlib.Path(config.workdir))
  else:
    workdir = runtime.on_main_process(lambda: rundir.start(config, overwrite=overwrite))
  if workdir is None:
    workdir = pathlib.Path(tempfile.mkdtemp(
        prefix=f'fundamentals-process{jax.process_index()}-'))
  return workdir


def _per_run(tree, vectorized: bool) -> list:
  """Splits a pytree with a leading axis of runs into one pytree per run."""
  if not vectorized:
    return [tree]
  num_runs = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num_runs)]


def _item(value, i: int) -> float:
  """Entry ``i`` of a per-run array, or the float of one run."""
  return float(value[i]) if np.ndim(value) else float(value)


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
                                perm, mean, std, *,
                                in_order: bool = False) -> concurrent.futures.Future:
  """The first step's diagnostics (the init), measured on a copy of the initial state.

  A background thread runs that first step with ``with_diagnostics=True``, so the
  diagnostics variant compiles while training starts with the ordinary one (which
  hides the compilation wherever a core is free, e.g. on an accelerator host; on a
  busy 2-core CPU it saves little). NNX and JAX keep their trace contexts per thread.
  ``in_order`` (data parallelism: steps with collectives) runs it at once instead:
  every device, and every host, must launch its collectives in the same order, which
  two threads would not guarantee.
  """
  initial = jax.tree.map(jnp.copy, state)  # Copied now: training donates ``state``.

  def first_step():
    _, metrics = train_step(initial, images, labels, perm, 0, mean, std,
                            with_diagnostics=True)
    return jax.device_get(metrics['diagnostics'])

  if in_order:
    done = concurrent.futures.Future()
    done.set_result(first_step())
    return done
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


def _checkpoint_due(done: int, last_checkpoint: int, config: Config) -> bool:
  """At the first record step (this one) at or after each multiple of
  ``checkpoint_every`` (0: never), so that checkpoints change no record; not at the
  end: a finished run needs none."""
  every = config.checkpoint_every
  return bool(every) and done < config.steps and done // every > last_checkpoint // every


def _save_checkpoints(runs: list[_Run], states: list[TrainState], step: int):
  """Every run's checkpoint (diverged ones too), then the older ones removed: a kill
  in between leaves a step all runs of the group have."""
  for run, run_state in zip(runs, states):
    checkpoints.save(run.workdir, step, run_state, host=run.checkpoint_host())
  for run in runs:
    checkpoints.prune(run.workdir, keep=step)


def _is_record_step(done: int, config: Config) -> bool:
  """A metrics record every ``log_every`` steps, at diagnostics steps, and at the end."""
  return (done % config.log_every == 0 or done == config.steps
          or _is_diagnostics_step(done, config))


def _draw(run: _Run) -> tuple[dict[str, Any], dict[str, str]]:
  """Writes a run's diagnostics.json and figures; returns ``(diagnostics scalars per
  phase, {figure file: caption})``."""
  measured = {phase: {'step': step, 'scalars': scalars,
                      'histograms': (run.init_histograms if phase == 'init' and
                                     run.init_histograms is not None
                                     else diagnostics.histograms(samples))}
              for phase, (step, scalars, samples) in run.snapshots.items()}
  if measured:
    rundir.write_json(run.workdir / 'diagnostics.json', measured)
  series = ([(measured['init']['step'], measured['init']['scalars'])]
            if 'init' in measured else [])
  series += [(r['step'], r['diagnostics']) for r in run.records if 'diagnostics' in r]
  figures = plots.save_figures(
      run.workdir, records=run.records, series=series,
      histograms={phase: m['histograms'] for phase, m in measured.items()},
      activation=run.config.activation,
      unit_health=diagnostics.unit_health(run.config.activation), **run.initial)
  return {phase: m['scalars'] for phase, m in measured.items()}, figures


def _write_outputs(run: _Run, *, summary: dict[str, Any],
                   drawn: tuple[dict[str, Any], dict[str, str]], start_time: float):
  """The doctor's findings, summary.json and report.md; closes the event file."""
  scalars, figures = drawn
  findings = doctor.examine(doctor.Run(run.config, summary, run.records, scalars))
  _report_findings(run.echo, 'doctor', findings)
  summary['findings'] = findings
  summary['wall_time_s'] = time.time() - start_time
  rundir.write_json(run.workdir / 'summary.json', summary)
  report.write(run.workdir / 'report.md', config=run.config, summary=summary,
               findings=findings, figures=figures, diagnostics=scalars)
  run.writer.add_text('doctor', '\n\n'.join(doctor.format_finding(f) for f in findings)
                      or 'no findings')
  run.writer.close()
  files = sorted(p.name for p in run.workdir.iterdir()
                 if not p.name.startswith('events.') and p.name != checkpoints.DIRNAME)
  run.echo(f'wrote {run.workdir}/ ({", ".join(files)}, TensorBoard events) in '
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
