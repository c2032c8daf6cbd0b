import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundamentals import doctor
from fundamentals import models
from fundamentals import optimizers
from fundamentals import plots
from fundamentals import rundir
from fundamentals import runlog
from fundamentals import runtime
from fundamentals import train
from fundamentals.config import Config

# Diagnostics off unless a test is about them: their compiled step variant and figures
# cost seconds per run on a 2-core CPU.
TINY = dict(dataset='synthetic_fruits/small', hidden=(32,), batch_size=50, steps=40,
            log_every=10, eval_every=20, lr=0.2, diagnostics_every=0)


def run(tmp_path, name, small_dataset, echo=lambda line: None, **overrides):
  config = Config(workdir=str(tmp_path / name), **{**TINY, **overrides})
  return train.train(config, dataset=small_dataset, echo=echo)


def test_run_writes_its_files_and_the_loss_decreases(tmp_path, small_dataset):
  summary = run(tmp_path, 'a', small_dataset)
  workdir = tmp_path / 'a'
  config = Config.from_json((workdir / 'config.json').read_text())
  assert config.hidden == (32,) and config.workdir == str(workdir)
  records = rundir.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in records] == [10, 20, 30, 40]
  assert records[-1]['train_loss'] < 0.7 * records[0]['train_loss']
  assert 'test_accuracy' in records[1] and 'test_accuracy' not in records[0]
  assert json.loads((workdir / 'summary.json').read_text()) == json.loads(
      json.dumps(summary))
  assert all('diagnostics' not in r for r in records)  # diagnostics_every=0
  assert not (workdir / 'diagnostics.json').exists()
  assert {p.name for p in workdir.glob('*.png')} == {'loss.png', 'confusion_test.png',
                                                     'misclassified_test.png'}
  assert '![Loss and accuracy](loss.png)' in (workdir / 'report.md').read_text()
  assert summary['status'] == 'completed' and summary['steps'] == 40
  assert summary['final_train_accuracy'] > 3 / 30  # well above chance (1/30)
  assert summary['expected_initial_loss'] == pytest.approx(math.log(30))


def test_small_output_scale_starts_at_ln_n_and_large_one_far_above(tmp_path, small_dataset):
  fixed = run(tmp_path, 'fixed', small_dataset, steps=1, output_scale=0.01)
  assert fixed['initial_loss'] == pytest.approx(math.log(30), abs=0.02)
  naive = run(tmp_path, 'naive', small_dataset, steps=1, init='normal', batchnorm=False,
              output_scale=1.0, activation='tanh')
  assert naive['initial_loss'] > 3 * math.log(30)


def test_same_seed_gives_the_same_numbers(tmp_path, small_dataset):
  a = run(tmp_path, 'a', small_dataset, seed=3)
  b = run(tmp_path, 'b', small_dataset, seed=3)
  c = run(tmp_path, 'c', small_dataset, seed=4)
  def numbers(name):  # everything but the wall-clock throughput
    return [{k: v for k, v in r.items() if k != 'examples_per_sec'}
            for r in rundir.read_jsonl(tmp_path / name / 'metrics.jsonl')]
  assert numbers('a') == numbers('b')
  assert numbers('a') != numbers('c')
  assert a['final_test_loss'] == b['final_test_loss']
  assert a['final_test_loss'] != c['final_test_loss']


def test_divergence_stops_cleanly_and_is_recorded(tmp_path, small_dataset):
  summary = run(tmp_path, 'd', small_dataset, lr=1e6, batchnorm=False, init='normal',
                momentum=0.0, schedule='constant', diagnostics_every=5)
  assert summary['status'] == 'diverged'
  records = rundir.read_jsonl(tmp_path / 'd' / 'metrics.jsonl')
  # Stopped at the first record after the first non-finite step, which it names.
  assert records[-1]['step'] - 5 < summary['diverged_at_step'] <= records[-1]['step']
  assert records[-1]['train_loss'] == 'nan' and summary['steps'] == records[-1]['step']
  assert 'final_test_loss' not in summary
  saved = json.loads((tmp_path / 'd' / 'summary.json').read_text())
  assert saved['status'] == 'diverged'
  assert saved['findings'][0]['rule'] == 'divergence'
  assert saved['findings'][0]['severity'] == 'error'
  assert (tmp_path / 'd' / 'report.md').exists() and (tmp_path / 'd' / 'loss.png').exists()


def test_existing_run_is_never_overwritten_without_consent(tmp_path, small_dataset):
  run(tmp_path, 'a', small_dataset, steps=10)
  before = (tmp_path / 'a' / 'metrics.jsonl').read_text()
  with pytest.raises(FileExistsError, match='--overwrite'):
    run(tmp_path, 'a', small_dataset, steps=10)
  assert (tmp_path / 'a' / 'metrics.jsonl').read_text() == before


def test_batch_larger_than_the_training_set_is_rejected(tmp_path, small_dataset):
  with pytest.raises(ValueError, match='batch_size=1000'):
    run(tmp_path, 'big', small_dataset, batch_size=1000)


@pytest.mark.parametrize('overrides, match', [
    (dict(lr=-0.1), 'lr=-0.1'),
    (dict(lr=float('nan')), 'lr=nan'),
    (dict(hidden=()), 'hidden'),
    (dict(steps=0), 'steps=0'),
    (dict(momentum=1.0), 'momentum=1.0'),
    (dict(schedule='linear'), "'cosine'"),
    (dict(init='kaimin'), 'kaiming'),
    (dict(warmup_steps=50), 'warmup_steps=50'),
])
def test_config_rejects_bad_values_with_the_offending_value(overrides, match):
  with pytest.raises(ValueError, match=match):
    Config(**{**TINY, **overrides})


def test_config_round_trips_through_json():
  config = Config(hidden=(8, 4), init='xavier', seed=7)
  assert Config.from_json(config.to_json()) == config
  with pytest.raises(ValueError, match='hiden'):
    Config.from_dict({'hiden': [3]})


def test_diagnostics_run_writes_every_output(tmp_path, small_dataset):
  lines = []
  summary = run(tmp_path, 'diag', small_dataset, echo=lines.append, hidden=(32, 16),
                diagnostics_every=20)
  workdir = tmp_path / 'diag'
  records = rundir.read_jsonl(workdir / 'metrics.jsonl')
  # Measuring does not change the training: the same numbers as without diagnostics.
  plain = run(tmp_path, 'plain', small_dataset, hidden=(32, 16))
  assert [r['train_loss'] for r in records] == [
      r['train_loss'] for r in rundir.read_jsonl(tmp_path / 'plain' / 'metrics.jsonl')]
  assert summary['final_test_loss'] == plain['final_test_loss']
  assert [r['step'] for r in records] == [10, 20, 30, 40]
  assert ['diagnostics' in r for r in records] == [False, True, False, True]
  measured = records[1]['diagnostics']
  assert len(measured['layers']) == 2
  assert set(measured['layers'][0]) == {'activation_mean', 'activation_std',
                                        'preactivation_mean', 'preactivation_std',
                                        'activation_grad_std', 'dead_fraction'}
  assert set(measured['params']) == {'dense/0/kernel', 'dense/1/kernel', 'output/kernel'}
  for stats in measured['params'].values():
    assert set(stats) == {'weight_std', 'grad_std', 'grad_to_data', 'update_to_data'}
    assert -6 < stats['update_to_data'] < 0
  assert measured['grad_norm'] > 0 and measured['param_norm'] > 0

  saved = json.loads((workdir / 'diagnostics.json').read_text())
  assert (saved['init']['step'], saved['end']['step']) == (1, 40)
  assert saved['end']['scalars'] == records[-1]['diagnostics']
  histograms = saved['init']['histograms']
  assert set(histograms) == {'activation', 'activation_grad', 'weight', 'weight_grad'}
  assert set(histograms['activation']) == {'layer0', 'layer1'}
  assert sum(histograms['activation']['layer0']['counts']) == 50 * 32  # the whole batch

  figures = {'loss.png', 'activation_histograms.png', 'gradient_histograms.png',
             'colorful_dimension.png', 'update_to_data.png', 'dead_fraction.png',
             'confusion_test.png', 'misclassified_test.png'}
  assert {p.name for p in workdir.glob('*.png')} == figures <= set(plots.FIGURES)
  report = (workdir / 'report.md').read_text()
  for name in figures:
    assert f']({name})' in report
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1

  assert isinstance(summary['findings'], list)
  assert doctor.examine_workdir(workdir) == json.loads(json.dumps(summary['findings']))
  assert any(line.startswith('doctor at init:') for line in lines)
  assert any(line.startswith('doctor:') for line in lines)


def test_the_doctor_sees_a_saturated_tanh_network_and_passes_a_bn_relu_one(
    tmp_path, small_dataset):
  lines = []
  naive = run(tmp_path, 'naive', small_dataset, echo=lines.append, hidden=(32, 16),
              init='normal', activation='tanh', batchnorm=False, steps=10,
              diagnostics_every=10)
  assert 'saturation' in {f['rule'] for f in naive['findings']}
  [init_line] = [line for line in lines if line.startswith('doctor at init')]
  init_findings = lines[lines.index(init_line) + 1:]
  assert any('saturation' in line for line in init_findings)
  healthy = run(tmp_path, 'healthy', small_dataset, hidden=(32, 16), steps=10,
                diagnostics_every=10)
  assert not {'saturation', 'dead_units', 'gradient_flow', 'initial_loss'} & {
      f['rule'] for f in healthy['findings']}


def test_first_non_finite_step():
  nan, inf = float('nan'), float('inf')
  assert runlog.first_non_finite_step(np.array([1.0, 2.0]), first_step=11) is None
  assert runlog.first_non_finite_step(np.array([1.0, inf, nan]), first_step=11) == 12
  norms = {'grad_norm': nan, 'param_norm': 1.0}
  assert runlog.first_non_finite_step(np.array([1.0, 2.0]), first_step=11,
                                     scalars=norms) == 12


def test_evaluate_is_independent_of_the_padded_batch_size(small_dataset):
  config = Config(**{**TINY, 'hidden': (8,)})
  model = models.create_model(config, num_features=small_dataset.num_features,
                              num_classes=small_dataset.num_classes, key=jax.random.key(0))
  tx, _ = optimizers.create(config)
  graphs, state = train.split_model(model, tx)
  eval_step = train.make_eval_step(graphs)
  args = (small_dataset.test_images, small_dataset.test_labels, small_dataset.mean,
          small_dataset.std)
  whole = train.evaluate(eval_step, state, *args, batch_size=300)
  padded = train.evaluate(eval_step, state, *args, batch_size=7)  # 43 batches, last 6 real
  assert padded['loss'] == pytest.approx(whole['loss'], rel=1e-5)
  assert padded['accuracy'] == pytest.approx(whole['accuracy'])


def test_runs_differing_only_in_per_run_values_share_one_compilation(tmp_path,
                                                                     small_dataset):
  first = Config(workdir=str(tmp_path / 'a'), **{**TINY, 'steps': 4, 'hidden': (24,)})
  # Every PER_RUN field changed; momentum stays nonzero (zero is another structure).
  second = Config(workdir=str(tmp_path / 'b'), **{
      **TINY, 'steps': 4, 'hidden': (24,), 'lr': 0.07, 'seed': 5, 'init': 'xavier',
      'output_init': 'lecun', 'output_scale': 0.5, 'momentum': 0.5, 'data_seed': 3})
  assert set(train.PER_RUN) == {'seed', 'init', 'init_gain', 'bias_std', 'output_init',
                                'output_scale', 'lr', 'momentum', 'data_seed',
                                'weight_decay', 'grad_clip_norm', 'adam_b1', 'adam_b2',
                                'adam_eps'}
  assert train.canonical_config(first) == train.canonical_config(second)
  with runtime.compile_log() as compiles:
    summaries = [train.fit(first, dataset=small_dataset, echo=lambda line: None)]
  assert 'jit(train_steps)' in [name for name, _ in compiles]
  with runtime.compile_log() as compiles:
    summaries.append(train.fit(second, dataset=small_dataset, echo=lambda line: None))
  assert not [name for name, _ in compiles if 'train_step' in name or 'eval_step' in name]
  hits = train.compiled_steps.cache_info().hits
  assert train.compiled_steps(summaries[0].graphs, train.canonical_config(first),
                              mesh=None, vectorized=False, shared_order=False) is (
      train.compiled_steps(summaries[1].graphs, train.canonical_config(second),
                           mesh=None, vectorized=False, shared_order=False))
  assert train.compiled_steps.cache_info().hits == hits + 2  # fit's own entry, twice.
  # The values really are the second run's, not the first's baked in.
  assert float(summaries[1].state.opt_state.hyperparams['learning_rate']) == (
      pytest.approx(0.07))
  assert summaries[0].summary['final_train_loss'] != summaries[1].summary['final_train_loss']
  third = dataclasses.replace(first, workdir=str(tmp_path / 'c'), momentum=0.0)
  assert train.canonical_config(third) != train.canonical_config(first)


def test_vectorized_runs_match_the_same_runs_alone(tmp_path, small_dataset):
  base = dict(TINY, steps=12, log_every=4, eval_every=12, diagnostics_every=6,
              hidden=(16,))
  variants = [dict(seed=0), dict(seed=1, lr=0.05, init='xavier'),
              dict(seed=2, output_scale=1.0), dict(seed=3, lr=1e6, init='normal')]
  together = train.fit_group(
      [Config(workdir=str(tmp_path / f'v{i}'), **{**base, **v})
       for i, v in enumerate(variants)], dataset=small_dataset, echo=lambda line: None)
  for i, variant in enumerate(variants):
    alone = train.fit(Config(workdir=str(tmp_path / f'a{i}'), **{**base, **variant}),
                      dataset=small_dataset, echo=lambda line: None).summary
    vectorized = together[i].summary
    assert vectorized['vectorized_runs'] == 4 and alone['vectorized_runs'] == 1
    assert vectorized['status'] == alone['status']
    assert vectorized['diverged_at_step'] == alone['diverged_at_step']
    assert vectorized['initial_loss'] == alone['initial_loss']
    records = [rundir.read_jsonl(tmp_path / f'{kind}{i}' / 'metrics.jsonl')
               for kind in ('v', 'a')]
    assert [r['step'] for r in records[0]] == [r['step'] for r in records[1]]
    for key in ('train_loss', 'train_accuracy', 'lr'):
      np.testing.assert_allclose([float(r[key]) for r in records[0]],  # 'nan' → nan
                                 [float(r[key]) for r in records[1]], rtol=2e-5, atol=1e-6)
    if alone['status'] == 'completed':
      for key in ('final_train_loss', 'final_test_loss', 'final_test_accuracy'):
        assert vectorized[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6)
      vectorized_diagnostics = json.loads(
          (tmp_path / f'v{i}' / 'diagnostics.json').read_text())
      alone_diagnostics = json.loads((tmp_path / f'a{i}' / 'diagnostics.json').read_text())
      for phase in ('init', 'end'):
        np.testing.assert_allclose(
            vectorized_diagnostics[phase]['scalars']['grad_norm'],
            alone_diagnostics[phase]['scalars']['grad_norm'], rtol=1e-4)
  assert [f.summary['status'] for f in together] == ['completed'] * 3 + ['diverged']


def test_runs_of_different_structures_are_not_trained_together(tmp_path, small_dataset):
  configs = [Config(workdir=str(tmp_path / 'a'), **TINY),
             Config(workdir=str(tmp_path / 'b'), **{**TINY, 'activation': 'tanh'})]
  with pytest.raises(ValueError, match=r"differs in \['activation'\]"):
    train.fit_group(configs, dataset=small_dataset)
  assert not (tmp_path / 'a').exists()
  same_dir = [Config(workdir=str(tmp_path / 'a'), seed=seed, **TINY) for seed in (0, 1)]
  with pytest.raises(ValueError, match='need a workdir each, all different'):
    train.fit_group(same_dir, dataset=small_dataset)
  assert not (tmp_path / 'a').exists()


def test_vectorized_runs_augment_each_with_its_own_key(tmp_path, small_dataset):
  base = dict(TINY, steps=6, log_every=3, eval_every=6, hidden=(8,), augment=('flip', 'crop'))
  configs = [Config(workdir=str(tmp_path / f'v{seed}'), seed=seed, **base) for seed in (0, 1)]
  together = train.fit_group(configs, dataset=small_dataset, echo=lambda line: None)
  for seed, fit in zip((0, 1), together):
    alone = train.fit(Config(workdir=str(tmp_path / f'a{seed}'), seed=seed, **base),
                      dataset=small_dataset, echo=lambda line: None)
    np.testing.assert_allclose(
        [r['train_loss'] for r in rundir.read_jsonl(tmp_path / f'v{seed}' / 'metrics.jsonl')],
        [r['train_loss'] for r in rundir.read_jsonl(tmp_path / f'a{seed}' / 'metrics.jsonl')],
        rtol=2e-5)
    assert fit.summary['final_test_loss'] == pytest.approx(alone.summary['final_test_loss'],
                                                           rel=1e-4)
    assert (tmp_path / f'v{seed}' / 'augment_preview.png').exists()
  assert together[0].summary['final_train_loss'] != together[1].summary['final_train_loss']


def test_lsuv_init_gives_unit_variance_layers_and_trains(tmp_path, small_dataset):
  summary = run(tmp_path, 'lsuv', small_dataset, init='lsuv', activation='tanh',
                batchnorm=False, hidden=(32, 16), steps=20)
  assert [layer['variance'] for layer in summary['lsuv']] == [
      pytest.approx(1.0, abs=0.1)] * 2
  assert summary['status'] == 'completed'
  assert summary['final_train_loss'] < summary['initial_loss']
  # The kernels training started from: orthogonal rescaled, so not orthogonal's own.
  model = models.create_model(Config(**{**TINY, 'init': 'lsuv', 'activation': 'tanh',
                                        'batchnorm': False, 'hidden': (32, 16)}),
                              num_features=small_dataset.num_features,
                              num_classes=small_dataset.num_classes,
                              key=jax.random.split(jax.random.key(0), 3)[0])
  before = np.asarray(model.dense[0].kernel[...]).std()
  train.apply_data_dependent_init(Config(init='lsuv'), model, small_dataset)
  assert np.asarray(model.dense[0].kernel[...]).std() != pytest.approx(before, rel=1e-3)
  assert train.apply_data_dependent_init(Config(), model, small_dataset) is None


class Interrupted(Exception):
  """Stands in for kill -9: the run stops between two lines of its output."""


def interrupt_at(step: int):
  def echo(line):
    words = line.split(']')[-1].split()  # Without a vectorized run's '[name]'.
    if words[:1] == ['step'] and words[1].startswith(f'{step}/'):
      raise Interrupted
  return echo


def stopped_run(config: Config, dataset, *, at: int) -> Config:
  """``config``'s run stopped at step ``at`` as by kill -9 (:func:`interrupt_at`), its
  checkpoints left for ``--resume``; returns ``config``."""
  with pytest.raises(Interrupted):
    train.fit(config, dataset=dataset, echo=interrupt_at(at))
  return config


def copy_of(config: Config, where: pathlib.Path) -> Config:
  """A copy of ``config``'s run directory at ``where``, and its config there."""
  shutil.copytree(config.workdir, where)
  return dataclasses.replace(config, workdir=str(where))


@pytest.mark.parametrize('num_runs', [1, 3])
def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_numbers(
    tmp_path, small_dataset, num_runs):
  base = dict(TINY, steps=20, log_every=5, eval_every=10, diagnostics_every=10,
              checkpoint_every=10, hidden=(16,), augment=('flip',))
  def configs(name):  # A group has a member that diverges before the checkpoint.
    return [Config(workdir=str(tmp_path / f'{name}{seed}'), seed=seed,
                   **{**base, 'lr': 1e6 if seed == 2 else base['lr']})
            for seed in range(num_runs)]
  whole = train.fit_group(configs('whole'), dataset=small_dataset, echo=lambda line: None)
  with pytest.raises(Interrupted):
    train.fit_group(configs('cut'), dataset=small_dataset, echo=interrupt_at(15))
  cut = tmp_path / 'cut0'
  assert [r['step'] for r in rundir.read_jsonl(cut / 'metrics.jsonl')] == [5, 10, 15]
  assert (cut / 'checkpoint' / '10').is_dir() and not (cut / 'summary.json').exists()
  with pytest.raises(FileExistsError, match='already holds a run'):  # Not without consent.
    train.fit_group(configs('cut'), dataset=small_dataset, echo=lambda line: None)
  lines = []
  resumed = train.fit_group(configs('cut'), dataset=small_dataset, resume=True,
                            echo=lines.append)
  assert any('resumed from the checkpoint at step 10' in line for line in lines)
  assert [f.summary['status'] for f in resumed] == (
      ['completed'] if num_runs == 1 else ['completed', 'completed', 'diverged'])
  for seed, (a, b) in enumerate(zip(whole, resumed)):
    assert b.summary['resumed_from_step'] == 10
    assert a.summary['diverged_at_step'] == b.summary['diverged_at_step']
    for key in ('initial_loss', 'final_train_loss', 'final_test_loss', 'final_test_accuracy'):
      assert a.summary.get(key) == b.summary.get(key)
    records = [rundir.read_jsonl(tmp_path / f'{name}{seed}' / 'metrics.jsonl')
               for name in ('whole', 'cut')]
    assert [r['step'] for r in records[1]] == [r['step'] for r in records[0]] == (
        [5] if a.summary['status'] == 'diverged' else [5, 10, 15, 20])
    for key in ('train_loss', 'train_accuracy', 'lr', 'test_loss'):
      assert [r.get(key) for r in records[0]] == [r.get(key) for r in records[1]]
    diagnosed = [json.loads((tmp_path / f'{name}{seed}' / 'diagnostics.json').read_text())
                 for name in ('whole', 'cut')]
    assert diagnosed[0]['init'] == diagnosed[1]['init']  # Kept in the checkpoint.
    if a.summary['status'] == 'completed':
      assert diagnosed[0]['end']['scalars'] == diagnosed[1]['end']['scalars']
    assert not (tmp_path / f'cut{seed}' / 'checkpoint').exists()  # Finished: removed.


def test_resume_says_why_a_run_cannot_go_on(tmp_path, small_dataset):
  config = Config(workdir=str(tmp_path / 'a'), checkpoint_every=0, **TINY)
  with pytest.raises(Interrupted):
    train.fit(config, dataset=small_dataset, echo=interrupt_at(20))
  with pytest.raises(FileExistsError, match='that run saved no checkpoint'):
    train.fit(config, dataset=small_dataset, resume=True)
  with pytest.raises(FileExistsError, match=r'that run had other settings \(lr\)'):
    train.fit(dataclasses.replace(config, lr=0.3), dataset=small_dataset, resume=True)
  # --overwrite starts afresh; a finished run cannot be resumed.
  train.fit(config, dataset=small_dataset, resume=True, overwrite=True,
            echo=lambda line: None)
  with pytest.raises(FileExistsError, match='that run finished'):
    train.fit(config, dataset=small_dataset, resume=True)


def test_checkpoints_change_no_record(tmp_path, small_dataset):
  """log_every does not divide checkpoint_every: the checkpoint waits for a record step."""
  base = dict(TINY, steps=20, log_every=6, eval_every=20, hidden=(8,))
  for every in (0, 10):
    run(tmp_path, f'every{every}', small_dataset, **base, checkpoint_every=every)
  records = [rundir.read_jsonl(tmp_path / f'every{every}' / 'metrics.jsonl') for every in (0, 10)]
  assert [r['step'] for r in records[1]] == [6, 12, 18, 20]
  assert [r['train_loss'] for r in records[0]] == [r['train_loss'] for r in records[1]]
  with pytest.raises(Interrupted):  # Saved at step 12, the first record step after 10.
    run(tmp_path, 'cut', small_dataset, **base, checkpoint_every=10, echo=interrupt_at(18))
  assert sorted(train.checkpoints.available(tmp_path / 'cut')) == [12]


def _one_structure(small_dataset, **overrides):
  config = Config(**{**TINY, 'hidden': (16,), **overrides})
  start = train.initial_state(config, small_dataset)
  steps = train.compiled_steps(start.graphs, train.canonical_config(config))
  arrays = [jax.device_put(a) for a in (small_dataset.train_images,
                                        small_dataset.train_labels,
                                        np.asarray(small_dataset.mean),
                                        np.asarray(small_dataset.std))]
  perm = train.epoch_permutation(start.shuffle_key, 0, len(small_dataset.train_labels))
  return start, steps, arrays, perm


def test_several_steps_per_call_are_the_one_step_calls_bit_for_bit(small_dataset):
  start, steps, (images, labels, mean, std), perm = _one_structure(small_dataset)
  one = jax.tree.map(jnp.copy, start.state)
  losses = []
  for position in range(2, 7):
    one, metrics = steps.train(one, images, labels, perm, position, mean, std)
    losses.append(float(metrics['loss']))
  many, metrics = steps.train_steps(jax.tree.map(jnp.copy, start.state), images, labels,
                                    perm, 2, 5, mean, std, length=8)
  assert np.asarray(metrics['loss']).tolist() == losses + [0.0] * 3
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
    np.testing.assert_array_equal(a, b)


def test_windows_end_at_records_and_epochs_and_cover_every_step():
  config = Config(**{**TINY, 'steps': 45, 'log_every': 10, 'diagnostics_every': 15})
  epochs = []
  got = list(train.windows(lambda e: epochs.append(e) or e, config, steps_per_epoch=12,
                           start=0, first_alone=True))
  ends = [w[0] for w in got]
  assert ends == [1, 10, 12, 15, 20, 24, 30, 36, 40, 45]
  assert sum(w[3] for w in got) == 45 and epochs == [0, 1, 2, 3]
  for done, epoch, position, count, diagnose in got:
    assert 0 < count <= train.chunk_length(config, 12) or done == 1
    assert (done - count) // 12 == epoch and position == (done - count) % 12
    assert diagnose == train.is_diagnostics_step(done, config)
  resumed = list(train.windows(lambda e: e, config, steps_per_epoch=12, start=20))
  assert [w[0] for w in resumed] == [24, 30, 36, 40, 45]


def test_the_steady_state_loop_allows_no_implicit_transfer(small_dataset):
  start, steps, (images, labels, mean, std), perm = _one_structure(small_dataset)
  state = jax.tree.map(jnp.copy, start.state)
  with jax.transfer_guard('disallow'):
    with pytest.raises(Exception, match='Disallowed host-to-device transfer'):
      steps.train_steps(state, images, labels, perm, 0, 3, mean, std, length=4)
    state, metrics = steps.train_steps(state, images, labels, perm, jax.device_put(np.int32(0)),
                                       jax.device_put(np.int32(3)), mean, std, length=4)
  assert np.isfinite(jax.device_get(metrics['loss'])).all()
  # train.fit dispatches under this guard: every run of these tests passes through it.


def test_runs_sharing_a_data_order_train_on_one_batch_and_match_alone(
    tmp_path, small_dataset, monkeypatch):
  base = dict(TINY, steps=12, log_every=4, eval_every=12, hidden=(16,), data_seed=7)
  asked = []
  compiled = train.compiled_steps
  monkeypatch.setattr(train, 'compiled_steps',
                      lambda *a, **k: asked.append(k) or compiled(*a, **k))
  together = train.fit_group([Config(workdir=str(tmp_path / f'v{s}'), seed=s, **base)
                              for s in (0, 1, 2)], dataset=small_dataset,
                             echo=lambda line: None)
  assert asked[-1]['shared_order'] and asked[-1]['vectorized']
  for s in (0, 1, 2):
    alone = train.fit(Config(workdir=str(tmp_path / f'a{s}'), seed=s, **base),
                      dataset=small_dataset, echo=lambda line: None).summary
    records = [rundir.read_jsonl(tmp_path / f'{kind}{s}' / 'metrics.jsonl')
               for kind in ('v', 'a')]
    np.testing.assert_allclose([r['train_loss'] for r in records[0]],
                               [r['train_loss'] for r in records[1]], rtol=2e-5)
    assert together[s].summary['final_test_loss'] == pytest.approx(
        alone['final_test_loss'], rel=1e-4)
  # data_seed only moves the order: a run with data_seed = seed is the default run.
  same = run(tmp_path, 'same', small_dataset, seed=3, data_seed=3, steps=8)
  default = run(tmp_path, 'default', small_dataset, seed=3, steps=8)
  other = run(tmp_path, 'other', small_dataset, seed=3, data_seed=4, steps=8)
  assert same['final_train_loss'] == default['final_train_loss']
  assert other['final_train_loss'] != default['final_train_loss']
  assert same['initial_loss'] == other['initial_loss']  # the same init


def test_a_run_records_the_time_to_its_first_finished_step(tmp_path, small_dataset):
  before = runtime.seconds_since_process_start()
  summary = run(tmp_path, 'first', small_dataset, steps=3)
  # Counted from the start of the process (here: of the test session).
  assert before < summary['first_step_s'] < runtime.seconds_since_process_start()


def test_stop_on_signals_notes_the_first_signal_and_gives_the_handlers_back():
  before = {s: signal.getsignal(s) for s in train.STOP_SIGNALS}
  with pytest.raises(RuntimeError, match='an error in the block'):
    with train.stop_on_signals():
      assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM], signal.SIG_DFL)
      with train.stop_on_signals():  # Nested (a sweep's run): changes nothing.
        assert train.stop_requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert train.stop_requested() == 'SIGTERM'
        # A second signal would end the process: the default actions are back.
        assert all(signal.getsignal(s) == signal.SIG_DFL for s in train.STOP_SIGNALS)
      assert train.stop_requested() == 'SIGTERM'
      raise RuntimeError('an error in the block')
  assert {s: signal.getsignal(s) for s in train.STOP_SIGNALS} == before
  seen = []  # Another thread takes no signals: it installs nothing.
  def elsewhere():
    with train.stop_on_signals():
      seen.append(signal.getsignal(signal.SIGTERM))
  thread = threading.Thread(target=elsewhere)
  thread.start()
  thread.join()
  assert seen == [before[signal.SIGTERM]]


def test_a_stop_happens_at_the_first_record_step_from_the_steps_dispatched():
  config = Config(**{**TINY, 'steps': 45, 'log_every': 10, 'eval_every': 25})
  assert [train.stop_step(done, config) for done in (1, 10, 11, 21, 25, 41, 45)] == [
      10, 10, 20, 25, 25, 45, 45]
  assert all(train.is_record_step(train.stop_step(done, config), config)
             for done in range(1, 46))
