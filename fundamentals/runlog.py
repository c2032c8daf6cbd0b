"""The host side of training: records, ``metrics.jsonl``, TensorBoard, divergence,
checkpoints' host part, figures, the doctor, ``summary.json`` and ``report.md``.

``train.fit_group`` runs the device side (the jitted steps) and hands this module
what the steps return; a :class:`RunLog` keeps one run's files, a :class:`GroupLog`
what the runs trained together share (pending step metrics, the progress bar, work
done while the device runs the next step, the init diagnostics measured in the
background). Nothing here touches the model's arrays but to save them.
"""

import concurrent.futures
import functools
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from fundamentals import checkpoints
from fundamentals import diagnostics
from fundamentals import doctor
from fundamentals import losses
from fundamentals import plots
from fundamentals import progress
from fundamentals import report
from fundamentals import rundir
from fundamentals import runtime
from fundamentals import saved_model
from fundamentals import tensorboard_events
from fundamentals.config import Config


class RunLog:
  """One run's directory, records, diagnostics snapshots and status."""

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
    self.stopped_at = None  # The step an early stop ended it at.
    # Per split, its evaluation when it stopped early (the group may train on).
    self.final: dict[str, dict[str, float]] | None = None
    self.model_meta: dict[str, Any] = {}  # saved_model.describe, for model.json.
    self.final_state = None  # Its model's arrays when it stopped early.
    self.per_class_accuracy: dict[str, dict[str, float]] = {}  # Per split, by draw().
    self.lsuv: list[dict[str, float]] | None = None  # Per layer, with --init=lsuv.
    self.init_histograms = None  # Of the init snapshot, once computed (or restored).
    # Now, for a run interrupted before its summary too (which repeats it).
    rundir.write_json(workdir / 'environment.json', runtime.environment())
    if resume_step:  # TensorBoard drops the killed run's events after the checkpoint.
      # A summary.json here is an interrupted run's (checkpoints.resumable): no longer true.
      (workdir / 'summary.json').unlink(missing_ok=True)
      self.writer = tensorboard_events.create_writer(workdir, purge_step=resume_step + 1)
      return
    if overwrite:  # Outputs a new run might not rewrite (e.g. without diagnostics).
      for name in ('diagnostics.json', 'report.md', *plots.FIGURES):
        (workdir / name).unlink(missing_ok=True)
      checkpoints.remove(workdir)
      shutil.rmtree(saved_model.directory(workdir), ignore_errors=True)
    self.writer = tensorboard_events.create_writer(workdir, overwrite=overwrite)

  def resume(self, host: dict[str, Any]):
    """Takes up a checkpoint's host side: status, records up to its step (those
    after it are dropped from ``metrics.jsonl``), init diagnostics."""
    self.status, self.diverged_at = host['status'], host['diverged_at']
    self.stopped_at, self.final = host.get('stopped_at'), host.get('final')
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
    host = {'status': self.status, 'diverged_at': self.diverged_at,
            'stopped_at': self.stopped_at, 'final': self.final}
    if 'init' in self.snapshots:
      step, scalars, samples = self.snapshots['init']
      if self.init_histograms is None:
        self.init_histograms = diagnostics.histograms(samples)
      host['init'] = {'step': step, 'scalars': scalars, 'histograms': self.init_histograms}
    return host

  @property
  def active(self) -> bool:
    return self.status != 'diverged' and self.stopped_at is None

  def save_model(self, kind: str, state, *, meta: dict[str, Any]):
    """Keeps ``state``'s model as ``kind`` in model/ (process 0; ``keep_model``)."""
    if self.config.keep_model:
      runtime.on_main_process(functools.partial(
          saved_model.save, self.workdir, kind, state, meta={**self.model_meta, **meta}))

  def echo(self, line: str):
    self.out(self.prefix + line.replace('\n', '\n' + self.prefix))

  def make_record(self, done: int, fetched: list[dict[str, Any]], *, first_step: int,
                  examples_per_sec: float) -> tuple[dict[str, Any], list[Callable]]:
    """The record of the window of steps ``first_step..done`` from their fetched
    metrics; marks the run diverged at its first non-finite step. Returns the record
    and host work (TensorBoard histograms) to do while the device runs on."""
    step_losses = np.array([m['loss'] for m in fetched], np.float64)
    record = {
        'step': done,
        'train_loss': float(np.mean(step_losses)),
        'train_accuracy': float(np.mean([m['accuracy'] for m in fetched])),
        'lr': float(self.schedule(done - 1)),
        'examples_per_sec': examples_per_sec,
    }
    work = []
    if 'diagnostics' in fetched[-1]:
      scalars, samples = diagnostics.to_host(fetched[-1]['diagnostics'])
      record['diagnostics'] = scalars
      # Kept per diagnostics step (in metrics.jsonl, so a resumed run has them) for
      # the figure of the activations over training.
      record['activation_histograms'] = diagnostics.histograms(
          {'activation': samples['activation']})['activation']
      self.snapshots['end'] = (done, scalars, samples)
      work.append(functools.partial(tensorboard_events.write_histograms, self.writer,
                                    done, samples))
    self.diverged_at = first_non_finite_step(step_losses, first_step=first_step,
                                             scalars=record.get('diagnostics'))
    if self.diverged_at is not None:
      self.status = 'diverged'
    return record, work

  def take_init_diagnostics(self, measured):
    """The first step's diagnostics (the init), with the doctor's init findings."""
    self.snapshots['init'] = (1, *diagnostics.to_host(measured))
    tensorboard_events.write_record(self.writer, {
        'step': 0, 'train_loss': self.initial['initial_loss'],
        'diagnostics': self.snapshots['init'][1]})
    tensorboard_events.write_histograms(self.writer, 0, self.snapshots['init'][2])
    findings = doctor.examine(doctor.Run(
        self.config, self.initial, diagnostics={'init': self.snapshots['init'][1]}))
    report_findings(self.echo, 'doctor at init', findings)
    tensorboard_events.write_findings(self.writer, 'init', findings, step=0)

  def classify(self, classified: dict[str, tuple] | None) -> dict[str, tuple]:
    """Per held-out split of ``classified`` (its ``(images, labels, logits)`` by the
    final model), the predictions and confusion matrix; keeps each class's accuracy
    for the summary (``per_class_accuracy``). Returns ``{split: (images, labels,
    logits, predictions, confusion)}`` for :meth:`draw`."""
    self.per_class_accuracy, confusions = {}, {}
    for split, (images, labels, logits) in (classified or {}).items():
      class_names = self.model_meta['class_names']
      predictions = np.argmax(logits, -1)
      confusion = losses.confusion_matrix(labels, predictions, len(class_names))
      confusions[split] = (images, labels, logits, predictions, confusion)
      self.per_class_accuracy[split] = dict(zip(
          class_names, losses.per_class_accuracy(confusion).tolist()))
    return confusions

  def diagnostics_scalars(self) -> dict[str, Any]:
    """The diagnostics scalars per phase ('init', 'end') measured or restored."""
    return {phase: scalars for phase, (_, scalars, _) in self.snapshots.items()}

  def draw(self, confusions: dict[str, tuple] | None = None) -> dict[str, str]:
    """Writes diagnostics.json and the figures; returns ``{figure file: caption}``.
    ``confusions``: :meth:`classify`'s, for the confusion matrices and the
    misclassified examples."""
    measured = {phase: {'step': step, 'scalars': scalars,
                        'histograms': (self.init_histograms if phase == 'init' and
                                       self.init_histograms is not None
                                       else diagnostics.histograms(samples))}
                for phase, (step, scalars, samples) in self.snapshots.items()}
    if measured:
      rundir.write_json(self.workdir / 'diagnostics.json', measured)
    series = ([(measured['init']['step'], measured['init']['scalars'])]
              if 'init' in measured else [])
    series += [(r['step'], r['diagnostics']) for r in self.records if 'diagnostics' in r]
    activation_series = ([(measured['init']['step'],
                           measured['init']['histograms']['activation'])]
                         if 'init' in measured else [])
    activation_series += [(r['step'], r['activation_histograms']) for r in self.records
                          if 'activation_histograms' in r]
    figures = plots.save_figures(
        self.workdir, records=self.records, series=series,
        histograms={phase: m['histograms'] for phase, m in measured.items()},
        activation=self.config.activation,
        unit_health=diagnostics.unit_health(self.config.activation),
        activation_series=activation_series, **self.initial)
    for split, (images, labels, logits, predictions, confusion) in (
        confusions or {}).items():
      figures.update(plots.save_classification_figures(
          self.workdir, split=split, images=images, labels=labels,
          predictions=predictions, probabilities=saved_model.softmax(logits).max(-1),
          class_names=self.model_meta['class_names'], confusion=confusion))
    return figures

  def write_summary(self, summary: dict[str, Any], *, start_time: float):
    """The doctor's findings into ``summary``, then summary.json: the results, written
    before anything optional (figures, report), so that a full disk loses none."""
    findings = doctor.examine(doctor.Run(self.config, summary, self.records,
                                         self.diagnostics_scalars()))
    report_findings(self.echo, 'doctor', findings)
    summary['findings'] = findings
    summary['wall_time_s'] = time.time() - start_time
    rundir.write_json(self.workdir / 'summary.json', summary)

  def write_outputs(self, summary: dict[str, Any], *, confusions: dict[str, tuple]):
    """After summary.json: diagnostics.json, the figures, report.md and TensorBoard's
    end (closing the event file). A file the disk refuses is a warning naming it
    (``OSError``: a full or read-only disk); the results are already saved."""
    figures = self._optional('the figures and diagnostics.json',
                             lambda: self.draw(confusions)) or {}
    scalars, findings = self.diagnostics_scalars(), summary['findings']
    self._optional('report.md', lambda: report.write(
        self.workdir / 'report.md', config=self.config, summary=summary,
        findings=findings, figures=figures, diagnostics=scalars))

    def tensorboard():
      tensorboard_events.write_findings(self.writer, 'end', findings, step=summary['steps'])
      tensorboard_events.write_figures(self.writer, self.workdir, figures,
                                       step=summary['steps'])
      tensorboard_events.write_hparams(self.writer, self.config.to_dict(), summary,
                                       step=summary['steps'])
      self.writer.close()

    self._optional('the TensorBoard events', tensorboard)
    files = sorted(p.name for p in self.workdir.iterdir()  # Not the hidden .lock.
                   if not p.name.startswith(('events.', '.')) and p.name != checkpoints.DIRNAME)
    self.echo(f'wrote {self.workdir}/ ({", ".join(files)}, TensorBoard events) in '
              f'{summary["wall_time_s"]:.1f}s')

  def _optional(self, what: str, write: Callable[[], Any]) -> Any:
    """``write()``, or None and a warning when the file system refuses (OSError)."""
    try:
      return write()
    except OSError as e:
      logging.warning('%s: %s not written (%s); summary.json holds the results',
                      self.workdir, what, e)
      return None

  def write_interrupted(self, summary: dict[str, Any]):
    """summary.json of a run stopped by a signal (``train.Stopped``); closes its
    event file. No figures or report: the run is not finished."""
    rundir.write_json(self.workdir / 'summary.json', summary)
    self.writer.close()


MAX_IN_FLIGHT = 8
"""How many dispatched train calls may run ahead of the host: at the next one, the
host waits for the oldest. Without a bound, a data-parallel run on CPU devices
(``--xla_force_host_platform_device_count``) deadlocks in its first all-reduce once
more than about 32 programs are queued (XLA:CPU admits 32 executions per device
ahead of the host; the per-device parts of one program then wait in the all-reduce
rendezvous for partners that cannot start: measured, 33 queued ran and 40 aborted
after the 40 s rendezvous timeout). Small epochs make many windows between two
records (each epoch's end ends one), so it was met at ordinary intervals. Eight keep
any device busy: each call is at least one whole train step."""


class GroupLog:
  """What the runs trained together share on the host: the steps dispatched since
  the last record, the progress bar, work left for while the device runs, the init
  diagnostics measured in the background.

  The loop calls, per step, :meth:`before_step` and :meth:`dispatched`; per record
  step :meth:`collect`, :meth:`add_evaluation`, :meth:`write_records` and maybe
  :meth:`save_checkpoints`; at the end :meth:`end_loop` and :meth:`finish`, or, when
  a signal stops the runs (``train.stop_on_signals``), :meth:`announce_stop` as soon
  as the loop sees it and :meth:`interrupt` after the checkpoint of the stop.
  """

  def __init__(self, runs: Sequence[RunLog], *, config: Config, start_step: int,
               echo: Callable[[str], Any], vectorized: bool):
    self.runs, self.config, self.vectorized = list(runs), config, vectorized
    self.pending: list[Any] = []  # The metrics of the steps since the last record.
    self.in_flight: list[Any] = []  # Those of the last dispatches (MAX_IN_FLIGHT).
    self.host_work: list[Callable[[], Any]] = []  # Done after the next dispatch.
    self.new_records: dict[int, dict[str, Any]] = {}
    self.last_time, self.last_step = time.time(), start_step
    self.init_future: concurrent.futures.Future | None = None
    self.stop_announced = False  # announce_stop said where a signal stops the runs.
    self.bar = progress.Progress(config.steps, echo=echo, start_step=start_step)
    for run in self.runs:
      run.out = self.bar.echo
    self.loop_start = time.time()

  @property
  def any_active(self) -> bool:
    return any(run.active for run in self.runs)

  def start(self, init_future: concurrent.futures.Future | None, *, resumed: bool):
    """The doctor at init: now from the initial loss alone, or from the first
    step's diagnostics once ``init_future`` has them. Then the first step compiles."""
    self.init_future = init_future
    if init_future is None and not resumed:
      for run in self.runs:
        findings = doctor.examine(doctor.Run(run.config, run.initial))
        report_findings(run.echo, 'doctor at init', findings)
        # After the first dispatch: the writer (tensorboardX) is made on first use.
        self.host_work.append(functools.partial(
            tensorboard_events.write_findings, run.writer, 'init', findings, step=0))
    self.bar.compiling()

  def _take_init_diagnostics(self):
    for run, measured in zip(self.runs, per_run(self.init_future.result(),
                                                self.vectorized)):
      run.take_init_diagnostics(measured)
    self.init_future = None

  def before_step(self, diagnose: bool):
    """Before a diagnostics step the init diagnostics are taken (its compiled
    variant is then ready), or as soon as they are done."""
    if self.init_future is not None and (diagnose or self.init_future.done()):
      self._take_init_diagnostics()

  def dispatched(self, metrics, count: int | None = None):
    """A step was dispatched (or ``count`` steps, whose metrics have a last axis of
    steps, ``train.make_train_steps``): its metrics wait for the next record; host
    work is done while the device runs it."""
    self.pending.append((metrics, count))
    self.in_flight.append(metrics)
    if len(self.in_flight) > MAX_IN_FLIGHT:  # See MAX_IN_FLIGHT.
      jax.block_until_ready(self.in_flight.pop(0))
    self.bar.advance(count or 1)
    while self.host_work:
      self.host_work.pop(0)()

  def collect(self, done: int):
    """Fetches the pending metrics into each active run's new record."""
    fetched = per_run(steps_of(jax.device_get(self.pending)), self.vectorized)
    now = time.time()
    examples_per_sec = (done - self.last_step) * self.config.batch_size / (
        now - self.last_time)
    self.new_records = {}
    for i, run in enumerate(self.runs):
      if not run.active:
        continue
      record, work = run.make_record(done, fetched[i], first_step=self.last_step + 1,
                                     examples_per_sec=examples_per_sec)
      self.host_work += work
      self.new_records[i] = record
    self.pending, self.last_time, self.last_step = [], now, done

  def add_evaluation(self, split: str, result: dict[str, Any]):
    """A held-out split's loss and accuracy (per run) into the active runs' records."""
    for i, run in enumerate(self.runs):
      if run.active:
        self.new_records[i].update({f'{split}_loss': item(result['loss'], i),
                                    f'{split}_accuracy': item(result['accuracy'], i)})

  def write_records(self):
    """Appends the new records to metrics.jsonl, TensorBoard and the progress."""
    for i, record in self.new_records.items():
      run = self.runs[i]
      run.records.append(record)
      rundir.append_jsonl(run.workdir / 'metrics.jsonl', record)
      self.host_work.append(functools.partial(tensorboard_events.write_record,
                                              run.writer, record))
      if self.vectorized:
        self.bar.echo(run.prefix + progress.format_record(record, self.config.steps))
      else:
        self.bar.record(record)
      if not run.active:
        run.echo(f'loss is not finite at step {run.diverged_at}: stopping (diverged)')
    self.new_records = {}

  def save_checkpoints(self, states: Sequence[Any], step: int):
    """Every run's checkpoint, TensorBoard on disk up to it first."""
    if self.init_future is not None:
      self._take_init_diagnostics()
    for work in self.host_work:
      work()
    self.host_work.clear()
    for run in self.runs:
      run.writer.flush()
    runtime.on_main_process(functools.partial(
        checkpoints.save_group, [run.workdir for run in self.runs], states,
        [run.checkpoint_host() for run in self.runs], step, keep=self.config.keep_checkpoints))

  def select_on_validation(self, done: int, states: Callable[[], list]) -> list[int]:
    """After an evaluation with a validation split (its records written): keeps
    each run's model as ``best`` when its validation loss is the lowest so far, and
    stops early the runs whose ``early_stopping_patience`` ran out. ``states()``:
    the per-run states (fetched only if needed). Returns the runs stopped now."""
    stopped, per = [], None
    for i, run in enumerate(self.runs):
      if not (run.active and run.records and run.records[-1]['step'] == done
              and 'validation_loss' in run.records[-1]):
        continue
      best = validation_progress(run.records)
      if best['best_step'] == done and run.config.keep_model:
        per = per if per is not None else states()
        run.save_model('best', per[i], meta={
            'best_step': done, 'best_validation_loss': best['best_validation_loss']})
      patience = run.config.early_stopping_patience
      if patience and best['evaluations_since_best'] >= patience and done < run.config.steps:
        run.stopped_at = done
        run.echo(f'validation loss not below {best["best_validation_loss"]:.4f} (step '
                 f'{best["best_step"]}) for {patience} evaluation'
                 f'{"s" if patience > 1 else ""}: stopping early at step {done}')
        stopped.append(i)
    return stopped

  def stop_runs(self, stopped: Sequence[int], *, train: dict[str, Any],
                states: Sequence[Any]):
    """The runs that stopped early now: their final evaluation (the training
    split's ``train``, the held-out splits' from their last record) and final model."""
    for i in stopped:
      run = self.runs[i]
      record = run.records[-1]
      run.final = {'train': {'loss': item(train['loss'], i),
                             'accuracy': item(train['accuracy'], i)}}
      for split in ('validation', 'test'):
        if f'{split}_loss' in record:
          run.final[split] = {'loss': record[f'{split}_loss'],
                              'accuracy': record[f'{split}_accuracy']}
      run.save_model('final', states[i], meta={'final_step': record['step']})
      run.final_state = jax.tree.map(jnp.copy, saved_model.model_arrays(states[i]))

  def save_final_models(self, states: Sequence[Any]):
    """The final model of every run that completed without stopping early."""
    for run, state in zip(self.runs, states):
      if run.status == 'completed' and run.final is None and run.records:
        run.save_model('final', state, meta={'final_step': run.records[-1]['step']})

  def end_loop(self) -> float:
    """Finishes what the loop left; returns the seconds the loop took."""
    if self.init_future is not None:
      self._take_init_diagnostics()
    for work in self.host_work:
      work()
    self.host_work.clear()
    self.bar.close()
    return time.time() - self.loop_start

  def announce_stop(self, signal_name: str, *, done: int, at: int):
    """Says once, as soon as the loop sees a stop asked for by ``signal_name`` with
    the steps up to ``done`` dispatched, where the runs stop: at the record step
    ``at`` (nothing to say when that is ``done``: the stop is now), or at their end."""
    if self.stop_announced:
      return
    self.stop_announced = True
    if at >= self.config.steps:
      left = self.config.steps - done
      self.bar.echo(f'{signal_name}: finishing the run' + (f', {left} steps from its end'
                                                           if left else '')
                    + f' (a second {signal_name} ends it at once)')
    elif at > done:
      self.bar.echo(f'{signal_name}: stopping at step {at}, the next record step, with a '
                    f'checkpoint (a second {signal_name} ends the run at once)')

  def interrupt(self, step: int, *, signal_name: str, start_step: int,
                start_time: float) -> list[dict[str, Any]]:
    """The runs stopped by ``signal_name`` at the record step ``step``, their
    checkpoint of it saved (:meth:`save_checkpoints`): each run's summary.json of
    status ``interrupted``, TensorBoard closed. Returns the summaries."""
    self.bar.close()
    summaries = []
    for run in self.runs:
      summary = {
          'status': 'interrupted',
          'interrupted_at_step': step,
          'signal': signal_name,
          'diverged_at_step': run.diverged_at,
          'early_stopped_at_step': run.stopped_at,
          **run.initial,
          'steps': run.records[-1]['step'] if run.records else 0,
          'wall_time_s': time.time() - start_time,
          'workdir': str(run.workdir),
      }
      if start_step:
        summary['resumed_from_step'] = start_step
      run.write_interrupted(summary)
      summaries.append(summary)
    return summaries

  def finish(self, final: dict[str, dict[str, Any]], *,
             classified: Sequence[dict[str, tuple]], facts: dict[str, Any],
             train_loop_s: float, start_step: int,
             start_time: float) -> list[dict[str, Any]]:
    """Each run's summary, outputs and cleanup; returns the summaries.

    summary.json first, then the checkpoints are removed (the run is finished), then
    what is optional: diagnostics.json, the figures, report.md, TensorBoard's end
    (:meth:`RunLog.write_outputs`: a full disk there is a warning, not lost results).

    Args:
      final: per split, the final ``evaluate`` (per run when vectorized).
      classified: per run, per held-out split, ``(images, labels, logits)`` of its
        final model (:meth:`RunLog.classify`); empty without classification figures.
      facts: what every summary holds (parameter counts, normalization, devices...).
      train_loop_s: the loop's seconds; start_step: where it started (resumed runs).
      start_time: when the group started.
    """
    summaries = []
    for i, run in enumerate(self.runs):
      confusions = run.classify(classified[i])
      run_steps = run.records[-1]['step'] if run.records else 0
      summary = {
          'status': run.status,
          'diverged_at_step': run.diverged_at,
          **run.initial,
          **facts,
          'steps': run_steps,
          # Of the group's training loop, for a vectorized run.
          'train_loop_s': train_loop_s,
          'examples_per_sec': ((run_steps - start_step) * self.config.batch_size
                               / train_loop_s),
          'vectorized_runs': len(self.runs),
          'environment': runtime.environment(),  # Versions, devices, git commit.
      }
      if run.lsuv:
        summary['lsuv'] = run.lsuv
      if start_step:
        summary['resumed_from_step'] = start_step
      best = validation_progress(run.records)
      if best is not None:
        summary.update(best)
        at_best = next(r for r in run.records if r['step'] == best['best_step'])
        summary.update({f'best_{k}': at_best[k] for k in ('test_loss', 'test_accuracy')
                        if k in at_best})
      summary['early_stopped_at_step'] = run.stopped_at
      if run.per_class_accuracy:
        summary['final_per_class_accuracy'] = run.per_class_accuracy
      if run.status == 'completed':
        for split, result in (run.final or final).items():
          summary[f'final_{split}_loss'] = item(result['loss'], i)
          summary[f'final_{split}_accuracy'] = item(result['accuracy'], i)
        run.echo(f'final: train loss {summary["final_train_loss"]:.4f} acc '
                 f'{summary["final_train_accuracy"]:.2%} | test loss '
                 f'{summary["final_test_loss"]:.4f} acc '
                 f'{summary["final_test_accuracy"]:.2%}')
      summary['workdir'] = str(run.workdir)
      run.write_summary(summary, start_time=start_time)
      checkpoints.remove(run.workdir)  # Finished (summary written): nothing to resume.
      run.write_outputs(summary, confusions=confusions)
      summaries.append(summary)
    return summaries


def validation_progress(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
  """Where the validation loss was lowest (the first such step) and how many
  evaluations came after it: ``{'best_step', 'best_validation_loss',
  'evaluations_since_best'}``; None without a validation evaluation. A function of
  the records alone, so that a resumed run takes it up from metrics.jsonl."""
  evaluated = [r for r in records if rundir.finite(r.get('validation_loss'))]
  if not evaluated:
    return None
  best = min(evaluated, key=lambda r: r['validation_loss'])  # The first of equals.
  return {'best_step': best['step'], 'best_validation_loss': best['validation_loss'],
          'evaluations_since_best': sum(r['step'] > best['step'] for r in evaluated)}


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


def steps_of(pending: list[tuple[dict[str, Any], int | None]]) -> list[dict[str, Any]]:
  """One metrics dict per step from ``dispatched``'s entries: a single step's as it
  is, a multi-step call's split along its last axis (its first ``count`` entries)."""
  steps = []
  for metrics, count in pending:
    if count is None:
      steps.append(metrics)
    else:
      steps += [{k: v[..., j] for k, v in metrics.items()} for j in range(count)]
  return steps


def per_run(tree, vectorized: bool) -> list:
  """Splits a pytree with a leading axis of runs into one pytree per run."""
  if not vectorized:
    return [tree]
  num_runs = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num_runs)]


def item(value, i: int) -> float:
  """Entry ``i`` of a per-run array, or the float of one run."""
  return float(value[i]) if np.ndim(value) else float(value)


def in_background(fn: Callable[[], Any]) -> concurrent.futures.Future:
  """Runs ``fn()`` in a new thread; ``.result()`` returns its value or raises its error."""
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  future = pool.submit(fn)
  pool.shutdown(wait=False)
  return future


def report_findings(echo: Callable[[str], Any], title: str,
                    findings: list[dict[str, Any]]):
  if not findings:
    echo(f'{title}: no findings')
    return
  echo(f'{title}: {len(findings)} finding{"s" if len(findings) > 1 else ""}')
  for f in findings:
    echo('  ' + doctor.format_finding(f).replace('\n', '\n  '))
