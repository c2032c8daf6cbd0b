"""The experiment library run whole: every lesson into one directory, with an index.

``python launch.py --experiment=all`` plans every experiment of the library (each
one's configs, data and directory checked before any work starts), runs them one
after another into ``<workdir>/<name>/`` (each resumable as itself: re-running the
command skips what finished) and writes ``<workdir>/report.md``, the index of every
check with what it expected, what was observed, whether it passed and the minutes
each experiment took, and ``<workdir>/index.json`` with the same numbers.
"""

import pathlib
import time
from typing import Any, Callable

from fundamentals import report
from fundamentals import rundir
from fundamentals import runner
from fundamentals import runtime

INDEX = 'index.json'


def plan_all(library: dict[str, runner.Experiment], overrides: dict[str, Any], *,
             settings: dict[str, dict[str, Any]], options: runner.Options,
             echo: Callable[[str], Any] = print) -> Callable[[], dict[str, Any]]:
  """Plans every experiment of ``library`` into ``<workdir>/<name>``; returns the
  work, which runs them in order and writes the index.

  Args:
    library: the experiments, by name, in the order they run.
    overrides: Config fields given explicitly (for every experiment, e.g. the data).
    settings: each experiment's explicitly given settings, by name.
    options: how to run them (the same scale for all).
  """
  if options.summarize or options.resume:
    raise ValueError('--experiment=all resumes by re-running the same command with the '
                     'same --workdir; --summarize and --resume apply to one experiment')
  root = pathlib.Path(overrides.get('workdir') or rundir.default_path('all'))
  check_root(root)
  works = {}
  for name, experiment in library.items():
    works[name] = runner.plan(
        experiment, {**overrides, 'workdir': str(root / name)},
        settings=settings.get(name), options=options, echo=echo)

  def work() -> dict[str, Any]:
    rows = []
    for i, (name, run_one) in enumerate(works.items(), start=1):
      echo(f'\n=== [{i}/{len(works)}] {name}: {library[name].description}')
      started = time.time()
      content = run_one()
      rows.append(index_row(name, content, seconds=time.time() - started))
    index = {'scale': options.scale, 'experiments': rows,
             'passed': all(r['passed'] for r in rows)}
    text = index_markdown(index)
    runtime.on_main_process(lambda: write_index(root, index, text))
    echo(text.rstrip())
    echo(f'wrote {root}/report.md, {INDEX}')
    return index

  return work


def check_root(root: pathlib.Path):
  """Raises FileExistsError unless ``root`` may hold the library: it is no file, and
  holds no run or sweep of its own (the library's are one folder per experiment), or
  NotADirectoryError / PermissionError when it cannot be written
  (``rundir.check_writable``). Writes nothing."""
  if root.exists() and not root.is_dir():
    raise FileExistsError(f'--workdir={root} exists and is not a directory')
  for name, what in (('config.json', 'a run'),
                     (rundir.SWEEP_MANIFEST, 'a sweep or experiment')):
    if (root / name).exists():
      raise FileExistsError(f'--workdir={root} holds {what} ({name}); --experiment=all '
                            'writes one folder per experiment and an index: choose another '
                            '--workdir')
  rundir.check_writable(root)


def index_row(name: str, content: dict[str, Any], *, seconds: float) -> dict[str, Any]:
  """One experiment's line of the index, from its ``results.json`` content."""
  checks = content.get('checks', [])
  return {'experiment': name, 'paper': content.get('paper', ''),
          'finished': content.get('finished') == content.get('of'),
          'checks': checks, 'passed': bool(checks) and all(c['passed'] for c in checks),
          'seconds': seconds}


def index_markdown(index: dict[str, Any]) -> str:
  """The index: one row per check (experiment, expected, observed, passed, minutes)."""
  rows = []
  for r in index['experiments']:
    minutes = f'{r["seconds"] / 60:.1f}'
    if not r['checks']:
      rows.append([f'[{r["experiment"]}]({r["experiment"]}/report.md)',
                   'no check (unfinished)' if not r['finished'] else 'no check', '',
                   '**no**', minutes])
    for j, c in enumerate(r['checks']):
      rows.append([f'[{r["experiment"]}]({r["experiment"]}/report.md)' if j == 0 else '',
                   c['expected'], c['observed'], 'yes' if c['passed'] else '**no**',
                   minutes if j == 0 else ''])
  passed = sum(r['passed'] for r in index['experiments'])
  total_minutes = sum(r['seconds'] for r in index['experiments']) / 60
  return (f'# The experiment library at scale {index["scale"]}\n\n'
          f'{passed}/{len(index["experiments"])} experiments passed every check, in '
          f'{total_minutes:.1f} min this invocation.\n\n'
          + report.markdown_table(['experiment', 'check', 'observed', 'passed',
                                   'minutes'], rows)
          + '\n\nReproduce: `python launch.py --experiment=all'
          + ('' if index['scale'] == 'default' else f' --scale={index["scale"]}')
          + '`; each experiment\'s own `report.md` has its figures and tables.\n')


def write_index(root: pathlib.Path, index: dict[str, Any], text: str):
  rundir.write_json(root / INDEX, index)
  rundir.write_text(root / 'report.md', text)
