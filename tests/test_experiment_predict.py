"""--experiment=predict: predictions.csv and the figure for a folder of images."""

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from experiments import evaluate
from experiments import predict
from fundamentals import runner
from fundamentals import saved_model


def _images(small_dataset, root: pathlib.Path, n: int = 7) -> list[int]:
  """n test images as PNGs, some in a sub-folder, plus a corrupt file and a text file."""
  (root / 'more').mkdir(parents=True)
  for i in range(n):
    Image.fromarray(small_dataset.test_images[i]).save(
        root / ('more' if i % 2 else '') / f'img{i}.png')
  (root / 'broken.png').write_bytes(b'not a png')
  (root / 'notes.txt').write_text('not an image')
  return list(range(n))


def test_predicts_every_readable_image_with_its_top_classes(kept_run, small_dataset,
                                                            tmp_path):
  shown = _images(small_dataset, tmp_path / 'images')
  settings = evaluate.Settings(from_=kept_run, images=str(tmp_path / 'images'), top_k=3)
  config = predict.EXPERIMENT.configure({'workdir': str(tmp_path / 'out')})
  runner.run(predict.EXPERIMENT, config, settings=settings, echo=lambda _: None)
  with open(tmp_path / 'out' / 'predictions.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  files = sorted(str(p.relative_to(tmp_path / 'images'))
                 for p in (tmp_path / 'images').rglob('img*.png'))
  assert [r['file'] for r in rows] == files  # The corrupt and the text file skipped.
  loaded = saved_model.load(kept_run)
  probabilities = saved_model.softmax(saved_model.logits(
      loaded, small_dataset.test_images[shown]))
  by_file = {f'{"more/" if i % 2 else ""}img{i}.png': p for i, p in zip(shown, probabilities)}
  for r in rows:
    p = by_file[r['file']]
    assert r['predicted'] == loaded.class_names[int(np.argmax(p))]
    assert float(r['probability']) == pytest.approx(p.max(), abs=1e-6)
    top = [cell.rsplit(':', 1) for cell in (r['top1'], r['top2'], r['top3'])]
    assert [name for name, _ in top] == [loaded.class_names[j] for j in np.argsort(-p)[:3]]
    assert [float(q) for _, q in top] == sorted((float(q) for _, q in top), reverse=True)
  assert (tmp_path / 'out' / 'predictions.png').stat().st_size > 1000


def test_needs_a_folder_with_images(kept_run, tmp_path):
  config = predict.EXPERIMENT.configure({'workdir': str(tmp_path / 'out')})
  for images, message in (('', '--images is needed'),
                          (str(tmp_path / 'none'), 'no such folder'),
                          (str(tmp_path), 'holds no image files')):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      runner.run(predict.EXPERIMENT, config,
                 settings=evaluate.Settings(from_=kept_run, images=images),
                 echo=lambda _: None)
  assert not (tmp_path / 'out').exists()


def test_settings_of_the_other_experiment_are_refused(kept_run, tmp_path):
  with pytest.raises(ValueError, match='--splits applies to --experiment=evaluate'):
    predict.members(None, evaluate.Settings(from_=kept_run, images=str(tmp_path),
                                            splits=('test',)))
  with pytest.raises(ValueError, match='--images and --top_k apply to --experiment=predict'):
    evaluate.members(None, evaluate.Settings(from_=kept_run, images=str(tmp_path)))
