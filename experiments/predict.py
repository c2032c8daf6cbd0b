"""Classifies new images with a run's kept model: ``--experiment=predict --from=runs/X
--images=DIR``.

Every image file under ``DIR`` (recursively, in sorted order) is decoded as image
folders are (RGB, resized to the model's image size; an unreadable file is skipped
and named), normalized with the run's training statistics and classified by the kept
model (``--model``: best, final or auto). Writes ``predictions.csv`` (file, predicted
class, its probability, the ``--top_k`` classes with their probabilities) and
``predictions.png``, a grid of the first images with their predictions.
"""

import csv
import io
import pathlib
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from experiments import evaluate
from fundamentals import image_folder
from fundamentals import plots
from fundamentals import runner
from fundamentals import saved_model

GRID_IMAGES = 24


def members(config, s: evaluate.Settings) -> dict[str, dict]:
  del config
  if s.splits != evaluate.Settings.splits:
    raise ValueError('--splits applies to --experiment=evaluate; predict takes --from, '
                     '--model, --images and --top_k')
  if not s.images:
    raise ValueError('--images is needed: the folder of images to classify')
  if not pathlib.Path(s.images).is_dir():
    raise FileNotFoundError(f'--images={s.images}: no such folder')
  if not image_files(s.images):
    raise ValueError(f'--images={s.images} holds no image files '
                     f'({", ".join(image_folder.IMAGE_SUFFIXES)})')
  return {'predictions': {}}


def image_files(root: str | pathlib.Path) -> list[pathlib.Path]:
  """The image files under ``root``, recursively, sorted; hidden ones left out."""
  root = pathlib.Path(root)
  return sorted(p for p in root.rglob('*') if p.is_file()
                and p.suffix.lower() in image_folder.IMAGE_SUFFIXES
                and not any(part.startswith('.') for part in p.relative_to(root).parts))


def read_images(files: list[pathlib.Path], image_size: int
                ) -> tuple[np.ndarray, list[pathlib.Path]]:
  """The decoded images ``[N, S, S, 3]`` uint8 and the files they came from; files
  Pillow cannot read are skipped with one warning naming them."""
  images, kept, bad = [], [], []
  for path in files:
    try:
      images.append(image_folder.decode(path, image_size)[0])
      kept.append(path)
    except (OSError, ValueError, Image.DecompressionBombError):
      bad.append(path)
  if bad:
    logging.warning('skipped %d unreadable image file(s): %s', len(bad),
                    ', '.join(map(str, bad[:5])) + (', …' if len(bad) > 5 else ''))
  if not images:
    raise ValueError(f'none of the {len(files)} image files could be read')
  return np.stack(images), kept


def check_inputs(context: runner.Context):
  """At planning: the kept model takes square images, the size predict resizes to."""
  height, width, _ = saved_model.read_meta(context.settings.from_)['image_shape']
  if height != width:
    raise ValueError(f'the model of --from={context.settings.from_} takes {height}x{width} '
                     'images; predict resizes to squares only')


def measure(context: runner.Context, member) -> dict[str, Any]:
  del member
  s = context.settings
  loaded = saved_model.load(s.from_, s.model)
  height, _, _ = loaded.image_shape
  root = pathlib.Path(s.images)
  images, files = read_images(image_files(root), height)
  probabilities = saved_model.softmax(saved_model.logits(loaded, images))
  k = min(s.top_k, len(loaded.class_names))
  top = np.argsort(-probabilities, axis=-1, kind='stable')[:, :k]
  rows = [{'file': str(path.relative_to(root)),
           'predicted': loaded.class_names[t[0]],
           'probability': float(p[t[0]]),
           'top': [[loaded.class_names[j], float(p[j])] for j in t]}
          for path, p, t in zip(files, probabilities, top)]
  return {'from': s.from_, 'model': loaded.kind, 'step': loaded.step,
          'images': str(root), 'image_size': height, 'predictions': rows}


def csv_text(rows: list[dict[str, Any]]) -> str:
  """predictions.csv: file, predicted, probability, then top-k as 'class:p' cells."""
  out = io.StringIO()
  writer = csv.writer(out)
  k = max(len(r['top']) for r in rows)
  writer.writerow(['file', 'predicted', 'probability', *[f'top{i + 1}' for i in range(k)]])
  for r in rows:
    writer.writerow([r['file'], r['predicted'], f'{r["probability"]:.6f}',
                     *[f'{name}:{p:.6f}' for name, p in r['top']]])
  return out.getvalue()


def predictions_figure(images: np.ndarray, rows: list[dict[str, Any]], *,
                       columns: int = 6):
  """A grid of the images, each titled with its file, prediction and probability."""
  width = max(1, min(columns, len(rows)))
  height = -(-len(rows) // width)
  fig, axes = plots.figure(height, width, size=(2.0 * width, 2.2 * height + 0.4), dpi=100)
  for ax in axes.flat:
    ax.set_axis_off()
  for ax, image, r in zip(axes.flat, images, rows):
    ax.imshow(image)
    ax.set_title(f'{r["file"][-22:]}\n{r["predicted"]} {r["probability"]:.0%}', fontsize=7)
  fig.suptitle(f'{len(rows)} images and their predicted classes', fontsize=10)
  return fig


def summarize(context: runner.Context, results: dict[str, runner.Result]
              ) -> runner.Summary:
  out = results['predictions'].output
  rows = out['predictions']
  shown = rows[:GRID_IMAGES]
  images, _ = read_images([pathlib.Path(out['images']) / r['file'] for r in shown],
                          out['image_size'])
  figure = predictions_figure(images, shown)
  counts: dict[str, int] = {}
  for r in rows:
    counts[r['predicted']] = counts.get(r['predicted'], 0) + 1
  common = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
  text = (f'{len(rows)} images of `{out["images"]}` classified by the {out["model"]} '
          f'model of [{out["from"]}]({out["from"]}) (step {out["step"]}): '
          '[predictions.csv](predictions.csv).\n\nMost predicted: '
          + ', '.join(f'{name} ({n})' for name, n in common)
          + '\n\n![predictions](predictions.png)\n')
  return runner.Summary(f'Predictions of {out["from"]}', text,
                        figures={'predictions.png': figure},
                        files={'predictions.csv': csv_text(rows)},
                        values={'images': len(rows)})


EXPERIMENT = runner.Experiment(
    name='predict',
    description='Classifies the images of a folder (--images=DIR) with a run\'s kept '
                'model (--from=runs/X): predictions.csv and a figure.',
    members=members, settings=evaluate.Settings, measure=measure, summarize=summarize,
    needs_data=False, check_inputs=check_inputs)
