"""Shared fixtures: the small built-in dataset, prepared once per test session."""

import os
import pathlib
import tempfile

import pytest

from fundamentals import data

REPO = pathlib.Path(__file__).resolve().parents[1]
FRUITS30 = REPO.parent / 'shared' / 'data' / 'fruits30'
SMALL = 'synthetic_fruits/small'
# Caches the tests write (the dataset locator, compilation caches) stay out of the
# user's ~/.cache unless a cache directory was chosen.
os.environ.setdefault('FUNDAMENTALS_CACHE', tempfile.mkdtemp(prefix='fundamentals-tests-'))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the prepared (and cached) small synthetic dataset."""
  path = tmp_path_factory.mktemp('tensorflow_datasets')
  data.load(SMALL, data_dir=str(path))
  return str(path)


@pytest.fixture(scope='session')
def small_dataset(data_dir) -> data.Dataset:
  return data.load(SMALL, data_dir=data_dir)


def run_tiny(experiment, workdir, data_dir, *, settings=None, vectorize=False,
             echo=lambda line: None):
  """Runs ``experiment`` at its tiny scale on the small dataset into ``workdir``,
  ``settings`` (a dict) over the tiny scale's; returns ``(config, settings, results)``."""
  from fundamentals import runner  # pylint: disable=g-import-not-at-top
  config = experiment.configure({'dataset': SMALL, 'data_dir': data_dir,
                                 'workdir': str(workdir)}, scale='tiny')
  settings = experiment.default_settings(settings, scale='tiny')
  results = runner.run(experiment, config, settings=settings, scale='tiny',
                       vectorize=vectorize, echo=echo)
  return config, settings, results


@pytest.fixture(scope='session')
def kept_run(data_dir, tmp_path_factory) -> str:
  """The directory of a small finished run with a validation split, which kept its
  best and final models (``fundamentals.saved_model``)."""
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('kept') / 'run'
  train.train(Config(dataset=SMALL, data_dir=data_dir, hidden=(32,), steps=30, lr=0.2,
                     log_every=10, eval_every=10, diagnostics_every=0,
                     checkpoint_every=0, validation_fraction=0.25, workdir=str(workdir)),
              echo=lambda line: None)
  return str(workdir)
