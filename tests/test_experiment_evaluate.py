"""--experiment=evaluate: a kept model on its own data, on other data, and bad input."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments import evaluate
from fundamentals import data
from fundamentals import runner
from fundamentals import saved_model
from conftest import REPO, SMALL


def _run(settings, workdir, **overrides):
  settings = evaluate.EXPERIMENT.default_settings(settings)
  config = evaluate.EXPERIMENT.configure(
      {**evaluate.inherits(settings, overrides), 'workdir': str(workdir), **overrides})
  return runner.run(evaluate.EXPERIMENT, config, settings=settings, echo=lambda _: None)


def test_evaluates_on_the_run_s_own_data_with_the_numbers_it_recorded(kept_run, tmp_path):
  results = _run({'from_': kept_run, 'splits': ('train', 'validation', 'test')},
                 tmp_path / 'eval')
  summary = json.loads((pathlib.Path(kept_run) / 'summary.json').read_text())
  measured = json.loads((tmp_path / 'eval' / 'evaluation' / 'measurement.json').read_text())
  assert measured['model'] == 'best' and measured['step'] == summary['best_step']
  splits = measured['splits']
  assert splits['test']['loss'] == pytest.approx(summary['best_test_loss'], rel=1e-5)
  assert splits['validation']['loss'] == pytest.approx(summary['best_validation_loss'],
                                                      rel=1e-5)
  dataset = data.load(SMALL, data_dir=json.loads(
      (pathlib.Path(kept_run) / 'config.json').read_text())['data_dir'],
                      validation_fraction=0.25)
  for split in ('train', 'validation', 'test'):
    confusion = np.array(splits[split]['confusion'])
    labels = getattr(dataset, f'{split}_labels')
    assert confusion.sum() == splits[split]['examples'] == len(labels)
    assert np.array_equal(confusion.sum(1), np.bincount(labels, minlength=30))
    assert splits[split]['accuracy'] == pytest.approx(np.trace(confusion) / len(labels))
    assert (tmp_path / 'eval' / 'evaluation' / f'confusion_{split}.png').exists()
  assert results['values']['test']['examples'] == len(dataset.test_labels)
  report = (tmp_path / 'eval' / 'report.md').read_text()
  assert f'--from={kept_run}' in report and 'confusion_test.png' in report


def test_final_model_on_an_image_folder_of_the_same_classes(kept_run, small_dataset,
                                                            tmp_path):
  root = tmp_path / 'folder'
  for split in ('train', 'test'):
    for label, name in enumerate(small_dataset.class_names):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in np.flatnonzero(small_dataset.test_labels == label)[:2]:
        Image.fromarray(small_dataset.test_images[i]).save(folder / f'{i}.png')
  _run({'from_': kept_run, 'model': 'final', 'splits': ('test',)}, tmp_path / 'eval',
       dataset='image_folder', data_dir=str(root))
  measured = json.loads((tmp_path / 'eval' / 'evaluation' / 'measurement.json').read_text())
  assert measured['model'] == 'final' and measured['splits']['test']['examples'] == 60
  loaded = saved_model.load(kept_run, 'final')
  folder = data.load('image_folder', data_dir=str(root))
  logits = saved_model.logits(loaded, folder.test_images)
  # The folder lists its classes sorted; the labels are matched to the model's by name.
  assert folder.class_names != loaded.class_names
  labels = saved_model.label_map(loaded, folder.class_names)[folder.test_labels]
  assert [loaded.class_names[y] for y in labels] == [
      folder.class_names[y] for y in folder.test_labels]
  assert measured['splits']['test']['loss'] == pytest.approx(
      saved_model.cross_entropy(logits, labels))


def test_other_classes_are_refused_naming_them(kept_run, tmp_path):
  root = tmp_path / 'folder'
  for split in ('train', 'test'):
    for name in ('apple', 'pear'):
      (root / split / name).mkdir(parents=True)
      Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / split / name / 'a.png')
  with pytest.raises(ValueError, match=r"2 classes, the model 30.*not in the model: \['apple', 'pear'\]"):
    _run({'from_': kept_run}, tmp_path / 'eval', dataset='image_folder',
         data_dir=str(root))


def test_bad_input_is_refused_before_any_work(kept_run, tmp_path):
  with pytest.raises(ValueError, match='--from is needed'):
    evaluate.EXPERIMENT.default_settings({})
  with pytest.raises(FileNotFoundError, match='does not exist'):
    evaluate.EXPERIMENT.default_settings({'from_': str(tmp_path / 'nowhere')})
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no kept model'):
    evaluate.EXPERIMENT.default_settings({'from_': str(tmp_path / 'empty')})
  with pytest.raises(ValueError, match='valid: train, validation, test'):
    evaluate.EXPERIMENT.default_settings({'from_': kept_run, 'splits': ('dev',)})
  with pytest.raises(ValueError, match='--model=latest: valid: auto, final, best'):
    evaluate.EXPERIMENT.default_settings({'from_': kept_run, 'model': 'latest'})


def test_through_launch_from_is_the_flag_and_errors_are_one_line(kept_run, tmp_path):
  ok = subprocess.run(
      [sys.executable, 'launch.py', '--experiment=evaluate', f'--from={kept_run}',
       '--splits=test', f'--workdir={tmp_path / "eval"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert (tmp_path / 'eval' / 'report.md').exists()
  bad = subprocess.run(
      [sys.executable, 'launch.py', '--experiment=evaluate', f'--from={tmp_path}/none'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode == 2
  assert bad.stderr.strip().count('\n') == 0 and 'does not exist' in bad.stderr


def test_other_data_is_described_by_the_flags_alone(kept_run):
  """--dataset or --data_dir given: none of the run's data settings mix in (its
  data_dir with another dataset, or its dataset inside another folder)."""
  settings = evaluate.EXPERIMENT.default_settings({'from_': kept_run})
  own = evaluate.inherits(settings, {})
  assert own['dataset'] == SMALL and own['validation_fraction'] == 0.25
  for given in ({'data_dir': '/elsewhere'}, {'dataset': 'image_folder'}):
    assert evaluate.inherits(settings, given) == {'image_size': 64}
