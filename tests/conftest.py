"""Shared fixtures: the small built-in dataset, prepared once per test session."""

import pathlib

import pytest

from fundamentals import data

REPO = pathlib.Path(__file__).resolve().parents[1]
FRUITS30 = REPO.parent / 'shared' / 'data' / 'fruits30'
SMALL = 'synthetic_fruits/small'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the prepared (and cached) small synthetic dataset."""
  path = tmp_path_factory.mktemp('tensorflow_datasets')
  data.load(SMALL, data_dir=str(path))
  return str(path)


@pytest.fixture(scope='session')
def small_dataset(data_dir) -> data.Dataset:
  return data.load(SMALL, data_dir=data_dir)
