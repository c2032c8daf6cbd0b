"""Training under ``jax.jit``: a pure train step ``(state, batch) -> (state, metrics)``.

The NNX model is split once into a static ``graphdef`` and array state
(parameters, BatchNorm statistics); the jitted steps merge them back inside
(Flax performance guide), so every step is a pure function of explicit state and can
be vmapped across sweep members. The whole dataset lives on device as uint8; each
step gathers its batch from a per-epoch permutation and normalizes it on device, so
there is no per-step host work. The host side of a run (records, files, TensorBoard,
figures, summary) is ``fundamentals.runlog``; checkpoints are ``checkpoints``.
SIGTERM and SIGINT stop training gracefully (:func:`stop_on_signals`, :class:`Stopped`).
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import pathlib
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fundamentals import augment as augment_lib
from fundamentals import checkpoints
from fundamentals import config as config_lib
from fundamentals import data as data_lib
from fundamentals import diagnostics
from fundamentals import initializers
from fundamentals import losses
from fundamentals import models
from fundamentals import optimizers
from fundamentals import rundir
from fundamentals import runlog
from fundamentals import runtime
from fundamentals import saved_model
from fundamentals import signal_propagation
from fundamentals.config import Config

# Config fields that enter the compiled train step as values, not as constants
# (``config.knob(per_run=True)``): runs that differ only in these share one
# compilation, and ``fit_group`` (``--vectorize``) trains them together in one vmapped
# program. Whether momentum, weight decay or gradient clipping is 0 changes the
# optimizer's chain (``optimizers.ZERO_MEANS_OFF``), so that part of each is
# structure; an optimizer without its hyperparameters in its state (``manual_sgd``)
# keeps lr and momentum as constants.
PER_RUN = config_lib.per_run_fields()


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


LSUV_EXAMPLES = 1024
"""How many training images (the first ones) a data-dependent init such as LSUV uses."""


def apply_data_dependent_init(config: Config, model: models.MLP,
                              dataset: data_lib.Dataset, *,
                              num_examples: int = LSUV_EXAMPLES) -> list[dict[str, float]] | None:
  """LSUV (``config.init == 'lsuv'``) on the first training examples, normalized;
  rescales ``model``'s hidden kernels in place and returns the per-layer
  ``{'iterations', 'variance'}``. None for the other (per-tensor) inits."""
  if config.init not in initializers.DATA_DEPENDENT:
    return None
  x = data_lib.normalize(jnp.asarray(dataset.train_images[:num_examples]),
                         dataset.mean, dataset.std)
  return signal_propagation.apply_lsuv(model, x)


def canonical_config(config: Config) -> Config:
  """``config`` with its per-run values (``PER_RUN``) set to the defaults.

  Runs with equal canonical configs have the same compiled structure: they share one
  compilation and can be trained together by :func:`fit_group`. Whether momentum,
  weight decay or clipping is 0 is kept (``optimizers.ZERO_MEANS_OFF``: 0 leaves
  its transform and state out of the optimizer's chain); an optimizer without its
  hyperparameters in its state keeps them all (``optimizers.HYPERPARAMETERS``).
  """
  defaults = Config()
  values = {name: getattr(defaults, name) for name in PER_RUN}
  values.update({name: on if getattr(config, name) else 0.0
                 for name, on in optimizers.ZERO_MEANS_OFF.items()})
  if not optimizers.get_optimizer(config.optimizer).hyperparameters_in_state:
    values.update({name: getattr(config, name) for name in optimizers.HYPERPARAMETERS})
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


class Start(NamedTuple):
  """Where a run starts: its model (split into graphs and state), learning-rate
  schedule, shuffling key and LSUV's per-layer report."""
  graphs: Graphs
  state: TrainState
  schedule: Callable[[int], jax.Array]
  shuffle_key: jax.Array
  lsuv: list[dict[str, float]] | None
  model: models.MLP


def initial_state(config: Config, dataset: data_lib.Dataset) -> Start:
  """The initialized model and optimizer of a run: ``key(seed)`` splits into the
  init, shuffling and augmentation keys, here and nowhere else (the shuffling key
  from ``key(data_seed)`` instead when ``data_seed`` is set)."""
  init_key, shuffle_key, augment_key = jax.random.split(jax.random.key(config.seed), 3)
  if config.data_seed >= 0:  # The order a run of seed=data_seed would have.
    shuffle_key = jax.random.split(jax.random.key(config.data_seed), 3)[1]
  model = models.create_model(config, num_features=dataset.num_features,
                              num_classes=dataset.num_classes, key=init_key)
  lsuv = apply_data_dependent_init(config, model, dataset)
  tx, schedule = optimizers.create(config)
  graphs, state = split_model(model, tx, augment_key=augment_key if config.augment else None)
  return Start(graphs, state, schedule, shuffle_key, lsuv, model)


def epoch_permutation(shuffle_key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
  """The order of the training examples in ``epoch``: a fresh permutation each epoch."""
  return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples)


def batch_order(epoch_perm: Callable[[int], jax.Array], *, steps_per_epoch: int,
                start: int, stop: int):
  """Yields ``(step, perm, position)`` for steps ``start..stop-1``: the epoch's example
  order ``epoch_perm(epoch)`` (made once per epoch) and the batch's position in it."""
  perm = None
  for step in range(start, stop):
    epoch, position = divmod(step, steps_per_epoch)
    if position == 0 or perm is None:
      perm = epoch_perm(epoch)
    yield step, perm, position


def chunk_length(config: Config, steps_per_epoch: int) -> int:
  """Most steps one compiled call runs (``Steps.train_steps``): a window between two
  records, within one epoch."""
  every = [config.log_every, config.eval_every, steps_per_epoch, config.steps]
  if config.diagnostics_every:
    every.append(config.diagnostics_every)
  return max(1, min(every))


def windows(epoch_perm: Callable[[int], jax.Array], config: Config, *,
            steps_per_epoch: int, start: int, first_alone: bool = False):
  """Yields ``(done, perm, position, count, diagnose)`` for the steps from ``start``:
  ``count`` consecutive steps ending at step ``done`` (1-based), from batch
  ``position`` of the epoch order ``perm`` (made once per epoch). A window ends at
  each record step (:func:`is_record_step`) and at each epoch's end; ``diagnose``:
  its last step is a diagnostics step. ``first_alone``: the first step is a window of
  its own (so that the time to a first finished step can be taken)."""
  step, perm, perm_epoch = start, None, None
  while step < config.steps:
    epoch, position = divmod(step, steps_per_epoch)
    if epoch != perm_epoch:
      perm, perm_epoch = epoch_perm(epoch), epoch
    done = min(next_record_step(step, config), (epoch + 1) * steps_per_epoch)
    if first_alone and step == start:
      done = step + 1
    yield done, perm, position, done - step, is_diagnostics_step(done, config)
    step = done


def next_record_step(step: int, config: Config) -> int:
  """The first record step (1-based, :func:`is_record_step`) after ``step`` steps."""
  candidates = [config.steps, (step // config.log_every + 1) * config.log_every,
                (step // config.eval_every + 1) * config.eval_every]
  if config.diagnostics_every:
    every = config.diagnostics_every
    candidates.append((step // every + 1) * every)
  return min(candidates)


def make_train_step(graphs: Graphs, tx: optax.GradientTransformation, *,
                    batch_size: int, gradients: Callable = optimizers.autodiff_gradients,
                    augment: Callable | None = None,
                    mesh: jax.sharding.Mesh | None = None,
                    vectorized: bool = False, shared_order: bool = False,
                    jit: bool = True) -> Callable:
  """Returns ``train_step(state, images, labels, perm, position, mean, std)``, jitted.

  The batch is ``perm[position·B : (position+1)·B]`` of the on-device dataset.
  ``gradients(graph, params, batch_stats, x, y) -> (loss, logits, grads,
  batch_stats)`` (``optimizers.GRADIENTS``) feeds the optimizer ``tx``.
  ``augment(key, images) -> images`` (uint8 in, uint8 out), if given, transforms the
  training batch only, with key ``fold_in(state.augment_key, step)``.
  ``train_step(..., with_diagnostics=True)`` (a second compiled variant, static flag)
  adds ``metrics['diagnostics']``: ``diagnostics.measure`` of the step's batch,
  gradients and actual update; ordinary steps compute none of it.

  With a ``mesh`` (``runtime.data_mesh``) the batch is split over its devices
  (data parallelism): parameters stay replicated, and XLA sums gradients and
  BatchNorm's batch statistics over the global batch. ``vectorized``: ``state`` and
  ``perm`` carry a leading axis of runs, trained together (``jax.vmap``) on the
  shared dataset; with ``shared_order`` the runs share one ``perm`` (no leading axis:
  one batch for all, so each layer's product for every run is one wide matmul of the
  shared batch). ``jit=False``: the traceable function, for :func:`make_train_steps`.
  """

  def train_step(state: TrainState, images, labels, perm, position, mean, std,
                 with_diagnostics: bool = False):
    idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
    # Whole rows of the flattened images (a free reshape): a 2× faster gather on
    # XLA:CPU than that of [H, W, C] blocks.
    batch = jnp.reshape(images, (images.shape[0], -1))[idx]
    if augment is not None:
      batch = augment(jax.random.fold_in(state.augment_key, state.step),
                      batch.reshape(batch_size, *images.shape[1:]))
    x = data_lib.normalize(batch, mean, std)
    y = labels[idx]
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, runtime.batch_sharded(mesh))
      y = jax.lax.with_sharding_constraint(y, runtime.batch_sharded(mesh))
    loss, logits, grads, batch_stats = gradients(graphs.train, state.params,
                                                 state.batch_stats, x, y)
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
      return jax.vmap(step, in_axes=(0, None, None, None if shared_order else 0, None,
                                     None, None))(state, images, labels, perm, position,
                                                  mean, std)

  if not jit:
    return train_step
  return jax.jit(train_step, donate_argnums=0, static_argnames='with_diagnostics')


def make_train_steps(train_step: Callable) -> Callable:
  """Returns ``train_steps(state, images, labels, perm, position, count, mean, std, *,
  length)``, jitted: ``count`` ≤ ``length`` consecutive steps of ``train_step``
  (:func:`make_train_step` with ``jit=False``) from batch ``position`` of the epoch
  order ``perm``, in one compiled call (a ``lax.fori_loop``; ``count`` is a value, so
  every count up to ``length`` shares one compilation).

  The same steps as calling the one-step function ``count`` times, bit for bit
  (tested), with one dispatch instead of ``count``. Metrics: ``loss`` and
  ``accuracy`` of every step, ``[..., length]`` (entries ≥ ``count`` are 0).
  """

  def train_steps(state: TrainState, images, labels, perm, position, count, mean, std, *,
                  length: int):
    def body(i, carry):
      state, losses, accuracies = carry
      state, metrics = train_step(state, images, labels, perm, position + i, mean, std)
      return (state,
              jax.lax.dynamic_update_index_in_dim(losses, metrics['loss'], i, -1),
              jax.lax.dynamic_update_index_in_dim(accuracies, metrics['accuracy'], i, -1))

    shape = (*jnp.shape(state.step), length)
    zeros = jnp.zeros(shape, jnp.result_type(float))
    state, losses, accuracies = jax.lax.fori_loop(0, count, body, (state, zeros, zeros))
    return state, {'loss': losses, 'accuracy': accuracies}

  return jax.jit(train_steps, donate_argnums=0, static_argnames='length')


def make_eval_step(graphs: Graphs, *, vectorized: bool = False) -> Callable:
  """Returns ``eval_step(state, images, labels, mask, mean, std) -> (Σ loss, Σ correct)``.

  Evaluation mode: BatchNorm uses its running averages. ``vectorized``: ``state``
  has a leading axis of runs, and so have the sums.
  """

  def eval_step(state: TrainState, images, labels, mask, mean, std):
    logits, _ = models.apply(graphs.eval, state.params, state.batch_stats,
                             data_lib.normalize(images, mean, std))
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(per_example * mask), jnp.sum(correct * mask)

  if vectorized:
    return jax.jit(jax.vmap(eval_step, in_axes=(0, None, None, None, None, None)))
  return jax.jit(eval_step)


def classify(logits_step: Callable, model_arrays, dataset: data_lib.Dataset, mean, std,
             ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per held-out split, ``(images, labels, logits)`` of the model ``model_arrays``
  (``saved_model.model_arrays`` of a run's state)."""
  params, batch_stats = model_arrays
  return {split: (*split_of(dataset, split), saved_model.batched(
      lambda x: logits_step(params, batch_stats, x, mean, std), split_of(dataset, split)[0]))
          for split in eval_splits(dataset)}


class Steps(NamedTuple):
  train: Callable
  eval: Callable
  train_steps: Callable  # Several train steps per call (make_train_steps).
  logits: Callable  # One run's evaluation-mode logits (saved_model.make_logits_step).


@functools.lru_cache(maxsize=16)
def compiled_steps(graphs: Graphs, canonical: Config, *,
                   mesh: jax.sharding.Mesh | None = None,
                   vectorized: bool = False, shared_order: bool = False) -> Steps:
  """The jitted train and eval steps of one structure, made once per process.

  Every run whose graphs and :func:`canonical_config` are equal gets the same jitted
  functions, and so (for equal shapes) the same compiled programs: learning rate,
  momentum, seed and init are values in the state, not constants.
  """
  tx, _ = optimizers.create(canonical)
  make = functools.partial(
      make_train_step, graphs, tx, batch_size=canonical.batch_size,
      gradients=optimizers.gradients_of(canonical.optimizer),
      augment=augment_lib.make_augment(canonical.augment), mesh=mesh,
      vectorized=vectorized, shared_order=shared_order)
  return Steps(make(), make_eval_step(graphs, vectorized=vectorized),
               make_train_steps(make(jit=False)), saved_model.make_logits_step(graphs.eval))


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
  logits, _ = jax.jit(models.apply, static_argnums=0)(
      graphs.train, state.params, state.batch_stats, x)
  return float(losses.softmax_cross_entropy(
      logits, jnp.asarray(dataset.train_labels[:num_examples])))


class Fit(NamedTuple):
  """What :func:`fit` returns: the summary and the final model, split."""
  summary: dict[str, Any]
  graphs: Graphs
  state: TrainState


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What schedulers send before a kill (SLURM, Kubernetes, ``timeout``) and Ctrl-C."""


class Stopped(Exception):
  """Training stopped by a signal (:func:`stop_on_signals`).

  ``step``: the record step it stopped at, where each run saved a checkpoint and a
  ``summary.json`` of status ``interrupted``; ``resume`` goes on from it with the
  numbers of an uninterrupted run. None: the signal came between two runs (of a
  sweep), and this one did not start.
  """

  def __init__(self, signal_name: str, step: int | None, workdirs: Sequence[Any]):
    self.signal_name, self.step = signal_name, step
    self.workdirs = [str(w) for w in workdirs]
    where = ', '.join(self.workdirs)
    super().__init__(f'interrupted by {signal_name} at step {step}: checkpoint saved in '
                     f'{where}' if step is not None else
                     f'interrupted by {signal_name} before {where} started')


@dataclasses.dataclass
class _StopRequest:
  signal_name: str | None = None  # The signal that asked to stop; None: none did.
  depth: int = 0  # Nested stop_on_signals blocks of the main thread.
  previous: dict[int, Any] = dataclasses.field(default_factory=dict)  # Their handlers.


_stop = _StopRequest()


def stop_requested() -> str | None:
  """The name of the signal that asked training to stop (``'SIGTERM'``), or None."""
  return _stop.signal_name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
  """While the block runs, SIGTERM and SIGINT ask training to stop instead of killing.

  The first one only notes the request (:func:`stop_requested`) and gives both
  signals back their default action, so that a second one ends the process at once
  (killed by that signal: exit status 128 + its number in a shell, 143 or 130). The
  training loop stops at its next record step (:func:`fit_group`); a run that has
  not started yet does not start (:class:`Stopped` with no step). The previous
  handlers come back when the outermost block ends, however it ends; an inner block
  (``launch.py`` holds one around a whole sweep, each ``fit_group`` its own) changes
  nothing. Only the main thread can take signals, so a block of another thread, or
  of a multi-process (``jax.distributed``) run, installs nothing: there each process
  would stop at another step, while every collective and checkpoint needs all of
  them, so they keep the default action (killed; ``--resume`` goes on from the last
  checkpoint).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  if not _stop.depth:
    _stop.signal_name, _stop.previous = None, {}
    if jax.process_count() == 1:
      # A signal ignored by whoever started the process (SIG_IGN: a background job of
      # a non-interactive shell) stays ignored.
      _stop.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS
                        if signal.getsignal(s) is not signal.SIG_IGN}
      for s in _stop.previous:
        signal.signal(s, _ask_to_stop)
  _stop.depth += 1
  try:
    yield
  finally:
    _stop.depth -= 1
    if not _stop.depth:
      for s, handler in _stop.previous.items():  # None: a handler not set from Python.
        signal.signal(s, signal.SIG_DFL if handler is None else handler)
      _stop.previous = {}


def _ask_to_stop(signum: int, frame):
  del frame  # Runs in the main thread between two bytecodes: only notes the request.
  for s in _stop.previous:  # Those it took (an ignored one stays ignored).
    signal.signal(s, signal.SIG_DFL)
  _stop.signal_name = signal.Signals(signum).name


def stop_step(done: int, config: Config) -> int:
  """The step a stop asked for once the steps up to ``done`` are dispatched happens
  at: the first record step from ``done`` on (:func:`is_record_step`)."""
  return done if is_record_step(done, config) else next_record_step(done, config)


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
  interruption; otherwise they start afresh, as with ``overwrite``. Nothing is
  written before the configs, the checkpoints to resume and the data are checked.
  Each run directory is taken (``rundir.claim``) for the run's life and given back at
  its end, however it ends.

  SIGTERM or SIGINT (:func:`stop_on_signals`, held here) stops the group at the next
  record step (:func:`stop_step`): that step's records are written as usual, then
  each run saves a checkpoint of it (due or not), a ``summary.json`` of status
  ``interrupted`` (``interrupted_at_step``, ``signal``) and closes its TensorBoard
  file, and :class:`Stopped` is raised. Stopping at a record step, never inside a
  window, leaves no metrics half-recorded, so ``resume`` writes exactly the records
  an uninterrupted run writes after it. The wait is bounded by the record interval,
  ``min(log_every, eval_every, diagnostics_every)`` steps (100 by default), which a
  compiled call of up to :func:`chunk_length` steps cannot be cut short of anyway. A
  signal during the last window, or after it, lets the runs finish (their final
  evaluation, summary and figures: seconds).
  """
  claimed = []
  with stop_on_signals():
    try:
      return _fit_group(configs, dataset=dataset, overwrite=overwrite, resume=resume,
                        echo=echo, claimed=claimed)
    finally:
      for workdir in claimed:
        rundir.release(workdir)


def _fit_group(configs: Sequence[Config], *, dataset: data_lib.Dataset | None,
               overwrite: bool, resume: bool, echo: Callable[[str], Any],
               claimed: list[pathlib.Path]) -> list[Fit]:
  """:func:`fit_group`'s work; the run directories it takes are added to ``claimed``."""
  configs = _check_group(configs)
  if stop_requested():  # Between two runs (of a sweep): this one does not start.
    raise Stopped(stop_requested(), None, [c.workdir for c in configs])
  config, vectorized = configs[0], len(configs) > 1
  start_time = time.time()
  mesh = runtime.data_mesh(config.batch_size) if config.data_parallel else None
  start_step, found = (checkpoints.resume_step(configs, overwrite=overwrite) if resume
                       else (0, []))
  dataset = dataset if dataset is not None else data_lib.load_configured(config)
  check_fits(config, dataset)
  steps_per_epoch = len(dataset.train_labels) // config.batch_size
  runs, starts = _start_runs(configs, dataset, start_step=start_step, found=found,
                             overwrite=overwrite, echo=echo, mesh=mesh, claimed=claimed)
  graphs = starts[0].graphs
  # Runs with one data order (``data_seed``) share each batch: one perm, not one each.
  shared_order = vectorized and all(
      bool(jnp.all(jax.random.key_data(s.shuffle_key)
                   == jax.random.key_data(starts[0].shuffle_key))) for s in starts)
  steps = compiled_steps(graphs, canonical_config(config), mesh=mesh,
                         vectorized=vectorized, shared_order=shared_order)
  place = (lambda x: runtime.replicate(x, mesh)) if mesh is not None else jax.device_put
  state = place(_stack([s.state for s in starts]) if vectorized else starts[0].state)
  images, labels = place(dataset.train_images), place(dataset.train_labels)
  mean, std = place(np.asarray(dataset.mean)), place(np.asarray(dataset.std))

  def epoch_perm(epoch):
    if shared_order or not vectorized:
      return place(epoch_permutation(starts[0].shuffle_key, epoch, len(labels)))
    return place(jnp.stack([epoch_permutation(s.shuffle_key, epoch, len(labels))
                            for s in starts]))

  log = runlog.GroupLog(runs, config=config, start_step=start_step, echo=echo,
                        vectorized=vectorized)
  # Started before training, so that compiling the diagnostics variant overlaps the
  # compilation of the ordinary step.
  log.start(_measure_init_in_background(steps.train, state, images, labels,
                                        epoch_perm(0), mean, std,
                                        in_order=mesh is not None)
            if config.diagnostics_every and not start_step else None,
            resumed=bool(start_step))
  last_checkpoint = start_step
  length = chunk_length(config, steps_per_epoch)
  at = lambda value: place(np.int32(value))  # An explicit transfer.
  first_step_s = None
  for done, perm, position, count, diagnose in windows(
      epoch_perm, config, steps_per_epoch=steps_per_epoch, start=start_step,
      first_alone=True):
    if not log.any_active:  # Resumed after every run stopped (early or diverged).
      break
    plain = count - diagnose  # A diagnostics step runs on its own, as the last one.
    if plain:
      log.before_step(False)
      with jax.transfer_guard('disallow'):  # Nothing implicit: no hidden host sync.
        state, metrics = steps.train_steps(state, images, labels, perm, at(position),
                                           at(plain), mean, std, length=length)
      log.dispatched(metrics, count=plain)
    if diagnose:
      log.before_step(True)
      with jax.transfer_guard('disallow'):
        state, metrics = steps.train(state, images, labels, perm, at(position + plain),
                                     mean, std, with_diagnostics=True)
      log.dispatched(metrics)
    if first_step_s is None:  # One wait, for the time to the first finished step.
      jax.block_until_ready(metrics)
      first_step_s = runtime.seconds_since_process_start()
    if stop_requested():  # Said once: where it stops (a signal, :func:`stop_on_signals`).
      log.announce_stop(stop_requested(), done=done, at=stop_step(done, config))
    if not is_record_step(done, config):
      continue
    log.collect(done)
    evaluated = ()
    if (done % config.eval_every == 0 or done == config.steps) and log.any_active:
      evaluated = eval_splits(dataset)
      for split in evaluated:
        log.add_evaluation(split, evaluate(steps.eval, state, *split_of(dataset, split),
                                           mean, std))
    log.write_records()
    if 'validation' in evaluated:
      stopped = log.select_on_validation(done, lambda: runlog.per_run(state, vectorized))
      if stopped:  # Their final evaluation, of the state they stopped at.
        log.stop_runs(stopped, train=evaluate(steps.eval, state,
                                              *split_of(dataset, 'train'), mean, std),
                      states=runlog.per_run(state, vectorized))
    stopping = bool(stop_requested()) and done < config.steps and log.any_active
    if stopping or checkpoints.is_due(done, last_checkpoint, config):
      log.save_checkpoints(runlog.per_run(state, vectorized), done)
      last_checkpoint = done
    if stopping:
      log.interrupt(done, signal_name=stop_requested(), start_step=start_step,
                    start_time=start_time)
      raise Stopped(stop_requested(), done, [run.workdir for run in runs])
    if not log.any_active:
      break
  train_loop_s = log.end_loop()
  classified = [classify(steps.logits, run.final_state or saved_model.model_arrays(s),
                         dataset, mean, std)
                if run.status == 'completed' and run.config.classification_figures else {}
                for run, s in zip(runs, runlog.per_run(state, vectorized))]
  final = ({split: evaluate(steps.eval, state, *split_of(dataset, split), mean, std)
            for split in ('train', *eval_splits(dataset))}
           if any(run.status == 'completed' and run.final is None for run in runs)
           else {})
  log.save_final_models(runlog.per_run(state, vectorized))
  num_params = models.count_params(starts[0].state.params)
  facts = {
      'num_params': num_params,
      'num_params_with_redundant_bias':
          num_params + models.omitted_bias_count(starts[0].model),
      # Per-channel statistics inputs are normalized with: the training split's only.
      'normalization': {'mean': dataset.mean.tolist(), 'std': dataset.std.tolist(),
                        'train_examples': len(dataset.train_labels)},
      'devices': mesh.size if mesh is not None else 1,
      # From process start: imports, data, init, compilation and the first step.
      'first_step_s': first_step_s,
  }
  summaries = log.finish(final, classified=classified, facts=facts,
                         train_loop_s=train_loop_s, start_step=start_step,
                         start_time=start_time)
  if not runtime.is_main_process():  # Its copies of process 0's files.
    for run in runs:
      shutil.rmtree(run.workdir, ignore_errors=True)
  return [Fit(summary, graphs, final_state) for summary, final_state
          in zip(summaries, runlog.per_run(state, vectorized))]


def check_fits(config: Config, dataset: data_lib.Dataset):
  """Raises ValueError when the dataset cannot feed ``config``'s batches."""
  if config.batch_size > len(dataset.train_labels):
    raise ValueError(f'batch_size={config.batch_size} exceeds the '
                     f'{len(dataset.train_labels)} training examples of {dataset.name}')
  if config.early_stopping_patience and not len(dataset.validation_labels):
    raise ValueError(f'early_stopping_patience={config.early_stopping_patience} needs a '
                     f'validation split, and {dataset.name} has none: hold one out with '
                     '--validation_fraction=0.2 (early stopping on the test set would '
                     'make its figures optimistic)')


def _check_group(configs: Sequence[Config]) -> list[Config]:
  """The configs, if they may train together: one structure, a workdir each."""
  configs = list(configs)
  if not configs:
    raise ValueError('fit_group needs at least one config')
  structure = canonical_config(configs[0])
  for other in configs[1:]:
    if canonical_config(other) != structure:
      differ = canonical_config(other).differences(structure)
      raise ValueError(f'runs trained together may differ only in {list(PER_RUN)} '
                       f'(momentum, weight decay and clipping only while nonzero: '
                       f'zero leaves them out of the program); {other.workdir!r} also '
                       f'differs in {differ}')
  workdirs = [c.workdir for c in configs]
  if len(configs) > 1 and (not all(workdirs) or len(set(workdirs)) < len(workdirs)):
    raise ValueError(f'runs trained together need a workdir each, all different; got '
                     f'{workdirs}')
  return configs


def _start_runs(configs: Sequence[Config], dataset: data_lib.Dataset, *,
                start_step: int, found: list, overwrite: bool,
                echo: Callable[[str], Any], mesh, claimed: list[pathlib.Path]
                ) -> tuple[list[runlog.RunLog], list[Start]]:
  """Each run's directory, initial state (restored from its checkpoint when
  resuming) and log; prints what is trained and from where."""
  vectorized = len(configs) > 1
  expected = losses.expected_initial_loss(dataset.num_classes)
  runs, starts = [], []
  for i, c in enumerate(configs):
    workdir = _start_workdir(c, overwrite=overwrite, resume=bool(start_step))
    if runtime.is_main_process():
      claimed.append(workdir)
    start = initial_state(c, dataset)
    initial_loss = measure_initial_loss(start.graphs, start.state, dataset)
    run = runlog.RunLog(c, workdir, schedule=start.schedule,
                        prefix=f'[{workdir.name}] ' if vectorized else '', echo=echo,
                        overwrite=overwrite, resume_step=start_step,
                        initial={'initial_loss': initial_loss,
                                 'expected_initial_loss': expected})
    run.lsuv = start.lsuv
    run.model_meta = saved_model.describe(c, dataset)
    if start_step:  # Process 0 reads the checkpoint; the other processes get it from it.
      leaves = runtime.on_main_process(
          functools.partial(checkpoints.restore_leaves, workdir, start_step))
      start = start._replace(state=checkpoints.from_raw_leaves(
          runtime.share(leaves, like=checkpoints.raw_leaves(start.state)),
          like=start.state))
      run.resume(found[i][start_step])
      if run.stopped_at is not None and saved_model.has(workdir, 'final'):
        loaded = saved_model.load(workdir, 'final')  # Its figures are of its stop.
        run.final_state = (loaded.params, loaded.batch_stats)
    if c.augment:
      augment_lib.save_preview(workdir / 'augment_preview.png', dataset.train_images,
                               dataset.train_labels, c.augment,
                               class_names=dataset.class_names, seed=c.seed)
    runs.append(run)
    starts.append(start)
  config = configs[0]
  echo(f'{dataset.name}: {len(dataset.train_labels)} train / {len(dataset.test_labels)} '
       f'test, {dataset.num_classes} classes; MLP {config.hidden} {config.activation} '
       f'init={",".join(dict.fromkeys(c.init for c in configs))} '
       f'batchnorm={config.batchnorm}, {models.count_params(starts[0].state.params):,} '
       'parameters' + (f'; {len(runs)} runs vectorized' if vectorized else '')
       + (f'; batch split over {mesh.size} devices' if mesh is not None else ''))
  for run in runs:
    if run.lsuv:
      run.echo('LSUV: layer output variances ' + ', '.join(
          f'{layer["variance"]:.3f} ({layer["iterations"]} rescaling'
          f'{"s" if layer["iterations"] != 1 else ""})' for layer in run.lsuv))
    run.echo(f'initial loss {run.initial["initial_loss"]:.4f}  (expected '
             f'ln({dataset.num_classes}) = {expected:.4f}, ratio '
             f'{run.initial["initial_loss"] / expected:.2f})')
    if start_step:
      run.echo(f'resumed from the checkpoint at step {start_step}')
  return runs, starts


def _start_workdir(config: Config, *, overwrite: bool, resume: bool = False
                   ) -> pathlib.Path:
  """The run directory, taken for this run (``rundir.claim``: refused if another
  process holds it) before anything in it is read for changing; kept as it is to
  ``resume``. In a multi-host run, only process 0 takes and writes the real one (the
  others write to a temporary directory, removed at the end)."""
  if resume:
    workdir = runtime.on_main_process(lambda: rundir.claim(config.workdir))
  else:
    workdir = runtime.on_main_process(lambda: rundir.start(config, overwrite=overwrite))
  if workdir is None:
    workdir = pathlib.Path(tempfile.mkdtemp(
        prefix=f'fundamentals-process{jax.process_index()}-'))
  return workdir


def _stack(states: Sequence[TrainState]) -> TrainState:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


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
  return runlog.in_background(first_step)


def is_diagnostics_step(done: int, config: Config) -> bool:
  """Diagnostics every ``diagnostics_every`` steps and at the last (the init: above)."""
  every = config.diagnostics_every
  return bool(every) and (done % every == 0 or done == config.steps)


def is_record_step(done: int, config: Config) -> bool:
  """A metrics record every ``log_every`` steps, at each evaluation (every
  ``eval_every`` steps), at diagnostics steps, and at the end."""
  return (done % config.log_every == 0 or done % config.eval_every == 0
          or done == config.steps or is_diagnostics_step(done, config))


def eval_splits(dataset: data_lib.Dataset) -> tuple[str, ...]:
  """The held-out splits to evaluate: validation (when there is one) and test."""
  return ('validation', 'test') if len(dataset.validation_labels) else ('test',)


def split_of(dataset: data_lib.Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels of ``split`` ('train', 'validation' or 'test')."""
  return getattr(dataset, f'{split}_images'), getattr(dataset, f'{split}_labels')
