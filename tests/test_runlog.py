"""Validation-driven selection: the best step, early stopping, the kept models; the
results before the figures."""

import dataclasses
import errno
import json
import logging
import math

import numpy as np
import pytest

from fundamentals import data
from fundamentals import plots
from fundamentals import report
from fundamentals import runlog
from fundamentals import saved_model
from fundamentals import train
from fundamentals.config import Config
from conftest import SMALL
from test_train import Interrupted, interrupt_at

# Overfits the small dataset within a few evaluations (lr 0.5, 32 units), so that
# its validation loss turns up and patience 2 runs out well before the last step.
STOPPING = dict(dataset=SMALL, hidden=(32,), steps=120, lr=0.5, log_every=10,
                eval_every=10, diagnostics_every=0, checkpoint_every=0,
                validation_fraction=0.25, early_stopping_patience=2)


def test_validation_progress_finds_the_first_lowest_loss_and_counts_after_it():
  records = [{'step': 10, 'validation_loss': 2.0}, {'step': 15},
             {'step': 20, 'validation_loss': 1.5}, {'step': 30, 'validation_loss': 1.5},
             {'step': 40, 'validation_loss': math.nan},
             {'step': 50, 'validation_loss': 1.7}]
  assert runlog.validation_progress(records) == {
      'best_step': 20, 'best_validation_loss': 1.5, 'evaluations_since_best': 2}
  assert runlog.validation_progress([{'step': 5, 'test_loss': 1.0}]) is None


def _expected_stop(records, patience):
  """The step an early stop should end at, from the validation losses alone."""
  best, since = math.inf, 0
  for r in records:
    if 'validation_loss' not in r:
      continue
    if r['validation_loss'] < best:
      best, since = r['validation_loss'], 0
    else:
      since += 1
    if since >= patience:
      return r['step']
  return None


@pytest.fixture(scope='module')
def stopped(data_dir, tmp_path_factory):
  config = Config(**STOPPING, data_dir=data_dir,
                  workdir=str(tmp_path_factory.mktemp('stopped') / 'run'))
  return config, train.fit(config, echo=lambda line: None)


def test_a_run_stops_once_its_patience_runs_out_and_keeps_its_best_model(stopped):
  config, fit = stopped
  records = [json.loads(line) for line in
             open(f'{config.workdir}/metrics.jsonl', encoding='utf-8')]
  stop = _expected_stop(records, config.early_stopping_patience)
  assert stop is not None and stop < config.steps
  summary = fit.summary
  assert summary['status'] == 'completed'
  assert summary['early_stopped_at_step'] == stop == records[-1]['step']
  evaluated = [r for r in records if 'validation_loss' in r]
  best = min(evaluated, key=lambda r: r['validation_loss'])
  assert summary['best_step'] == best['step']
  assert summary['best_validation_loss'] == best['validation_loss']
  assert summary['best_test_loss'] == best['test_loss']
  # The final figures are of the state it stopped at (its last record).
  assert summary['final_test_loss'] == records[-1]['test_loss']
  assert summary['final_validation_loss'] == records[-1]['validation_loss']
  meta = saved_model.read_meta(config.workdir)
  assert meta['best_step'] == best['step'] and meta['final_step'] == stop
  assert Config.from_dict(meta['config']) == config


@pytest.mark.parametrize('kind', ['best', 'final'])
def test_the_kept_models_reproduce_the_recorded_held_out_losses(stopped, kind):
  config, fit = stopped
  loaded = saved_model.load(config.workdir, kind)
  dataset = data.load_configured(config)
  # The recorded evaluation is in float32 sums; the reloaded one in float64.
  logits = saved_model.logits(loaded, dataset.test_images)
  recorded = fit.summary[f'{kind}_test_loss']
  assert saved_model.cross_entropy(logits, dataset.test_labels) == pytest.approx(
      recorded, rel=1e-5)
  # It normalizes with the statistics of the run's training split (75% of the
  # data here), whichever data it is given later.
  whole = data.load(SMALL, data_dir=config.data_dir)
  assert np.allclose(loaded.meta['normalization']['mean'], dataset.mean)
  assert not np.allclose(loaded.meta['normalization']['mean'], whole.mean)
  assert loaded.class_names == dataset.class_names
  accuracy = np.mean(np.argmax(logits, -1) == dataset.test_labels)
  assert accuracy == pytest.approx(fit.summary[f'{kind}_test_accuracy'])


def test_the_summary_keeps_per_class_accuracy_and_the_classification_figures(stopped):
  config, fit = stopped
  per_class = fit.summary['final_per_class_accuracy']['test']
  dataset = data.load_configured(config)
  logits = saved_model.logits(saved_model.load(config.workdir, 'final'),
                              dataset.test_images)
  predicted = np.argmax(logits, -1)
  for label, name in enumerate(dataset.class_names):
    mine = dataset.test_labels == label
    assert per_class[name] == pytest.approx(np.mean(predicted[mine] == label))
  for split in ('test', 'validation'):
    for figure in ('confusion', 'misclassified'):
      assert (saved_model.directory(config.workdir).parent
              / f'{figure}_{split}.png').stat().st_size > 1000


def _group(config, root, **overrides):
  """The overfitting run and a slow one (lr 0.01) that does not stop, as a group."""
  return [dataclasses.replace(config, workdir=str(root / 'fast'), **overrides),
          dataclasses.replace(config, lr=0.01, workdir=str(root / 'slow'), **overrides)]


@pytest.fixture(scope='module')
def group(stopped, tmp_path_factory):
  config, _ = stopped
  configs = _group(config, tmp_path_factory.mktemp('group'))
  return configs, train.fit_group(configs, echo=lambda line: None)


def test_vectorized_runs_stop_each_on_its_own(stopped, group):
  """A vectorized group: the run that overfits stops alone, as it does alone; the
  other trains on."""
  config, fit = stopped
  (fast, slow), fits = group
  assert fits[0].summary['early_stopped_at_step'] == fit.summary['early_stopped_at_step']
  assert fits[0].summary['best_step'] == fit.summary['best_step']
  assert fits[0].summary['final_test_loss'] == pytest.approx(
      fit.summary['final_test_loss'], rel=1e-4)
  records = [json.loads(line) for line in open(f'{slow.workdir}/metrics.jsonl',
                                               encoding='utf-8')]
  assert fits[1].summary['early_stopped_at_step'] is None
  assert records[-1]['step'] == slow.steps
  assert saved_model.read_meta(slow.workdir)['final_step'] == slow.steps
  # The early-stopped run's final model is of its stop, not of the group's end.
  loaded = saved_model.load(fast.workdir, 'final')
  dataset = data.load_configured(fast)
  assert saved_model.cross_entropy(saved_model.logits(loaded, dataset.test_images),
                                   dataset.test_labels) == pytest.approx(
                                       fits[0].summary['final_test_loss'], rel=1e-5)


def test_a_group_resumed_after_a_member_stopped_keeps_that_member_s_stop(
    stopped, group, tmp_path):
  """Checkpointed after one member stopped, killed, resumed: the stopped member's
  final figures are still those of its stop (its model/final), every number equal."""
  config, fit = stopped
  stop = fit.summary['early_stopped_at_step']
  assert stop + 20 < config.steps  # A checkpoint after the stop, a kill after that.
  configs = _group(config, tmp_path, checkpoint_every=stop + 10)
  with pytest.raises(Interrupted):
    train.fit_group(configs, echo=interrupt_at(stop + 20))
  resumed = train.fit_group(configs, resume=True, echo=lambda line: None)
  for whole, again in zip(group[1], resumed):
    for key in ('early_stopped_at_step', 'best_step', 'final_test_loss',
                'final_train_loss', 'final_per_class_accuracy'):
      assert again.summary[key] == whole.summary[key], key


def test_early_stopping_needs_a_validation_split_and_writes_nothing(data_dir, tmp_path):
  config = Config(**{**STOPPING, 'validation_fraction': 0.0}, data_dir=data_dir,
                  workdir=str(tmp_path / 'run'))
  with pytest.raises(ValueError, match='needs a validation split.*--validation_fraction'):
    train.fit(config, echo=lambda line: None)
  assert not (tmp_path / 'run').exists()


def test_keep_model_false_keeps_none(data_dir, tmp_path):
  config = Config(**{**STOPPING, 'steps': 10, 'early_stopping_patience': 0},
                  keep_model=False, data_dir=data_dir, workdir=str(tmp_path / 'run'))
  train.fit(config, echo=lambda line: None)
  assert not saved_model.directory(config.workdir).exists()
  with pytest.raises(FileNotFoundError, match='holds no kept model'):
    saved_model.load(config.workdir)


def test_a_full_disk_at_the_end_keeps_the_results_and_warns_of_the_figures(
    small_dataset, tmp_path, monkeypatch, caplog):
  workdir = tmp_path / 'run'
  at_figures = []

  def disk_full(path):
    def write(*args, **kwargs):
      at_figures.append(json.loads((workdir / 'summary.json').read_text()))  # Before.
      raise OSError(errno.ENOSPC, 'No space left on device', str(workdir / path))
    return write

  monkeypatch.setattr(plots, 'save_figures', disk_full('loss.png'))
  monkeypatch.setattr(report, 'write', disk_full('report.md'))
  config = Config(dataset=SMALL, hidden=(8,), steps=10, log_every=5, eval_every=10,
                  diagnostics_every=0, checkpoint_every=5, keep_model=False,
                  classification_figures=False, workdir=str(workdir))
  with caplog.at_level(logging.WARNING):
    summary = train.train(config, dataset=small_dataset, echo=lambda line: None)
  assert summary['status'] == 'completed' and math.isfinite(summary['final_test_loss'])
  assert len(at_figures) == 2 and at_figures[0] == json.loads(json.dumps(summary))
  assert json.loads((workdir / 'summary.json').read_text()) == at_figures[0]
  assert not (workdir / 'loss.png').exists() and not (workdir / 'report.md').exists()
  assert not (workdir / 'checkpoint').exists()  # Finished: nothing to resume.
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('the figures and diagnostics.json not written ([Errno 28] No space left on '
             f"device: '{workdir / 'loss.png'}')" in m for m in warned), warned
  assert any('report.md not written' in m and 'summary.json holds the results' in m
             for m in warned), warned
