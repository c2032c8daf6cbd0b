"""Training runs: one run, or a sweep over every flag given several values (a grid).

Members: the grid of the comma-separated flags (``--init=normal,kaiming --seed=0,1``:
four runs). Summarizes: ``results.md`` and ``results.csv`` (a row per member; mean ±
std over seeds when seeds vary), heatmaps of test accuracy and initial loss over the
varied settings, and every member's loss curve. A single run is ``train.fit`` in
``--workdir`` itself (``runner.run_single``).
"""

from typing import Any

from fundamentals import plots
from fundamentals import report
from fundamentals import runner


def summarize(context: runner.Context, results: dict[str, runner.Result]
              ) -> runner.Summary:
  rows = []
  for name, r in results.items():
    row: dict[str, Any] = dict(r.settings, member=name, status=r.status)
    if r.summary is not None:
      row.update(diverged_at_step=r.summary.get('diverged_at_step'),
                 **{k: r.summary.get(k) for k in report.METRICS})
    rows.append(row)
  varied = list(next(iter(results.values())).settings) if results else []
  groups = report.aggregate(rows, varied)
  figures = plots.sweep_figures(groups, varied, {name: r.records
                                                 for name, r in results.items()})
  text = report.sweep_markdown(rows, groups, varied)
  text += ''.join(f'\n![{name}]({name})\n' for name in figures)
  return runner.Summary('Sweep results', text, figures=figures,
                        files={'results.csv': report.csv_text(rows)},
                        values={'rows': rows}, report_name='results.md')


EXPERIMENT = runner.Experiment(
    name='train',
    description='Trains one model with the given flags, or the grid of every flag '
                'given several values.',
    summarize=summarize,
    verbose=True)
