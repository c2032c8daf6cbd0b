import json
import math

import pytest

from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

TINY = dict(dataset='synthetic_fruits/small', hidden=(32,), batch_size=50, steps=40,
            log_every=10, eval_every=20, lr=0.2)


def run(tmp_path, name, small_dataset, **overrides):
  config = Config(workdir=str(tmp_path / name), **{**TINY, **overrides})
  return train.train(config, dataset=small_dataset, echo=lambda line: None)


def test_run_writes_its_files_and_the_loss_decreases(tmp_path, small_dataset):
  summary = run(tmp_path, 'a', small_dataset)
  workdir = tmp_path / 'a'
  config = Config.from_json((workdir / 'config.json').read_text())
  assert config.hidden == (32,) and config.workdir == str(workdir)
  records = rundir.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in records] == [10, 20, 30, 40]
  assert records[-1]['train_loss'] < 0.7 * records[0]['train_loss']
  assert 'test_accuracy' in records[1] and 'test_accuracy' not in records[0]
  assert json.loads((workdir / 'summary.json').read_text()) == pytest.approx(summary)
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
                momentum=0.0, schedule='constant')
  assert summary['status'] == 'diverged'
  assert summary['diverged_at_step'] in (10, 20, 30, 40)
  assert 'final_test_loss' not in summary
  saved = json.loads((tmp_path / 'd' / 'summary.json').read_text())
  assert saved['status'] == 'diverged'


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
