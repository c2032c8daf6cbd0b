"""Sweeps: the Cartesian product of flag values, run member by member, resumable.

A sweep is a base :class:`Config` plus *axes*, ``{field: [values…]}``. Every member is
the base with one value per axis, runs in its own sub-directory named from what varies
(``init-kaiming__activation-relu__seed-0``), and is skipped on a re-run once its
``summary.json`` (written atomically, last) says it finished. ``--sweep_shard=k/n``
runs members k, k+n, k+2n, … so that n jobs cover a sweep disjointly; results are
collected from whatever member directories exist.
"""

import csv
import dataclasses
import io
import itertools
import json
import math
import pathlib
import statistics
from typing import Any, Callable, Sequence

from matplotlib.figure import Figure
import numpy as np

from fundamentals import rundir
from fundamentals import runtime
from fundamentals.config import Config

# Config fields a sweep may vary, with how to parse one flag value.
SWEEPABLE: dict[str, Callable[[str], Any]] = {
    'init': str, 'activation': str, 'output_init': str, 'schedule': str,
    'optimizer': str, 'bn_impl': str,
    'batchnorm': lambda v: {'true': True, 'false': False, '1': True, '0': False}[v.lower()],
    'seed': int, 'steps': int, 'batch_size': int, 'warmup_steps': int,
    'lr': float, 'momentum': float, 'output_scale': float, 'bn_momentum': float,
}
FINISHED = ('completed', 'diverged')
METRICS = ('initial_loss', 'final_train_loss', 'final_train_accuracy',
           'final_test_loss', 'final_test_accuracy', 'wall_time_s')


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  settings: dict[str, Any]
  config: Config


def parse_axes(values: dict[str, Sequence[str]]) -> dict[str, list[Any]]:
  """Parses flag strings per field; raises ValueError naming a bad field or value."""
  axes = {}
  for field, raw in values.items():
    if field not in SWEEPABLE:
      raise ValueError(f'{field!r} cannot be swept; sweepable: {sorted(SWEEPABLE)}')
    try:
      axes[field] = [SWEEPABLE[field](v) for v in raw]
    except (ValueError, KeyError):
      kind = {str: 'a name', int: 'an integer', float: 'a number'}.get(
          SWEEPABLE[field], 'true or false')
      raise ValueError(f'--{field}={",".join(raw)}: every value must be {kind}') from None
    if len(set(axes[field])) != len(axes[field]):
      raise ValueError(f'--{field}={",".join(raw)} repeats a value')
  return axes


def format_value(value: Any) -> str:
  """A setting as a flag value: booleans as true/false."""
  return str(value).lower() if isinstance(value, bool) else str(value)


def member_name(settings: dict[str, Any]) -> str:
  """``field-value`` pairs of the varied settings, joined by ``__``."""
  return '__'.join(f'{k}-{format_value(v)}' for k, v in settings.items()) or 'single'


def expand(base: Config, axes: dict[str, list[Any]], *, workdir: str | pathlib.Path
           ) -> list[Member]:
  """All members of the grid, in row-major order of ``axes``.

  Every member's Config is built (and so validated) here: an invalid combination is
  reported, with all others that are invalid, before anything runs.
  """
  varied = [k for k, values in axes.items() if len(values) > 1]
  members, errors = [], []
  for combo in itertools.product(*axes.values()):
    values = dict(zip(axes, combo))
    settings = {k: values[k] for k in varied}
    name = member_name(settings)
    try:
      config = dataclasses.replace(base, **values, workdir=str(pathlib.Path(workdir) / name),
                                   experiment='train')
    except ValueError as e:
      errors.append(f'{name}: {e}')
      continue
    members.append(Member(name, settings, config))
  if errors:
    raise ValueError(f'{len(errors)} invalid sweep member(s):\n  ' + '\n  '.join(errors))
  return members


def parse_shard(text: str) -> tuple[int, int]:
  """``'k/n'`` → (k, n) with 0 ≤ k < n."""
  try:
    k, n = (int(part) for part in text.split('/'))
  except ValueError:
    raise ValueError(f'--sweep_shard={text!r} must look like k/n, e.g. 0/4') from None
  if not 0 <= k < n:
    raise ValueError(f'--sweep_shard={text!r} needs 0 <= k < n')
  return k, n


def shard(members: list[Member], k: int, n: int) -> list[Member]:
  """Members k, k+n, k+2n, …: n shards are disjoint and cover the sweep."""
  return members[k::n]


def plan(members: list[Member], axes: dict[str, list[Any]], mine: list[Member]) -> str:
  varied = ', '.join(f'{k} ({len(v)}: {",".join(map(format_value, v))})'
                     for k, v in axes.items() if len(v) > 1)
  return (f'sweep: {len(members)} runs varying {varied or "nothing"}; this job runs '
          f'{len(mine)}')


def is_finished(member: Member) -> bool:
  path = pathlib.Path(member.config.workdir) / 'summary.json'
  if not path.exists():
    return False
  try:
    return json.loads(path.read_text()).get('status') in FINISHED
  except json.JSONDecodeError:
    return False


def write_manifest(workdir: pathlib.Path, base: Config, axes: dict[str, list[Any]],
                   members: list[Member], *, overwrite: bool):
  """Writes ``sweep.json``; refuses a directory that holds a different sweep."""
  manifest = {'base': base.to_dict(), 'axes': axes,
              'members': [{'name': m.name, 'settings': m.settings} for m in members]}
  path = workdir / 'sweep.json'
  if path.exists() and not overwrite:
    old = json.loads(path.read_text())
    if old['axes'] != json.loads(json.dumps(axes)) or not _same_config(old['base'], base):
      raise FileExistsError(f'{workdir} holds a different sweep; use another --workdir '
                            'or pass --overwrite')
  rundir.write_json(path, manifest)


def _same_config(stored: dict[str, Any], config: Config) -> bool:
  """Whether a stored base config is ``config``; fields added since it was written
  count as their defaults, so that older sweeps still resume."""
  try:
    return Config.from_dict(stored) == config
  except (ValueError, TypeError):  # Unknown or invalid fields: another version's sweep.
    return False


def group(members: list[Member], key: Callable[[Config], Any]) -> list[list[Member]]:
  """Members with equal ``key(config)``, in order of their first member."""
  groups: dict[Any, list[Member]] = {}
  for member in members:
    groups.setdefault(key(member.config), []).append(member)
  return list(groups.values())


def run(base: Config, axes: dict[str, list[Any]], *, workdir: str | pathlib.Path,
        run_member: Callable[..., dict[str, Any]],
        run_group: Callable[..., list[dict[str, Any]]] | None = None,
        group_key: Callable[[Config], Any] | None = None,
        shard_spec: tuple[int, int] = (0, 1), overwrite: bool = False,
        echo: Callable[[str], Any] = print) -> list[dict[str, Any]]:
  """Runs this shard's unfinished members, then collects and writes the results.

  ``run_member(config, overwrite=True, resume=not overwrite)`` trains one member,
  going on from its checkpoint if it has one (not when the whole sweep is redone with
  ``overwrite``). With ``run_group``, the unfinished members with equal
  ``group_key(config)`` are trained together by ``run_group(configs, overwrite=True,
  resume=not overwrite)`` (e.g. vmapped, ``--vectorize``).
  """
  if run_group is not None and group_key is None:
    raise ValueError('run_group needs the group_key that says which members go together')
  workdir = pathlib.Path(workdir)
  members = expand(base, axes, workdir=workdir)  # Validates before anything is written.
  mine = shard(members, *shard_spec)
  echo(plan(members, axes, mine))

  def start():
    workdir.mkdir(parents=True, exist_ok=True)
    write_manifest(workdir, base, axes, members, overwrite=overwrite)

  # In a multi-host run process 0 writes the files; all stop if it cannot.
  runtime.on_main_process(start)
  position = {m.name: i for i, m in enumerate(mine, 1)}
  todo = []
  for member in mine:
    if is_finished(member) and not overwrite:
      echo(f'[{position[member.name]}/{len(mine)}] {member.name}: finished earlier, skipped')
    else:  # Without a finished summary it never ran or was interrupted: (re)start it.
      todo.append(member)
  batches = group(todo, group_key) if run_group is not None else [[m] for m in todo]
  for batch in batches:
    where = ','.join(str(position[m.name]) for m in batch)
    if len(batch) == 1:
      echo(f'[{where}/{len(mine)}] {batch[0].name}')
      run_member(batch[0].config, overwrite=True, resume=not overwrite)
    else:
      echo(f'[{where}/{len(mine)}] {len(batch)} members together: '
           + ', '.join(m.name for m in batch))
      run_group([m.config for m in batch], overwrite=True, resume=not overwrite)
  return summarize(workdir, echo=echo) if runtime.is_main_process() else []


def summarize(workdir: str | pathlib.Path, *, echo: Callable[[str], Any] = print
              ) -> list[dict[str, Any]]:
  """Collects every member's summary into results.csv / results.md (+ figures)."""
  workdir = pathlib.Path(workdir)
  manifest = json.loads((workdir / 'sweep.json').read_text())
  rows = []
  for member in manifest['members']:
    row = dict(member['settings'], member=member['name'], status='pending')
    path = workdir / member['name'] / 'summary.json'
    if path.exists():
      summary = json.loads(path.read_text())
      row.update(status=summary.get('status'),
                 diverged_at_step=summary.get('diverged_at_step'),
                 **{k: summary.get(k) for k in METRICS})
      row.update(_inactive_fractions(summary))
    rows.append(row)
  varied = list(manifest['members'][0]['settings']) if manifest['members'] else []
  _write_csv(workdir / 'results.csv', rows)
  groups = aggregate(rows, varied)
  figures = save_figures(workdir, rows, groups, varied)
  markdown = results_markdown(rows, groups, varied)
  markdown += ''.join(f'\n![{name}]({name})\n' for name in figures)
  (workdir / 'results.md').write_text(markdown)
  done = sum(r['status'] in FINISHED for r in rows)
  echo(f'{done}/{len(rows)} members finished; wrote {workdir}/results.csv, results.md'
       + ''.join(f', {name}' for name in figures))
  return rows


def heatmap_axes(varied: list[str]) -> tuple[str, str | None, list[str]] | None:
  """(row, column, panel keys) of the heatmaps: init × activation when both vary."""
  keys = [k for k in varied if k != 'seed']
  if not keys:
    return None
  row = 'init' if 'init' in keys else keys[0]
  rest = [k for k in keys if k != row]
  column = 'activation' if 'activation' in rest else (rest[0] if rest else None)
  return row, column, [k for k in rest if k != column]


def save_figures(workdir: pathlib.Path, rows, groups, varied) -> list[str]:
  """Heatmaps of test accuracy and initial loss, and all loss curves; returns names."""
  written = []
  layout = heatmap_axes(varied)
  if layout:
    row, column, panel_keys = layout
    for metric, fmt, name in (('final_test_accuracy', '{:.0%}', 'heatmap_test_accuracy.png'),
                              ('initial_loss', '{:.2f}', 'heatmap_initial_loss.png')):
      if any(g[metric][0] is not None for g in groups):
        fig = sweep_heatmap_figure(groups, metric=metric, row=row, column=column,
                                   panel_keys=panel_keys, fmt=fmt,
                                   title=metric + (' (mean over seeds)'
                                                   if 'seed' in varied else ''))
        fig.savefig(workdir / name, dpi=90)
        written.append(name)
  curves = {}
  for r in rows:
    path = workdir / r['member'] / 'metrics.jsonl'
    if path.exists():
      curves[r['member']] = rundir.read_jsonl(path)
  if curves:
    overlaid_loss_figure(curves).savefig(workdir / 'loss_curves.png', dpi=90)
    written.append('loss_curves.png')
  return written


def _inactive_fractions(summary: dict[str, Any]) -> dict[str, Any]:
  """Final saturated/dead fractions, where the run's diagnostics reported them."""
  found = {}
  for key in ('final_saturated_fraction', 'final_dead_fraction'):
    if isinstance(summary.get(key), (int, float)):
      found[key] = summary[key]
  return found


def _write_csv(path: pathlib.Path, rows: list[dict[str, Any]]):
  columns = list(dict.fromkeys(k for row in rows for k in row))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  tmp = path.with_suffix('.csv.tmp')
  tmp.write_text(buffer.getvalue())
  tmp.replace(path)


def aggregate(rows: list[dict[str, Any]], varied: list[str]) -> list[dict[str, Any]]:
  """Groups members that differ only in seed: mean and std of each metric, n finished."""
  keys = [k for k in varied if k != 'seed']
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
  out = []
  for values, members in groups.items():
    finished = [m for m in members if m['status'] == 'completed']
    entry = dict(zip(keys, values), n=len(finished), of=len(members),
                 diverged=sum(m['status'] == 'diverged' for m in members))
    for metric in METRICS:
      xs = [m[metric] for m in finished if isinstance(m.get(metric), (int, float))
            and math.isfinite(m[metric])]
      entry[metric] = (statistics.fmean(xs) if xs else None,
                       statistics.stdev(xs) if len(xs) > 1 else 0.0 if xs else None)
    out.append(entry)
  return out


def _pm(pair, fmt='{:.3f}') -> str:
  mean, std = pair
  if mean is None:
    return '–'
  return fmt.format(mean) + (f' ± {fmt.format(std)}' if std else '')


def results_markdown(rows, groups, varied) -> str:
  lines = ['# Sweep results', '', f'{len(rows)} members; varied: {", ".join(varied) or "nothing"}.',
           '', '## Per member', '',
           '| member | status | initial loss | train loss | train acc | test loss | test acc | wall s |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    cell = lambda k, f='{:.3f}': f.format(r[k]) if isinstance(r.get(k), (int, float)) else '–'
    status = r['status'] + (f' @ {r["diverged_at_step"]}' if r.get('diverged_at_step') else '')
    lines.append(f'| {r["member"]} | {status} | {cell("initial_loss")} | '
                 f'{cell("final_train_loss")} | {cell("final_train_accuracy", "{:.2%}")} | '
                 f'{cell("final_test_loss")} | {cell("final_test_accuracy", "{:.2%}")} | '
                 f'{cell("wall_time_s", "{:.1f}")} |')
  if 'seed' in varied:
    keys = [k for k in varied if k != 'seed']
    lines += ['', '## Mean ± std over seeds', '',
              '| ' + ' | '.join(keys) + ' | seeds | diverged | initial loss | test acc | test loss |',
              '| ' + ' | '.join('---' for _ in keys) + ' | --- | --- | --- | --- | --- |']
    for g in groups:
      lines.append('| ' + ' | '.join(format_value(g[k]) for k in keys) +
                   f' | {g["n"]}/{g["of"]} | {g["diverged"]} | {_pm(g["initial_loss"])} | '
                   f'{_pm(g["final_test_accuracy"], "{:.2%}")} | '
                   f'{_pm(g["final_test_loss"])} |')
  return '\n'.join(lines) + '\n'


def sweep_heatmap_figure(groups: list[dict[str, Any]], *, metric: str, row: str,
                         column: str | None, panel_keys: list[str],
                         fmt: str = '{:.2f}', title: str = '') -> Figure:
  """Heatmap of a seed-averaged ``metric`` over ``row`` × ``column``, one panel per
  combination of the other varied settings (``panel_keys``); a cell without a value
  reads 'diverged' when all its members diverged, else 'none'."""
  cell = lambda g: g[column] if column else ''
  rows = list(dict.fromkeys(g[row] for g in groups))
  columns = list(dict.fromkeys(cell(g) for g in groups))
  panels = list(dict.fromkeys(tuple(g[k] for k in panel_keys) for g in groups))
  fig = Figure(figsize=(1.2 + 1.3 * len(columns) * len(panels), 1.0 + 0.6 * len(rows)),
               layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  values = [g[metric][0] for g in groups if g[metric][0] is not None]
  vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
  for ax, panel in zip(axes, panels):
    grid = np.full((len(rows), len(columns)), np.nan)
    empty = np.full(grid.shape, 'none', dtype=object)
    for g in groups:
      if tuple(g[k] for k in panel_keys) != panel:
        continue
      if g[metric][0] is not None:
        grid[rows.index(g[row]), columns.index(cell(g))] = g[metric][0]
      elif g['of'] and g['diverged'] == g['of']:
        empty[rows.index(g[row]), columns.index(cell(g))] = 'diverged'
    image = ax.imshow(grid, cmap='viridis', vmin=vmin, vmax=vmax, aspect='auto')
    for (i, j), value in np.ndenumerate(grid):
      ax.text(j, i, empty[i, j] if np.isnan(value) else fmt.format(value), ha='center',
              va='center', fontsize=8,
              color='white' if not np.isnan(value) and value < (vmin + vmax) / 2
              else 'black')
    ax.set_xticks(range(len(columns)), [format_value(c) for c in columns])
    ax.set_yticks(range(len(rows)), [format_value(r) for r in rows])
    ax.set_xlabel(column or '')
    ax.set_ylabel(row)
    ax.set_title(', '.join(f'{k}={format_value(v)}' for k, v in zip(panel_keys, panel))
                 or metric,
                 fontsize=9)
  fig.colorbar(image, ax=list(axes), shrink=0.8, label=metric)
  if title:
    fig.suptitle(title)
  return fig


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def overlaid_loss_figure(curves: dict[str, list[dict[str, Any]]], *,
                         expected_initial_loss: float | None = None) -> Figure:
  """Training loss of every sweep member against step, on one log-scale axis."""
  fig = Figure(figsize=(9, 5), layout='constrained')
  ax = fig.subplots()
  for name, records in curves.items():
    steps = [r['step'] for r in records if _finite(r.get('train_loss'))]
    ax.plot(steps, [r['train_loss'] for r in records if _finite(r.get('train_loss'))],
            label=name, linewidth=1)
  if expected_initial_loss is not None:
    ax.axhline(expected_initial_loss, color='gray', linestyle=':', label='ln N')
  ax.set(xlabel='step', ylabel='train loss', yscale='log', title='all members')
  ax.grid(alpha=0.3)
  if len(curves) <= 24:
    ax.legend(fontsize=6, ncol=2)
  return fig
