"""Every user error is one line (issue 16): the table of bad inputs a course's users
meet, each refused with ``launch.py: error: …`` naming the flag, file or folder and
what would be valid, exit status 2, before any work and before anything is written.

The cases run in this process (``test_launch.launch_here``: milliseconds each, no
training); a few run as real processes too, where a library's own logging (TFDS's,
JAX's) could add lines that only a real stderr shows. Runs, sweeps, kept models and
image folders are made by hand: a case only needs what planning reads.
"""

import json
import logging
import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from conftest import SMALL
import experiments
from fundamentals import runner
from fundamentals import runtime
from test_launch import launch, launch_here


def png(path: pathlib.Path, value: int = 0):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(path)


def image_folder(root: pathlib.Path, *, classes=('apple', 'banana'),
                 test_classes=None) -> pathlib.Path:
  """3 train and 2 test 64x64 PNGs per class."""
  for split, count, names in (('train', 3, classes), ('test', 2, test_classes or classes)):
    for name in names:
      for i in range(count):
        png(root / split / name / f'{i}.png', 40 * i)
  return root


def write_json(path: pathlib.Path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))


# The flags of a run on the small dataset; `data` is filled in by the fixture.
RUN = ('--dataset=' + SMALL, '--data_dir={data}', '--hidden=8', '--steps=2',
       '--batch_size=50')
IMAGES = ('--dataset=image_folder', '--hidden=8', '--steps=2', '--batch_size=2')


@pytest.fixture(scope='module')
def places(tmp_path_factory, data_dir) -> dict[str, str]:
  """The files and folders the cases name, by key, under one root."""
  root = tmp_path_factory.mktemp('bad_inputs')
  train = experiments.EXPERIMENTS['train']
  run_flags = dict(dataset=SMALL, data_dir=data_dir, hidden=(8,), steps=2, batch_size=50)

  def run_dir(name, *, finished, **overrides):
    path = root / name
    config = train.configure({**run_flags, **overrides, 'workdir': str(path)})
    write_json(path / 'config.json', config.to_dict())
    if finished:
      write_json(path / 'summary.json', {'status': 'completed', 'steps': 2})
    return path

  p = {'root': root, 'data': data_dir, 'file': root / 'a_file'}
  p['file'].write_text('not a folder')
  p['finished'] = run_dir('finished', finished=True)
  p['unfinished'] = run_dir('unfinished', finished=False)
  p['empty'] = root / 'empty'
  p['empty'].mkdir()
  p['sweep'] = root / 'sweep'
  (p['sweep']).mkdir()
  (p['sweep'] / 'sweep.json').write_text('{"base": ')  # Damaged.
  p['member'] = run_dir('sweep/seed-0', finished=True)
  p['bad_json'] = root / 'bad.json'
  p['bad_json'].write_text('{not json')
  p['unknown_field'] = root / 'unknown_field.json'
  write_json(p['unknown_field'], {**json.loads((p['finished'] / 'config.json').read_text()),
                                  'bogus': 1})
  p['bad_value'] = root / 'bad_value.json'
  write_json(p['bad_value'], {**json.loads((p['finished'] / 'config.json').read_text()),
                              'lr': -1})
  # A run that kept only its final model (model/model.json is what planning reads).
  p['kept'] = run_dir('kept', finished=True)
  write_json(p['kept'] / 'model' / 'model.json', {
      'config': json.loads((p['kept'] / 'config.json').read_text()),
      'class_names': ['a', 'b'], 'image_shape': [64, 64, 3], 'final_step': 2})
  p['kept_wide'] = run_dir('kept_wide', finished=True)
  write_json(p['kept_wide'] / 'model' / 'model.json', {
      'config': json.loads((p['kept_wide'] / 'config.json').read_text()),
      'class_names': ['a', 'b'], 'image_shape': [64, 32, 3], 'final_step': 2})
  # Image folders.
  p['if_ok'] = image_folder(root / 'if_ok')
  p['if_ab'] = image_folder(root / 'if_ab', classes=('a', 'b'))
  p['if_empty'] = root / 'if_empty'
  p['if_empty'].mkdir()
  p['if_no_classes'] = root / 'if_no_classes'
  for split in ('train', 'test'):
    png(p['if_no_classes'] / split / 'loose.png')
  p['if_one_class'] = image_folder(root / 'if_one_class', classes=('apple',))
  p['if_mismatch'] = image_folder(root / 'if_mismatch', test_classes=('apple', 'cherry'))
  p['if_empty_class'] = image_folder(root / 'if_empty_class')
  for f in (p['if_empty_class'] / 'train' / 'banana').iterdir():
    f.unlink()
  p['if_all_corrupt'] = image_folder(root / 'if_all_corrupt')
  for f in (p['if_all_corrupt'] / 'train' / 'banana').iterdir():
    f.write_bytes(b'\x89PNG\r\n\x1a\n cut short')
  p['if_some_corrupt'] = image_folder(root / 'if_some_corrupt')
  (p['if_some_corrupt'] / 'test' / 'apple' / '1.png').write_bytes(b'GIF89a, not a PNG')
  p['if_no_images'] = image_folder(root / 'if_no_images')
  for f in (p['if_no_images'] / 'test' / 'banana').iterdir():
    f.rename(f.with_suffix('.txt'))
  return {k: str(v) for k, v in p.items()}


# (case, flags with {place} fields, regex the one line must match). In the order of
# issue 16's list; every case gets --workdir={root}/never unless it names one.
CASES = [
    # Sizes that the data cannot feed.
    ('batch larger than the dataset', [*RUN, '--batch_size=1000'],
     r'batch_size=1000 exceeds the 600 training examples of synthetic_fruits/small'),
    ('... in a sweep', [*RUN, '--batch_size=1000', '--init=xavier,kaiming'],
     r'batch_size=1000 exceeds the 600'),
    ('... as one value of a sweep axis', [*RUN, '--batch_size=50,1000'],
     r'batch_size=1000 exceeds the 600'),
    ('... of the train split left by --validation_fraction',
     [*RUN, '--batch_size=400', '--validation_fraction=0.5'],
     r'batch_size=400 exceeds the 300 training examples'),
    ('... of that split, in a sweep',
     [*RUN, '--batch_size=400', '--validation_fraction=0.5', '--seed=0,1'],
     r'batch_size=400 exceeds the 300 training examples'),
    ('... in a lesson', [*RUN, '--batch_size=1000', '--experiment=augmentation'],
     r'batch_size=1000 exceeds'),
    ('... in the whole library', [*RUN, '--batch_size=1000', '--experiment=all',
                                  '--scale=tiny'], r'batch_size=1000 exceeds'),
    ('... with --lr=auto (before the range test)', [*RUN, '--batch_size=1000', '--lr=auto'],
     r'batch_size=1000 exceeds'),
    ('... of an image folder', [*IMAGES, '--data_dir={if_ok}', '--batch_size=100'],
     r'batch_size=100 exceeds the 6 training examples of image_folder'),
    ('validation fraction leaving a class no training example',
     [*RUN, '--validation_fraction=0.99'],
     r'--validation_fraction=0\.99 leaves no training example of class 0 '
     r'\(red_round_plain\).*of its 20'),
    ('early stopping without a validation split', [*RUN, '--early_stopping_patience=2'],
     r'early_stopping_patience=2 needs a validation split.*--validation_fraction'),
    # Zero, negative and non-finite values (Config's own checks).
    ('steps=0', [*RUN, '--steps=0'], r'steps=0 must be positive'),
    ('steps=-1', [*RUN, '--steps=-1'], r'steps=-1 must be positive'),
    ('batch_size=0', [*RUN, '--batch_size=0'], r'batch_size=0 must be positive'),
    ('batch_size=-5', [*RUN, '--batch_size=-5'], r'batch_size=-5 must be positive'),
    ('lr=nan', [*RUN, '--lr=nan'], r'lr=nan must be a positive finite number'),
    ('lr=inf', [*RUN, '--lr=inf'], r'lr=inf must be a positive finite number'),
    ('lr=0', [*RUN, '--lr=0'], r'lr=0\.0 must be a positive finite number'),
    ('hidden=0', [*RUN, '--hidden=0'], r'hidden=\(0,\) must be one or more positive'),
    ('hidden=8,-1', [*RUN, '--hidden=8,-1'], r'hidden=\(8, -1\) must be one or more'),
    ('hidden empty', [*RUN, '--hidden='], r'hidden=\(\) must be one or more positive'),
    ('validation_fraction=1.5', [*RUN, '--validation_fraction=1.5'],
     r'validation_fraction=1\.5 must be in \[0, 1\)'),
    ('validation_fraction=-0.1', [*RUN, '--validation_fraction=-0.1'],
     r'validation_fraction=-0\.1 must be in \[0, 1\)'),
    ('validation_fraction=nan', [*RUN, '--validation_fraction=nan'],
     r'validation_fraction=nan must be in \[0, 1\)'),
    ('log_every=0', [*RUN, '--log_every=0'], r'log_every=0 must be positive'),
    ('eval_every=0', [*RUN, '--eval_every=0'], r'eval_every=0 must be positive'),
    ('warmup_steps >= steps', [*RUN, '--warmup_steps=2'],
     r'warmup_steps=2 must be in \[0, steps=2\)'),
    ('image_size=0', [*RUN, '--image_size=0'], r'image_size=0 must be positive'),
    ('momentum=nan', [*RUN, '--momentum=nan'], r'momentum=nan must be in \[0, 1\)'),
    ('output_scale=inf', [*RUN, '--output_scale=inf'],
     r'output_scale=inf must be finite and >= 0'),
    ('bn_epsilon=0', [*RUN, '--bn_epsilon=0'], r'bn_epsilon=0\.0 must be positive'),
    ('data_seed=-2', [*RUN, '--data_seed=-2'], r'data_seed=-2 must be >= 0, or -1'),
    ('checkpoint_every=-1', [*RUN, '--checkpoint_every=-1'],
     r'checkpoint_every=-1 must be >= 0'),
    ('steps=1.5', [*RUN, '--steps=1.5'], r'--steps=1\.5: must be an integer'),
    ('lr=fast', [*RUN, '--lr=fast'], r'--lr=fast: must be a number'),
    # Datasets.
    ('unknown dataset', ['--dataset=fruits30'],
     r"Unknown dataset 'fruits30': neither built in nor in the TFDS catalog; valid: "
     r'synthetic_fruits, synthetic_fruits/small .*image_folder with --data_dir=FOLDER.*'
     r'`tfds build NAME --data_dir=DIR --file_format=array_record`.*\$TFDS_DATA_DIR'),
    ('unknown config of the built-in dataset', ['--dataset=synthetic_fruits/huge',
                                                '--data_dir={data}'],
     r"synthetic_fruits has no config 'huge'; valid: synthetic_fruits/default, "
     r'synthetic_fruits/small'),
    ('dataset name TFDS cannot parse', ['--dataset=Fruits 30'],
     r"Unknown dataset 'Fruits 30': TFDS cannot open it offline \(Parsing .*\); valid:"),
    ('empty dataset name', ['--dataset='], r"Unknown dataset '': TFDS cannot open it"),
    ('community namespace (network)', ['--dataset=huggingface:mnist'],
     r"Unknown dataset 'huggingface:mnist': huggingface: names a TFDS community namespace"),
    ('catalog dataset not prepared', ['--dataset=mnist', '--data_dir={data}'],
     r"Dataset 'mnist' is not prepared under .* `tfds build mnist --data_dir=DIR"),
    ('catalog dataset at a version it has not', ['--dataset=mnist:9.9.9'],
     r"Unknown dataset 'mnist:9\.9\.9': .*cannot be loaded at version 9\.9\.9, only: "),
    ('--data_dir that is a file', ['--data_dir={file}'],
     r'--data_dir=.*a_file is not a directory'),
    ('--data_dir that does not exist', ['--data_dir={root}/nowhere'],
     r'--data_dir=.*nowhere is not a directory; create it'),
    # Image folders.
    ('image folder without --data_dir', [*IMAGES],
     r'--dataset=image_folder needs --data_dir=<folder with train/ and test/>'),
    ('image folder missing', [*IMAGES, '--data_dir={root}/nowhere'],
     r'--data_dir=.*nowhere: the image folder does not exist; expected .*/train/<class>'),
    ('image folder is a file', [*IMAGES, '--data_dir={file}'],
     r'--data_dir=.*a_file is a file, not an image folder'),
    ('image folder empty', [*IMAGES, '--data_dir={if_empty}'],
     r'--data_dir=.*if_empty has no train/ folder; .*\(it holds nothing\)'),
    ('image folder is its own train/', [*IMAGES, '--data_dir={if_ok}/train'],
     r'if_ok/train has no train/ folder; .*\(it holds apple/, banana/\)'),
    ('image folder without class subfolders', [*IMAGES, '--data_dir={if_no_classes}'],
     r'if_no_classes/train has no class folders; .*\(it holds 1 file directly, e\.g\. '
     r'loose\.png\)'),
    ('image folder of a single class', [*IMAGES, '--data_dir={if_one_class}'],
     r'if_one_class/train has one class folder \(apple\); a classifier needs two or more'),
    ('image folder, train/test classes differ', [*IMAGES, '--data_dir={if_mismatch}'],
     r"if_mismatch/test has different classes .*not in train: \['cherry'\]; missing from "
     r"test: \['banana'\]"),
    ('image folder, an empty class folder', [*IMAGES, '--data_dir={if_empty_class}'],
     r'class folder .*if_empty_class/train/banana is empty'),
    ('image folder, a class whose every image is corrupt',
     [*IMAGES, '--data_dir={if_all_corrupt}'],
     r'class banana has no readable image in .*if_all_corrupt/train/banana: of its 3 '
     r'files, 3 cannot be decoded'),
    ('image folder, some corrupt images', [*IMAGES, '--data_dir={if_some_corrupt}'],
     r'1 of 4 image files cannot be decoded .*if_some_corrupt/test/apple/1\.png; fix or '
     r'remove them'),
    ('image folder, a class of files not named as images',
     [*IMAGES, '--data_dir={if_no_images}'],
     r'class banana has no readable image in .*if_no_images/test/banana: .*2 are not '
     r'named as images \(\.png, .*e\.g\. 0\.txt, 1\.txt'),
    # Devices.
    ('--platform that is not one', [*RUN, '--platform=gpu'],
     r"platform='gpu' is not one of \['', 'cpu', 'cuda', 'rocm', 'tpu'\]"),
    ('--process_id alone', [*RUN, '--process_id=1'], r'must be given together'),
    # --summarize.
    ('--summarize of a single run', ['--summarize', '--workdir={finished}'],
     r'--summarize: --workdir=.*finished holds a single run, not a sweep or experiment: '
     r'its results are its summary\.json and report\.md'),
    ('--summarize of a sweep member', ['--summarize', '--workdir={member}'],
     r'holds a single run.*it is a member of the sweep in .*sweep: --summarize '
     r'--workdir=.*sweep$'),
    ('--summarize of a missing directory', ['--summarize', '--workdir={root}/nowhere'],
     r'--summarize: --workdir=.*nowhere holds no sweep or experiment: it does not exist; '
     r'give the --workdir of one'),
    ('--summarize of a file', ['--summarize', '--workdir={file}'],
     r'--summarize: --workdir=.*a_file holds no sweep or experiment: it is a file'),
    ('--summarize of an empty directory', ['--summarize', '--workdir={empty}'],
     r'empty holds no sweep or experiment \(sweep\.json is missing\)'),
    ('--summarize of a damaged sweep.json', ['--summarize', '--workdir={sweep}'],
     r'sweep/sweep\.json is damaged .*restore it from a copy'),
    # --config.
    ('--config missing', [*RUN, '--config={root}/nowhere.json'],
     r'--config=.*nowhere\.json: no such file \(a run directory\'s config\.json'),
    ('--config a directory without config.json', [*RUN, '--config={empty}'],
     r'--config=.*empty/config\.json: no such file'),
    ('--config damaged JSON', [*RUN, '--config={bad_json}'],
     r'--config=.*bad\.json: not a readable config \(Expecting property name'),
    ('--config with an unknown field', [*RUN, '--config={unknown_field}'],
     r"--config=.*unknown_field\.json: not a readable config \(Unknown Config keys "
     r"\['bogus'\]; valid: \['activation'"),
    ('--config with an invalid value', [*RUN, '--config={bad_value}'],
     r'--config=.*bad_value\.json: not a readable config \(lr=-1 must be a positive'),
    # --resume.
    ('--resume of a directory that does not exist',
     [*RUN, '--resume', '--workdir={root}/nowhere'],
     r'--resume: --workdir=.*nowhere holds no run to go on with'),
    ('--resume of a directory that holds no run', [*RUN, '--resume', '--workdir={empty}'],
     r'--resume: --workdir=.*empty holds no run to go on with'),
    ('--resume of a finished run', [*RUN, '--resume', '--workdir={finished}'],
     r'cannot resume .*finished: that run finished \(--overwrite starts afresh\)'),
    ('--resume of a run with other settings',
     [*RUN, '--hidden=16', '--resume', '--workdir={unfinished}'],
     r'cannot resume .*unfinished: that run had other settings \(hidden\)'),
    ('--resume of a run that saved no checkpoint',
     [*RUN, '--resume', '--workdir={unfinished}'],
     r'cannot resume .*unfinished: that run saved no checkpoint'),
    ('--resume with sweep axes', [*RUN, '--seed=0,1', '--resume', '--workdir={unfinished}'],
     r'--resume goes on with one training run; sweeps and experiments resume by '
     r're-running the same command'),
    ('--resume of a lesson', ['--experiment=batchnorm', '--resume'],
     r'--resume goes on with one training run'),
    ('--resume of the library', ['--experiment=all', '--resume'],
     r'--experiment=all resumes by re-running the same command'),
    # --workdir.
    ('--workdir that is a file', [*RUN, '--workdir={file}'],
     r'--workdir=.*a_file exists and is not a directory'),
    ('--workdir inside a file', [*RUN, '--workdir={file}/run'],
     r'--workdir=.*a_file/run: .*a_file is a file, not a folder'),
    ('--workdir holding a run', [*RUN, '--workdir={finished}'],
     r'--workdir=.*finished already holds a run; choose another --workdir \(or pass '
     r'--overwrite'),
    ('a sweep into a run', [*RUN, '--seed=0,1', '--workdir={finished}'],
     r'--workdir=.*finished already holds a run'),
    ('a lesson into a run', [*RUN, '--experiment=augmentation', '--workdir={finished}'],
     r'--workdir=.*finished already holds a run'),
    ('the library into a run', [*RUN, '--experiment=all', '--workdir={finished}'],
     r'--workdir=.*finished holds a run \(config\.json\); --experiment=all writes one '
     r'folder per experiment'),
    ('a single run into a sweep', [*RUN, '--workdir={sweep}'],
     r'--workdir=.*sweep holds a sweep or experiment \(sweep\.json\)'),
    # Kept models.
    ('--experiment=evaluate of a missing run', ['--experiment=evaluate',
                                                '--from={root}/nowhere'],
     r'--from=.*nowhere: it does not exist; expected .*nowhere/model/model\.json'),
    ('--experiment=evaluate of a run that kept no model',
     ['--experiment=evaluate', '--from={finished}'],
     r'--from=.*finished: it holds no kept model'),
    ('--experiment=evaluate --model=best of a run without one',
     ['--experiment=evaluate', '--from={kept}', '--model=best'],
     r'kept kept no best model \(a best model needs a validation split'),
    ('--experiment=evaluate on data of other classes',
     ['--experiment=evaluate', '--from={kept}'],
     r'the dataset has 30 classes, the model 2; they must have the same names; the '
     r"model's not in the dataset: \['a', 'b'\]"),
    ('--experiment=evaluate on images of another size',
     ['--experiment=evaluate', '--from={kept}', '--dataset=image_folder',
      '--data_dir={if_ab}', '--image_size=32'],
     r'image_folder has images of shape \(32, 32, 3\); the model of --from=.*kept takes '
     r'\(64, 64, 3\) \(--image_size=64\)'),
    ('--experiment=evaluate of splits the data lacks',
     ['--experiment=evaluate', '--from={kept}', '--dataset=image_folder',
      '--data_dir={if_ab}', '--splits=validation'],
     r'image_folder has none of the splits --splits=validation$'),
    ('--experiment=predict with a model of non-square images',
     ['--experiment=predict', '--from={kept_wide}', '--images={if_ab}/test'],
     r'the model of --from=.*kept_wide takes 64x32 images; predict resizes to squares'),
    ('--experiment=predict without --images', ['--experiment=predict', '--from={kept}'],
     r'--images is needed: the folder of images to classify'),
    ('--experiment=predict of a missing folder',
     ['--experiment=predict', '--from={kept}', '--images={root}/nowhere'],
     r'--images=.*nowhere: no such folder'),
    # Command lines.
    ('unexpected positional argument', [*RUN, 'extra'],
     r"unexpected arguments \['extra'\] \(flags look like --name=value\)"),
    ('unknown flag', [*RUN, '--bogus'], r"Unknown command line flag 'bogus'"),
    ('unknown init', [*RUN, '--init=kaimin'],
     r"Unknown initializer 'kaimin'.*valid: \['glorot'"),
    ('unknown activation', [*RUN, '--activation=sigmoidd'],
     r"Unknown activation 'sigmoidd'; valid: \['gelu'"),
    ('unknown schedule', [*RUN, '--schedule=linear'],
     r"Unknown schedule 'linear'; valid: \['constant', 'cosine'"),
    ('unknown optimizer', [*RUN, '--optimizer=rmsprop'],
     r"Unknown optimizer 'rmsprop'; valid: \['adam'"),
    ('unknown augmentation', [*RUN, '--augment=twirl'],
     r"Unknown augmentation\(s\) \['twirl'\]; valid: \['flip'"),
    ('unknown experiment', ['--experiment=nope'], r"Unknown experiment 'nope'; valid: list"),
    ('unknown scale', ['--experiment=batchnorm', '--scale=huge'],
     r'--scale=huge: must be one of tiny, default, full'),
    ('a flag that cannot be swept, swept', [*RUN, '--image_size=32,64'],
     r"'image_size' takes one value \(it cannot be swept\)"),
    ('a repeated sweep value', [*RUN, '--seed=1,1'], r'--seed=1,1 repeats a value'),
    ('a lesson with sweep axes', ['--experiment=batchnorm', '--seed=0,1'],
     r"--experiment=batchnorm takes single values, but \['seed'\] have several"),
    ('an experiment\'s flag without it', [*RUN, '--sp_depth=3'],
     r'--sp_depth apply to --experiment=signal_propagation only'),
]


def tree(root: pathlib.Path) -> dict[str, tuple[int, int]]:
  """Every file and folder under ``root``: (size, modification time)."""
  return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in root.rglob('*')}


def refuse(args: list[str], places: dict[str, str], caplog):
  """Runs launch.py's main on ``args`` (places filled in, a --workdir under the root
  unless given) and returns its one stderr line, after checking what every refusal
  must be: exit status 2, one line, no traceback, no warning logged beside it (a real
  stderr would show it), and nothing new or changed under the root, the workdir's
  parent."""
  args = [a.format(**places) for a in args]
  if not any(a.startswith('--workdir=') for a in args):
    args.append(f'--workdir={places["root"]}/never')
  root = pathlib.Path(places['root'])
  before = tree(root)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    result = launch_here(*args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and lines[0].startswith('launch.py: error: '), result.stderr
  assert 'Traceback' not in result.stderr
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert tree(root) == before, 'something was written'
  return lines[0]


@pytest.mark.parametrize('flags, pattern', [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_in_one_line_before_anything_is_written(
    flags, pattern, places, caplog):
  line = refuse(flags, places, caplog)
  assert re.search(pattern, line), line


@pytest.mark.parametrize('platform', ['cuda', 'rocm', 'tpu'])
def test_a_platform_without_devices_is_named_with_the_available_ones(platform, places,
                                                                     caplog):
  if runtime._has_devices(platform):  # pylint: disable=protected-access
    pytest.skip(f'this host has {platform} devices')
  line = refuse([*RUN, f'--platform={platform}'], places, caplog)
  assert re.search(rf'--platform={platform}: JAX finds no {platform} device here \(.*\); '
                   r'available: cpu(, \w+)* \(leave --platform unset', line), line
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.devices()  # JAX still starts, as it was set before.


def test_a_batch_that_does_not_split_over_the_devices_is_refused_at_planning(
    places, caplog, monkeypatch):
  monkeypatch.setattr(runtime.jax, 'device_count', lambda: 2)
  for extra in ([], ['--seed=0,1']):
    line = refuse([*RUN, '--batch_size=25', *extra], places, caplog)
    assert re.search(r'batch_size=25 must be a multiple of the 2 devices it is split over '
                     r'\(data parallelism\), e\.g\. 24 or 26; or give --data_parallel=false',
                     line), line
  assert runner.plan(experiments.EXPERIMENTS['train'],
                     {'dataset': SMALL, 'data_dir': places['data'], 'batch_size': 25,
                      'data_parallel': False, 'workdir': places['root'] + '/never'})


def test_a_file_not_named_as_an_image_is_skipped_with_one_warning(places, caplog,
                                                                  tmp_path):
  """The one image-folder oddity that is not refused: ``notes.txt`` beside the images
  is no image and none was meant (``fundamentals.image_folder``)."""
  folder = image_folder(tmp_path / 'folder')
  (folder / 'train' / 'apple' / 'notes.txt').write_text('picked in May')
  with caplog.at_level(logging.WARNING):
    work = runner.plan(experiments.EXPERIMENTS['train'],
                       {'dataset': 'image_folder', 'data_dir': str(folder),
                        'batch_size': 2, 'workdir': str(tmp_path / 'run')},
                       echo=lambda line: None)
  assert callable(work) and not (tmp_path / 'run').exists()
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and re.match(r'1 files skipped \(not named as images: .*\): '
                                         r'.*apple/notes\.txt$', warnings[0]), warnings


@pytest.mark.parametrize('flags, pattern', [
    (['--dataset=mnist', '--data_dir={data}'], r"Dataset 'mnist' is not prepared"),
    ([*IMAGES, '--data_dir={if_all_corrupt}'], r'class banana has no readable image'),
    ([*RUN, '--platform=cuda'], r'--platform=cuda: JAX finds no cuda device'),
], ids=['TFDS lookup', 'image folder', 'platform'])
def test_as_a_process_the_refusal_is_still_the_only_line(flags, pattern, places):
  """What the in-process cases cannot see: a library's log lines on the real stderr
  (TFDS warns of a dataset folder without dataset_info.json, JAX of each backend it
  fails to start)."""
  if 'cuda' in pattern and runtime._has_devices('cuda'):  # pylint: disable=protected-access
    pytest.skip('this host has cuda devices')
  root = pathlib.Path(places['root'])
  before = tree(root)
  result = launch(*[f.format(**places) for f in flags], f'--workdir={root}/never')
  assert result.returncode == 2, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert re.search(pattern, result.stderr) and tree(root) == before
