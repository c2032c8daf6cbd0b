import json
import math

import jax
import numpy as np
import pytest

from conftest import SMALL
from experiments import loss_init
from fundamentals import data as data_lib
from fundamentals import models
from fundamentals import rundir
from fundamentals import runner
from fundamentals.config import Config

LN30 = math.log(30)


def test_logit_spread_is_the_rms_over_examples_of_the_std_across_classes():
  logits = np.random.default_rng(0).normal(size=(7, 30)) * np.arange(1, 8)[:, None]
  expected = math.sqrt(np.mean([np.var(row) for row in logits]))
  assert loss_init.logit_spread(logits) == pytest.approx(expected)
  shifted = logits + np.random.default_rng(1).normal(size=(7, 1)) * 100
  assert loss_init.logit_spread(shifted) == pytest.approx(expected)  # Softmax-invariant.


def test_small_spread_loss_matches_the_cross_entropy_of_small_random_logits():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=0.1, size=(100_000, 30))
  labels = rng.integers(0, 30, size=len(logits))
  top = logits.max(axis=1)
  lse = top + np.log(np.sum(np.exp(logits - top[:, None]), axis=1))
  loss = float(np.mean(lse - logits[np.arange(len(logits)), labels]))
  predicted = loss_init.small_spread_loss(30, loss_init.logit_spread(logits))
  assert predicted == pytest.approx(loss, abs=2e-3)
  assert predicted - LN30 == pytest.approx(0.1 ** 2 * 29 / 30 / 2, rel=0.02)


def test_settings_are_validated():
  assert loss_init.Settings().fixed_scale in loss_init.Settings().output_scales
  for kwargs, match in [
      (dict(inits=('kaimin',)), 'kaimin'),
      (dict(batchnorm='maybe'), 'maybe'),
      (dict(output_scales=(1.0, -1.0), unfixed_scale=1.0, fixed_scale=1.0), '>= 0'),
      (dict(output_scales=(1.0, 1.0)), 'repeats'),
      (dict(target_gap=0.0), 'li_target_gap=0.0'),
      (dict(check_init='xavier'), "li_check_init='xavier'"),
      (dict(batchnorm='off'), 'li_check_batchnorm=True'),
      (dict(fixed_scale=0.5), 'li_fixed_scale=0.5'),
      (dict(fixed_scale=1.0), 'must differ'),
  ]:
    with pytest.raises(ValueError, match=match):
      loss_init.Settings(**kwargs)
  assert not any(name.startswith('li_') for name in Config().to_dict())


def test_members_span_inits_batchnorm_and_scales():
  names = loss_init.members(Config(), loss_init.Settings())
  assert len(names) == 16
  assert names['normal-bn-scale0.01'] == dict(init='normal', batchnorm=True,
                                              output_scale=0.01, output_init='same')


def _model_at_init(config: Config, dataset: data_lib.Dataset):
  """The run's model rebuilt here: key(seed) split in three, the first the init's."""
  init_key = jax.random.split(jax.random.key(config.seed), 3)[0]
  model = models.create_model(config, num_features=dataset.num_features,
                              num_classes=dataset.num_classes, key=init_key)
  x = data_lib.normalize(dataset.train_images[:1024], dataset.mean, dataset.std)
  logits, _ = model.forward(x)  # Training mode: batch statistics.
  return np.asarray(logits, np.float64), dataset.train_labels[:1024]


def test_runs_the_grid_and_computes_its_checks(tmp_path, data_dir, small_dataset, capsys):
  experiment = loss_init.EXPERIMENT
  config = experiment.configure({'dataset': SMALL, 'data_dir': data_dir,
                                 'workdir': str(tmp_path / 'li')}, scale='tiny')
  settings = experiment.default_settings(
      {'inits': ('normal',), 'batchnorm': 'on', 'output_scales': (1.0, 0.01, 0.0),
       'target_gap': 0.05}, scale='tiny')
  results = runner.run(experiment, config, settings=settings, scale='tiny')
  workdir = tmp_path / 'li'
  for name in ('report.md', 'initial_loss.png', 'loss_curves.png', 'results.json'):
    assert (workdir / name).stat().st_size > 1000, name
  members = {m['name']: m for m in results['members']}
  assert list(members) == ['normal-bn-scale1', 'normal-bn-scale0.01', 'normal-bn-scale0']
  # The analysis measured the very model the run started from: its loss is train's.
  for name, m in members.items():
    member_config = Config.from_json((workdir / name / 'config.json').read_text())
    logits, labels = _model_at_init(member_config, small_dataset)
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    loss = float(np.mean(lse - logits[np.arange(len(labels)), labels]))
    assert m['summary']['initial_loss'] == pytest.approx(loss, rel=1e-4)
    assert m['output']['initial_loss'] == pytest.approx(loss, rel=1e-4)
    assert m['output']['logit_spread'] == pytest.approx(
        math.sqrt(np.mean(np.var(logits, axis=1))), rel=1e-4)
  assert members['normal-bn-scale0']['output']['logit_spread'] == 0
  assert members['normal-bn-scale0']['summary']['initial_loss'] == pytest.approx(LN30)
  # The checks, recomputed from the summaries and the records.
  target = LN30 - 0.05
  steps = {}
  for name in members:
    steps[name] = None
    for record in rundir.read_jsonl(workdir / name / 'metrics.jsonl'):
      if not rundir.finite(record['train_loss']):
        break
      if record['train_loss'] <= target:
        steps[name] = record['step']
        break
  unfixed, fixed = members['normal-bn-scale1'], members['normal-bn-scale0.01']
  overconfident, near, faster = results['checks']
  ratio = unfixed['summary']['initial_loss'] / LN30
  assert overconfident['passed'] == (ratio >= 2) and f'ratio {ratio:.2f}' in overconfident['observed']
  ratio = fixed['summary']['initial_loss'] / LN30
  assert near['passed'] == (abs(ratio - 1) <= 0.02) and f'ratio {ratio:.4f}' in near['observed']
  a, b = steps['normal-bn-scale0.01'], steps['normal-bn-scale1']
  assert faster['passed'] == (a is not None and (b is None or a < b))
  assert (f'fixed: {f"{a} steps" if a is not None else "not reached"}, unfixed: '
          f'{f"{b} steps" if b is not None else "not reached"}') in faster['observed']
  report = (workdir / 'report.md').read_text()
  assert f'| normal | yes | 1 | {unfixed["summary"]["initial_loss"]:.4f} |' in report
  assert '![loss curves](loss_curves.png)' in report and 'Scale: tiny' in report
  assert overconfident['observed'] in report
  values = json.loads((workdir / 'results.json').read_text())['values']
  assert [v['steps_to_target'] for v in values['members']] == list(steps.values())
  assert 'normal-bn-scale0.01' in capsys.readouterr().out


def test_is_registered_with_its_scales():
  import experiments  # pylint: disable=import-outside-toplevel
  assert experiments.get_experiment('loss_init') is loss_init.EXPERIMENT
  assert set(loss_init.EXPERIMENT.scales) == {'tiny', 'full'}
  assert loss_init.EXPERIMENT.configure(scale='full').hidden == (512, 512, 512)
