"""Reports in Markdown: a run in one page (summary table, the doctor's findings,
figures), the tables of sweeps and experiments, and :func:`markdown_table`, the one
table helper they all use."""

import csv
import io
import math
import pathlib
import statistics
from typing import Any, Sequence

from fundamentals import doctor
from fundamentals import rundir
from fundamentals.config import Config, format_value


def _cell(value: Any) -> str:
  """A table cell's text: a '|' in it (an absolute value, |x|) escaped, so that it
  does not end the cell."""
  return str(value).replace('|', '\\|')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *,
                   align: str | None = None) -> str:
  """A Markdown table: the header, a rule, one line per row (cells as ``str``).

  Args:
    header: the column titles.
    rows: the cells, one sequence per row.
    align: one letter per column, ``'l'`` (default) or ``'r'`` (numbers, ``---:``).
  """
  align = align or 'l' * len(header)
  if len(align) != len(header):
    raise ValueError(f'{align=} must have one letter per column of {list(header)}')
  rule = ['---:' if a == 'r' else '---' for a in align]
  cells = lambda values: ' | '.join(_cell(v) for v in values)
  lines = ['| ' + cells(header) + ' |', '| ' + ' | '.join(rule) + ' |']
  for row in rows:
    if len(row) != len(header):
      raise ValueError(f'row {list(row)} has {len(row)} cells for {len(header)} columns')
    lines.append('| ' + cells(row) + ' |')
  return '\n'.join(lines)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
  """(quantity, value) rows of the summary table, for the keys the summary has."""
  rows = [('status', summary.get('status', '?'))]
  if summary.get('diverged_at_step') is not None:
    rows.append(('diverged at step', str(summary['diverged_at_step'])))
  rows.append(('steps', str(summary.get('steps', '?'))))
  if 'initial_loss' in summary:
    loss, expected = summary['initial_loss'], summary['expected_initial_loss']
    rows.append(('initial loss', f'{_number(loss)} (ln N = {expected:.4f}, ratio '
                                 f'{_number(loss / expected, ".2f")})'))
  for split in ('train', 'validation', 'test'):
    if f'final_{split}_loss' in summary:
      rows.append((f'final {split} loss / accuracy',
                   f'{_number(summary[f"final_{split}_loss"])} / '
                   f'{summary[f"final_{split}_accuracy"]:.2%}'))
  if 'num_params' in summary:
    rows.append(('parameters', f'{summary["num_params"]:,}'))
  if 'examples_per_sec' in summary:
    rows.append(('throughput', f'{summary["examples_per_sec"]:,.0f} examples/s'))
  if 'wall_time_s' in summary:
    rows.append(('wall time', f'{summary["wall_time_s"]:.1f} s'))
  return rows


def layer_rows(diagnostics: dict[str, Any]) -> list[list[str]]:
  """Per hidden layer, init → end: activation std, saturated/dead fraction, grad std."""
  init, end = diagnostics.get('init'), diagnostics.get('end')
  if not init:
    return []
  rows = []
  for i, layer in enumerate(init['layers']):
    last = end['layers'][i] if end else {}
    health = next((k for k in ('saturated_fraction', 'dead_fraction') if k in layer), None)
    rows.append([
        f'layer{i}',
        _pair(layer['activation_std'], last.get('activation_std'), '.3f'),
        _pair(layer[health], last.get(health), '.1%') if health else '—',
        _pair(layer['activation_grad_std'], last.get('activation_grad_std'), '.2e'),
    ])
  return rows


def optimizer_words(config: Config) -> str:
  """The optimizer and the hyperparameters it reads: 'adamw lr=0.001 weight_decay=0.05'."""
  from fundamentals import optimizers  # pylint: disable=g-import-not-at-top
  defaults = Config()
  words = [config.optimizer, f'lr={config.lr:g}']
  for name in optimizers.get_optimizer(config.optimizer).reads:
    value = getattr(config, name)
    if name != 'lr' and (value != getattr(defaults, name) or name == 'momentum'):
      words.append(f'{name}={value:g}' if not isinstance(value, bool) else
                   f'{name}={str(value).lower()}')
  return ' '.join(words)


def markdown(*, config: Config, summary: dict[str, Any], findings: list[dict[str, Any]],
             figures: dict[str, str], diagnostics: dict[str, Any]) -> str:
  """The report: title, summary table, findings, per-layer table, figures, config."""
  lines = [f'# Run report: `{summary.get("workdir", config.workdir)}`', '',
           f'{config.dataset}; MLP {list(config.hidden)} {config.activation}, '
           f'init={config.init}, batchnorm={config.batchnorm}; {optimizer_words(config)}, '
           f'{config.schedule} schedule, '
           f'batch {config.batch_size}.', '',
           markdown_table(['quantity', 'value'], summary_rows(summary))]
  lines += ['', '## Doctor', '']
  if findings:
    for f in findings:
      lines.append(f'- **{f["severity"]}** `{f["rule"]}`: {f["message"]}. '
                   f'*Fix:* {f["suggestion"]}.')
  else:
    lines.append(f'No findings: all {len(doctor.RULES)} rules pass.')
  rows = layer_rows(diagnostics)
  if rows:
    health = 'saturated / dead fraction'
    lines += ['', '## Layers (init → end)', '', markdown_table(
        ['layer', 'activation std', health, 'std ∂L/∂activation'], rows)]
  lines += ['', '## Figures', '']
  for name, caption in figures.items():
    lines += [f'### {caption}', '', f'![{caption}]({name})', '']
  lines += ['## Configuration', '', markdown_table(
      ['key', 'value'], [(k, f'`{v}`') for k, v in config.to_dict().items()])]
  return '\n'.join(lines) + '\n'


def write(path: pathlib.Path, **kwargs):
  """Writes :func:`markdown` to ``path``."""
  path.write_text(markdown(**kwargs))


def number(value: Any) -> float:
  """A float, NaN for what is not a finite number (JSON holds non-finite values as
  strings, a missing one is None)."""
  return float(value) if rundir.finite(value) else math.nan


def formatted(value: Any, spec: str, missing: str = '—') -> str:
  """``value`` formatted by ``spec`` if it is a finite number, else ``missing``."""
  return format(value, spec) if rundir.finite(value) else missing


def steps_to_threshold(records: Sequence[dict[str, Any]], threshold: float, *,
                       key: str = 'train_loss') -> int | None:
  """The step of the first record whose ``key`` is at most ``threshold``; None if
  none is before the first non-finite one (a run that diverged never reaches it).

  A record's train loss is the mean over its window of ``log_every`` steps, so the
  answer is the end of the first window whose mean is at or below the threshold: a
  multiple of ``log_every``.

  >>> steps_to_threshold([{'step': 10, 'train_loss': 2.0},
  ...                     {'step': 20, 'train_loss': 0.9}], 1.0)
  20
  """
  for record in records:
    if not rundir.finite(record.get(key)):
      return None
    if record[key] <= threshold:
      return record['step']
  return None


def steps_or_budget(records: Sequence[dict[str, Any]], threshold: float, *,
                    budget: int) -> tuple[int, bool]:
  """``(step, True)`` by :func:`steps_to_threshold`, or ``(budget, False)`` for a run
  that never reached the threshold (it counts as the whole budget)."""
  step = steps_to_threshold(records, threshold)
  return (budget, False) if step is None else (step, True)


def _number(value: float, spec: str = '.4f') -> str:
  return format(value, spec) if math.isfinite(value) else str(value)


def _pair(first, second, spec: str) -> str:
  return (f'{format(first, spec)} → {format(second, spec)}' if second is not None
          else format(first, spec))


# Sweeps: one row per member, and the mean ± std over seeds.

METRICS = ('initial_loss', 'final_train_loss', 'final_train_accuracy',
           'final_test_loss', 'final_test_accuracy', 'wall_time_s')
"""The numbers of a run's summary that a sweep's results collect."""


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


def mean_std(pair, fmt='{:.3f}') -> str:
  """``mean ± std`` (just the mean when std is 0; '–' without a value)."""
  mean, std = pair
  if mean is None:
    return '–'
  return fmt.format(mean) + (f' ± {fmt.format(std)}' if std else '')


def cell(row: dict[str, Any], key: str, fmt: str = '{:.3f}') -> str:
  """``row[key]`` formatted, or '–' when it is not a number."""
  value = row.get(key)
  return fmt.format(value) if isinstance(value, (int, float)) else '–'


def sweep_markdown(rows: list[dict[str, Any]], groups: list[dict[str, Any]],
                   varied: list[str]) -> str:
  """The body of a sweep's ``results.md``: a row per member, then mean ± std over
  seeds."""
  lines = [f'{len(rows)} members; varied: {", ".join(varied) or "nothing"}.',
           '', '## Per member', '', markdown_table(
               ['member', 'status', 'initial loss', 'train loss', 'train acc', 'test loss',
                'test acc', 'wall s'],
               [[r['member'], r['status'] + (f' @ {r["diverged_at_step"]}'
                                             if r.get('diverged_at_step') else ''),
                 cell(r, 'initial_loss'), cell(r, 'final_train_loss'),
                 cell(r, 'final_train_accuracy', '{:.2%}'), cell(r, 'final_test_loss'),
                 cell(r, 'final_test_accuracy', '{:.2%}'), cell(r, 'wall_time_s', '{:.1f}')]
                for r in rows])]
  if 'seed' in varied:
    keys = [k for k in varied if k != 'seed']
    lines += ['', '## Mean ± std over seeds', '', markdown_table(
        [*keys, 'seeds', 'diverged', 'initial loss', 'test acc', 'test loss'],
        [[*(format_value(g[k]) for k in keys), f'{g["n"]}/{g["of"]}', g['diverged'],
          mean_std(g['initial_loss']), mean_std(g['final_test_accuracy'], '{:.2%}'),
          mean_std(g['final_test_loss'])] for g in groups])]
  return '\n'.join(lines) + '\n'


def csv_text(rows: list[dict[str, Any]]) -> str:
  """Rows as CSV, one column per key any row has (in order of appearance)."""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()
