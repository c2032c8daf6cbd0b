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
