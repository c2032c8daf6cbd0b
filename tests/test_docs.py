"""The docs: every page is in PAGES and the index, every figure it links exists, every
command it shows is a valid command line, every Python block runs, and publish()
turns experiment directories into figures and tables."""

import json
import pathlib
import re
import shlex

import numpy as np
import pytest

from fundamentals import docs

PAGES = sorted(docs.PAGES)
FENCE = re.compile(r'```(?P<lang>\w*)\n(?P<body>.*?)```', re.DOTALL)
LINK = re.compile(r'!?\[[^\]]*\]\((?P<target>[^)\s]+)\)')


def text(page: str) -> str:
  return (docs.DOCS / page).read_text()


def test_every_page_is_declared_indexed_and_ordered():
  on_disk = sorted(p.name for p in docs.DOCS.glob('*.md') if p.name != 'README.md')
  assert on_disk == PAGES
  index = (docs.DOCS / 'README.md').read_text()
  linked = [m['target'] for m in LINK.finditer(index) if m['target'].endswith('.md')]
  assert linked == PAGES  # The path through the course, in order.
  for page, declared in docs.PAGES.items():
    assert text(page).startswith(f'# {page[:2].lstrip("0")}. {declared.title}\n'), page


@pytest.mark.parametrize('page', ['README.md', *PAGES])
def test_every_link_of_a_page_exists(page):
  for match in LINK.finditer(text(page)):
    target = match['target']
    if target.startswith(('http://', 'https://', '#')):
      continue
    assert (docs.DOCS / target.split('#')[0]).exists(), f'{page} links {target}'


@pytest.mark.parametrize('page', PAGES)
def test_a_page_shows_its_figures_and_the_blocks_of_its_experiments(page):
  body = text(page)
  linked = {m['target'] for m in LINK.finditer(body)}
  for source in docs.PAGES[page].sources:
    for figure in source.figures:
      assert f'{docs.FIGURES}/{docs.figure_name(source.experiment, figure)}' in linked
  blocks = [m['name'] for m in docs.BLOCK.finditer(body)]
  assert set(blocks) <= {s.experiment for s in docs.PAGES[page].sources}
  assert len(blocks) == len(set(blocks))
  for match in docs.BLOCK.finditer(body):  # Regenerated, not the placeholder.
    assert match.group(0).count('\n') > 3 and 'Produced by `python launch.py' in match.group(0)


def test_every_experiment_the_docs_need_is_placed_on_a_page_and_exists():
  import experiments  # pylint: disable=g-import-not-at-top
  placed = {m['name'] for p in PAGES for m in docs.BLOCK.finditer(text(p))}
  assert placed == set(docs.experiments_needed())
  assert set(docs.experiments_needed()) <= set(experiments.EXPERIMENTS)
  # Each figure is one its experiment writes (its name is in the experiment's module).
  from fundamentals import plots  # pylint: disable=g-import-not-at-top
  for page in docs.PAGES.values():
    for source in page.sources:
      module = docs.DOCS.parent / 'experiments' / f'{source.experiment}.py'
      written = module.read_text() if source.experiment != docs.TRAIN else str(plots.FIGURES)
      for figure in source.figures:
        assert figure.rsplit('/', 1)[-1] in written, (source.experiment, figure)


def commands(page: str) -> list[str]:
  """Every ``python launch.py …`` line of a page's sh blocks and inline code."""
  body = text(page)
  lines = [line for m in FENCE.finditer(body) if m['lang'] == 'sh'
           for line in m['body'].splitlines()]
  lines += re.findall(r'`([^`\n]*python launch\.py[^`\n]*)`', FENCE.sub('', body))
  found = []
  for line in lines:
    if 'python launch.py' in line and not line.lstrip().startswith('#'):
      found.append(line[line.index('python launch.py') + len('python launch.py'):].strip())
  return found


def test_every_page_shows_a_command():
  for page in PAGES:
    assert commands(page), page


@pytest.mark.parametrize('page', ['README.md', *PAGES])
def test_every_command_of_a_page_is_a_valid_command_line(page):
  import experiments  # pylint: disable=g-import-not-at-top
  import launch as program  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fundamentals import cli  # pylint: disable=g-import-not-at-top
  from fundamentals import runner  # pylint: disable=g-import-not-at-top
  from fundamentals import runtime  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  for command in commands(page):
    args = shlex.split(command.replace('$SLURM_ARRAY_TASK_ID', '0'))
    flags.FLAGS.unparse_flags()
    try:
      try:
        rest = program.cli.parse_flags(['launch.py', *args])
      except SystemExit:
        pytest.fail(f'{page}: `python launch.py {command}` does not parse')
      assert rest == ['launch.py'], command
      overrides, _ = cli.values(Config)
      cli.build(runner.Options)
      cli.build(runtime.Options)
      name = overrides.get('experiment', 'train')
      if name not in ('list', 'all', 'docs'):
        experiment = experiments.get_experiment(name)
        if overrides.get('lr') == 'auto':  # The launcher's range test picks a number.
          overrides = {k: v for k, v in overrides.items() if k != 'lr'}
        experiment.configure(overrides)
        if experiment.settings is not None:
          cli.explicit(experiment.settings, prefix=experiment.settings_prefix)
    finally:
      flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('page', ['README.md', *PAGES])
def test_every_python_block_of_a_page_runs(page):
  blocks = [m['body'] for m in FENCE.finditer(text(page)) if m['lang'] == 'python']
  if page != 'README.md':
    assert blocks, f'{page} has no snippet'
  namespace = {'__name__': f'docs.{page}'}
  for block in blocks:
    exec(compile(block, str(docs.DOCS / page), 'exec'), namespace)  # pylint: disable=exec-used


def fake_experiment(root: pathlib.Path, name: str, figures: tuple[str, ...], *,
                    rows: int = 3):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  directory = root / name
  directory.mkdir(parents=True)
  for i, figure in enumerate(figures):
    pixels = np.zeros((500, 1500, 3), np.uint8)
    pixels[:, :, i % 3] = np.linspace(0, 255, 1500, dtype=np.uint8)
    Image.fromarray(pixels).save(directory / figure)
  (directory / 'results.json').write_text(json.dumps({
      'scale': 'default', 'finished': 4, 'of': 4, 'checks': [
          {'expected': 'A falls', 'observed': 'A fell by 2', 'passed': True},
          {'expected': 'B | C', 'observed': 'no', 'passed': False}]}))
  table = '\n'.join(['| run | loss |', '| --- | ---: |',
                     *(f'| r{i} | {i}.5 |' for i in range(rows))])
  (directory / 'report.md').write_text(
      '# t\n\n| expected | observed | passed |\n| --- | --- | --- |\n| x | y | yes |\n\n'
      f'Some prose.\n\n{table}\n\nMore.\n')


def test_publish_copies_shrunk_figures_and_rewrites_the_blocks(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root, site = tmp_path / 'runs', tmp_path / 'docs'
  fake_experiment(root, 'alpha', ('a.png', 'b.png'), rows=docs.MAX_ROWS + 4)
  fake_experiment(root, 'beta', ())
  pages = {'01-one.md': docs.Page('One', (docs.Source('alpha', ('a.png', 'b.png')),
                                           docs.Source('beta')))}
  site.mkdir()
  page = site / '01-one.md'
  page.write_text('# 1. One\n\nProse.\n\n<!-- generated: alpha -->\nold\n<!-- /generated -->\n'
                  'Between.\n<!-- generated: beta -->\n<!-- /generated -->\nEnd.\n')
  lines = []
  written = docs.publish(root, docs=site, pages=pages, echo=lines.append)
  assert sorted(p.name for p in written) == ['01-one.md', 'alpha-a.png', 'alpha-b.png']
  for name in ('alpha-a.png', 'alpha-b.png'):
    with Image.open(site / 'figures' / name) as image:
      assert image.width == docs.MAX_WIDTH and image.height == 240 and image.mode == 'P'
  body = page.read_text()
  assert body.startswith('# 1. One\n\nProse.\n\n<!-- generated: alpha -->\nProduced by '
                         '`python launch.py --experiment=alpha` (4/4 runs, 1/2 checks '
                         'passed):')
  assert '| A falls | A fell by 2 | yes |' in body and '| B \\| C | no | **no** |' in body
  assert f'| r{docs.MAX_ROWS - 1} |' in body and f'| r{docs.MAX_ROWS} |' not in body
  assert f'(the first {docs.MAX_ROWS} of {docs.MAX_ROWS + 4} rows' in body
  assert body.endswith('<!-- /generated -->\nEnd.\n') and 'old' not in body
  assert 'Between.' in body and body.count('<!-- generated:') == 2
  assert docs.publish(root, docs=site, pages=pages, echo=lines.append)  # Idempotent.
  assert page.read_text() == body


def test_publish_checks_everything_before_writing_anything(tmp_path):
  root, site = tmp_path / 'runs', tmp_path / 'docs'
  fake_experiment(root, 'alpha', ('a.png',))
  site.mkdir()
  page = site / '01-one.md'
  page.write_text('<!-- generated: alpha -->\nold\n<!-- /generated -->\n')
  with pytest.raises(FileNotFoundError, match=r'missing .*alpha/nope\.png'):
    docs.publish(root, docs=site, pages={'01-one.md': docs.Page(
        'One', (docs.Source('alpha', ('a.png', 'nope.png')),))})
  page.write_text('<!-- generated: gamma -->\nold\n<!-- /generated -->\n')
  with pytest.raises(ValueError, match=r"block 'gamma' names no experiment this page "
                     'draws on; valid: alpha'):
    docs.publish(root, docs=site, pages={'01-one.md': docs.Page(
        'One', (docs.Source('alpha', ('a.png',)),))})
  assert not (site / 'figures').exists()
  assert 'old' in page.read_text()


@pytest.mark.parametrize('status, checkpoint, expected', [
    (None, False, 'fresh'),  # Never ran.
    ('interrupted', True, 'resume'),  # SIGTERM: its checkpoint and summary.
    (None, True, 'resume'),  # Killed after a checkpoint.
    ('completed', False, 'skipped'),
    ('diverged', False, 'skipped'),
])
def test_docs_plan_skips_a_finished_reference_run_and_resumes_a_stopped_one(
    status, checkpoint, expected, tmp_path, monkeypatch):
  import experiments  # pylint: disable=g-import-not-at-top
  from fundamentals import library  # pylint: disable=g-import-not-at-top
  from fundamentals import runner  # pylint: disable=g-import-not-at-top
  train_dir = tmp_path / docs.TRAIN
  if status or checkpoint:
    train_dir.mkdir(parents=True)
    (train_dir / 'config.json').write_text('{}')
  if status:
    (train_dir / 'summary.json').write_text(json.dumps({'status': status}))
  if checkpoint:
    (train_dir / 'checkpoint' / '4').mkdir(parents=True)
    (train_dir / 'checkpoint' / '4.json').write_text(json.dumps({'step': 4}))
  planned = []
  monkeypatch.setattr(library, 'plan_all', lambda *a, **k: lambda: None)
  monkeypatch.setattr(runner, 'plan', lambda e, o, *, options, echo: planned.append(
      'resume' if options.resume else 'fresh' if options.overwrite else '?'))
  docs.plan(experiments.EXPERIMENTS, {'workdir': str(tmp_path)}, settings={},
            options=runner.Options(), echo=lambda line: None)
  assert planned == ([] if expected == 'skipped' else [expected])
