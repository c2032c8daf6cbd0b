"""``report.md``: a run in one page — summary table, the doctor's findings, figures."""

import math
import pathlib
from typing import Any

from fundamentals import doctor
from fundamentals.config import Config


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


def markdown(*, config: Config, summary: dict[str, Any], findings: list[dict[str, Any]],
             figures: dict[str, str], diagnostics: dict[str, Any]) -> str:
  """The report: title, summary table, findings, per-layer table, figures, config."""
  lines = [f'# Run report: `{summary.get("workdir", config.workdir)}`', '',
           f'{config.dataset}; MLP {list(config.hidden)} {config.activation}, '
           f'init={config.init}, batchnorm={config.batchnorm}; SGD lr={config.lr:g} '
           f'momentum={config.momentum:g}, {config.schedule} schedule, '
           f'batch {config.batch_size}.', '',
           '| quantity | value |', '| --- | --- |']
  lines += [f'| {name} | {value} |' for name, value in summary_rows(summary)]
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
    lines += ['', '## Layers (init → end)', '',
              f'| layer | activation std | {health} | std ∂L/∂activation |',
              '| --- | --- | --- | --- |']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  lines += ['', '## Figures', '']
  for name, caption in figures.items():
    lines += [f'### {caption}', '', f'![{caption}]({name})', '']
  lines += ['## Configuration', '', '| key | value |', '| --- | --- |']
  lines += [f'| {k} | `{v}` |' for k, v in config.to_dict().items()]
  return '\n'.join(lines) + '\n'


def write(path: pathlib.Path, **kwargs):
  """Writes :func:`markdown` to ``path``."""
  path.write_text(markdown(**kwargs))


def _number(value: float, spec: str = '.4f') -> str:
  return format(value, spec) if math.isfinite(value) else str(value)


def _pair(first, second, spec: str) -> str:
  return (f'{format(first, spec)} → {format(second, spec)}' if second is not None
          else format(first, spec))
