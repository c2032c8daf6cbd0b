"""Experiments as declarations, run by one shared runner through the sweep engine.

An :class:`Experiment` says what a lesson needs, as big_vision writes a sweep: which
runs (``members``: a function of the base config and the experiment's own settings
returning ``{name: Config overrides}``), what to measure of each (``analyze`` a
trained member, or ``measure`` one for an experiment that trains nothing), how to
summarize their results into a report with figures (``summarize``), and a computed
:class:`Check` of what the lesson should show (``check``).

:func:`run` does the rest, the same for every experiment: it builds and validates
every member's config, loads the data and checks the run directory before writing
anything; runs this shard's unfinished members through ``sweep.run`` (a training
member with ``train.fit``, a ``--vectorize``d group with ``train.fit_group``, a
measured one with ``measure``), each in its own sub-directory with its outputs, so a
killed experiment re-run with the same flags skips what finished; and once every
member of every shard is there, writes ``results.json``, the report and its figures.
An experiment's ``defaults`` fill only the fields not given explicitly, and the
``config.json`` it writes is the config that ran. Its ``scales`` are further defaults
by name (``--scale``): ``default`` is the lesson sized for a laptop (minutes),
``full`` the paper-sized setup, ``tiny`` a smoke test of seconds whose checks are
computed but not meaningful; explicit flags win over any scale.
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import TYPE_CHECKING, Any, Callable

from fundamentals import checkpoints
from fundamentals import config as config_lib
from fundamentals import data as data_lib
from fundamentals import report
from fundamentals import rundir
from fundamentals import runtime
from fundamentals import sweep
from fundamentals import train
from fundamentals.config import Config, Knobs, knob

if TYPE_CHECKING:  # matplotlib is imported by the first figure drawn (plots.Figure).
  from matplotlib.figure import Figure

RESULTS = 'results.json'
ANALYSIS = 'analysis.json'
MEASUREMENT = 'measurement.json'


@dataclasses.dataclass(frozen=True)
class Check:
  """What the lesson should show (``expected``), what this run measured
  (``observed``) and whether it showed it."""
  expected: str
  observed: str
  passed: bool


@dataclasses.dataclass(frozen=True)
class Scale:
  """An experiment's size by name: Config values and settings values that replace
  its defaults (explicit flags still win)."""
  config: dict[str, Any] = dataclasses.field(default_factory=dict)
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  description: str = ''


SCALES = ('tiny', 'default', 'full')


@dataclasses.dataclass(frozen=True)
class Summary:
  """An experiment's report: a title and Markdown body, figures by file name, other
  files by name (e.g. a CSV), and numbers for ``results.json``."""
  title: str
  text: str
  figures: dict[str, 'Figure'] = dataclasses.field(default_factory=dict)
  files: dict[str, str] = dataclasses.field(default_factory=dict)
  values: dict[str, Any] = dataclasses.field(default_factory=dict)
  report_name: str = 'report.md'


@dataclasses.dataclass(frozen=True)
class Context:
  """What an experiment's functions are given: the base config (defaults and flags
  applied), its settings, the experiment's directory and the dataset (loaded when
  first asked for, if it was not given)."""
  config: Config
  settings: Any
  workdir: pathlib.Path
  loaded: data_lib.Dataset | None = None
  scale: str = 'default'

  @property
  def dataset(self) -> data_lib.Dataset:
    if self.loaded is None:
      object.__setattr__(self, 'loaded', data_lib.load_configured(self.config))
    return self.loaded


@dataclasses.dataclass(frozen=True)
class Result:
  """One member's outcome: its training summary and/or its analysis or measurement."""
  name: str
  settings: dict[str, Any]
  config: Config
  summary: dict[str, Any] | None
  output: dict[str, Any] | None

  @property
  def status(self) -> str:
    if self.summary is not None:
      return self.summary.get('status', 'unknown')
    return 'measured' if self.output is not None else 'pending'

  @functools.cached_property
  def records(self) -> list[dict[str, Any]]:
    """The member's ``metrics.jsonl`` records (none for a measured member), read once."""
    path = pathlib.Path(self.config.workdir) / 'metrics.jsonl'
    return rundir.read_jsonl(path) if path.exists() else []

  @functools.cached_property
  def init_diagnostics(self) -> dict[str, Any] | None:
    """The per-layer diagnostics of the init (the first step's batch, before its
    update) from the member's ``diagnostics.json``; None if it measured none."""
    measured = _read_json(pathlib.Path(self.config.workdir) / 'diagnostics.json')
    return (measured or {}).get('init', {}).get('scalars')

  @property
  def diagnostics_series(self) -> list[tuple[int, dict[str, Any]]]:
    """``(step, diagnostics)`` over training: the init at step 0 (if measured), then
    every record that has diagnostics."""
    init = [(0, self.init_diagnostics)] if self.init_diagnostics else []
    return init + [(r['step'], r['diagnostics']) for r in self.records
                   if 'diagnostics' in r]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A lesson as a declaration (module docstring).

  Attributes:
    name: the registry key, ``--experiment=NAME``.
    description: one line for ``--experiment=list``.
    members: ``members(config, settings) -> {name: overrides}``; None: the grid of
      the command line's comma-separated flags (the ``train`` experiment).
    defaults: Config values this experiment runs with unless given explicitly.
    settings: a frozen dataclass of its own knobs (``config.knob``), flags
      ``--<settings_prefix><field>``; None if it has none.
    settings_prefix: the prefix of those flags.
    measure: ``measure(context, member) -> dict`` for an experiment that trains
      nothing: each member is measured instead of trained.
    analyze: ``analyze(context, member, fit) -> dict`` of a trained member (its final
      state is in ``fit``), kept beside its run.
    summarize: ``summarize(context, results) -> Summary``, results by member name.
    check: ``check(context, results) -> list[Check]``.
    verbose: show each member's own output (else one line per member).
    paper: the result it reproduces (authors, year, figure), for ``--experiment=list``
      and the report; empty for a lesson of the course.
    scales: ``{'tiny' | 'full': Scale}``, values replacing ``defaults`` and the
      settings' defaults at that scale (module docstring); ``default`` is none.
    needs_data: whether its members use the dataset (else it is not loaded unless
      asked for: ``Context.dataset``).
    inherits: ``inherits(settings, overrides) -> Config overrides`` taken from
      elsewhere (the kept model an ``evaluate`` reads: its data), below the explicit
      flags ``overrides``.
    check_inputs: ``check_inputs(context)`` raises ValueError or OSError for inputs
      that only the experiment can judge (a kept model's classes against the data's),
      at planning, before anything is written; ``context.dataset`` loads the data
      once for planning and work.
  """
  name: str
  description: str
  members: Callable[[Config, Any], dict[str, dict[str, Any]]] | None = None
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  settings: type | None = None
  settings_prefix: str = ''
  measure: Callable[[Context, sweep.Member], dict[str, Any]] | None = None
  analyze: Callable[[Context, sweep.Member, train.Fit], dict[str, Any]] | None = None
  summarize: Callable[[Context, dict[str, Result]], Summary] | None = None
  check: Callable[[Context, dict[str, Result]], list[Check]] | None = None
  verbose: bool = False
  paper: str = ''
  scales: dict[str, Scale] = dataclasses.field(default_factory=dict)
  needs_data: bool = True
  inherits: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
  check_inputs: Callable[[Context], None] | None = None

  def scale(self, name: str) -> Scale:
    """The scale ``name``; raises ValueError naming the ones this experiment has."""
    if name == 'default':
      return Scale()
    if name not in self.scales:
      have = ['default', *sorted(self.scales)]
      raise ValueError(f'--scale={name}: --experiment={self.name} has the scales '
                       f'{", ".join(have)}' + ('' if name in SCALES else
                                               f' (scales: {", ".join(SCALES)})'))
    return self.scales[name]

  def configure(self, overrides: dict[str, Any] | None = None, *,
                scale: str = 'default') -> Config:
    """The base config: this experiment's defaults, those of ``scale``, then the
    explicit ``overrides``."""
    # A lesson's members keep no model and draw no confusion matrix (the flags ask);
    # train runs do.
    own_runs = self.members is None
    return Config(**{'keep_model': own_runs, 'classification_figures': own_runs,
                     **self.defaults,
                     **self.scale(scale).config, **(overrides or {}),
                     'experiment': self.name})

  def default_settings(self, overrides: dict[str, Any] | None = None, *,
                       scale: str = 'default'):
    """Its settings: their defaults, those of ``scale``, then ``overrides``."""
    if self.settings is None:
      if overrides:
        raise ValueError(f'--experiment={self.name} has no settings; got {sorted(overrides)}')
      return None
    return config_lib.build(self.settings, {**self.scale(scale).settings,
                                            **(overrides or {})})


def render(module_file: str, **values) -> str:
  """The report template beside an experiment module (``<module>.md``), its
  ``{placeholders}`` filled by ``str.format`` from ``values``."""
  return pathlib.Path(module_file).with_suffix('.md').read_text().format(**values)


def settings_dict(settings) -> dict[str, Any]:
  return dataclasses.asdict(settings) if settings is not None else {}


def prepare(experiment: Experiment, config: Config, *, settings=None,
            axes: dict[str, list[Any]] | None = None,
            dataset: data_lib.Dataset | None = None, overwrite: bool = False,
            scale: str = 'default'
            ) -> tuple[Context, list[sweep.Member], dict[str, Any]]:
  """Everything checked before anything is written: the members' configs, the data
  (each member's batches fit, and split over the devices), the directory, the
  experiment's own ``check_inputs``. Returns the context, the members and the
  manifest. Raises ValueError, FileNotFoundError or FileExistsError."""
  if axes and experiment.members is not None:
    raise ValueError(f'sweeps vary the train experiment; --experiment={experiment.name} '
                     f'takes single values, but {sorted(axes)} have several')
  settings = (settings if settings is not None
              else experiment.default_settings(scale=scale))
  workdir = pathlib.Path(config.workdir or rundir.default_path(experiment.name))
  config = dataclasses.replace(config, experiment=experiment.name, workdir=str(workdir))
  if experiment.members is None:
    members = sweep.expand(config, axes or {}, workdir=workdir)
  else:
    members = sweep.named(config, experiment.members(config, settings), workdir=workdir)
  manifest = sweep.manifest(config, members, experiment=experiment.name, axes=axes,
                            settings=settings_dict(settings), scale=scale)
  if workdir.exists() and not workdir.is_dir():
    raise FileExistsError(f'--workdir={workdir} exists and is not a directory')
  sweep.check_manifest(workdir, manifest, overwrite=overwrite)
  if experiment.needs_data:
    dataset = dataset if dataset is not None else data_lib.load_configured(config)
    for member in members:
      train.check_fits(member.config, dataset)
  if experiment.measure is None:  # Members that train: their batches split over devices.
    for member in members:
      check_devices(member.config)
  context = Context(config, settings, workdir, dataset, scale)
  if experiment.check_inputs is not None:
    experiment.check_inputs(context)
  return context, members, manifest


def check_devices(config: Config):
  """Raises ValueError unless a run of ``config`` can be placed on this process's
  devices (data parallelism: its batch splits evenly over them)."""
  if config.data_parallel:
    runtime.check_batch_splits(config.batch_size)


def run(experiment: Experiment, config: Config, *, settings=None,
        axes: dict[str, list[Any]] | None = None,
        dataset: data_lib.Dataset | None = None, shard: tuple[int, int] = (0, 1),
        vectorize: bool = False, overwrite: bool = False, scale: str = 'default',
        echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Runs ``experiment`` (module docstring); returns its ``results.json`` content.
  ``config`` and ``settings`` are as run (``scale`` only names them in the report)."""
  prepared = prepare(experiment, config, settings=settings, axes=axes, dataset=dataset,
                     overwrite=overwrite, scale=scale)
  return execute(experiment, *prepared, shard=shard, vectorize=vectorize,
                 overwrite=overwrite, echo=echo)


def execute(experiment: Experiment, context: Context, members: list[sweep.Member],
            manifest: dict[str, Any], *, shard: tuple[int, int] = (0, 1),
            vectorize: bool = False, overwrite: bool = False,
            echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Runs the prepared members of this shard (:func:`prepare`), then :func:`finish`."""
  started = time.time()
  mine = sweep.shard(members, *shard)
  if experiment.members is None:
    echo(f'sweep directory {context.workdir}; re-run the same command with '
         f'--workdir={context.workdir} to resume')
    echo(sweep.plan(members, manifest['axes'], mine))
  else:
    echo(f'{experiment.name}: {len(members)} members'
         + (f', {len(mine)} in this shard' if len(mine) < len(members) else '')
         + f'; results in {context.workdir}/ (re-run the same command with '
         f'--workdir={context.workdir} to resume)')
  member_echo = echo if experiment.verbose else (lambda line: None)

  def run_member(member, *, overwrite, resume):
    t = time.time()
    if experiment.measure is not None:
      runtime.on_main_process(lambda: rundir.start(member.config, overwrite=True))
      try:
        output = experiment.measure(context, member)
        runtime.on_main_process(lambda: rundir.write_json(
            pathlib.Path(member.config.workdir) / MEASUREMENT, output))
      finally:  # The claim rundir.start took (sweep.taken holds its own).
        runtime.on_main_process(lambda: rundir.release(member.config.workdir))
      _report_member(echo, experiment, member, None, time.time() - t)
      return
    fit = train.fit(member.config, dataset=context.dataset, overwrite=overwrite,
                    resume=resume, echo=member_echo)
    _analyze(context, experiment, member, fit)
    _report_member(echo, experiment, member, fit.summary, time.time() - t)

  def run_group(batch, *, overwrite, resume):
    t = time.time()
    fits = train.fit_group([m.config for m in batch], dataset=context.dataset,
                           overwrite=overwrite, resume=resume, echo=member_echo)
    for member, fit in zip(batch, fits):
      _analyze(context, experiment, member, fit)
      _report_member(echo, experiment, member, fit.summary, (time.time() - t) / len(batch))

  sweep.run(members, workdir=context.workdir, manifest=manifest, run_member=run_member,
            run_group=run_group if vectorize and experiment.measure is None else None,
            group_key=train.canonical_config, shard_spec=shard, overwrite=overwrite,
            done=lambda m: is_done(experiment, m),
            files={'config.json': context.config.to_dict()}, echo=echo)
  return finish(experiment, context, members, seconds=time.time() - started, echo=echo)


def _analyze(context: Context, experiment: Experiment, member: sweep.Member,
             fit: train.Fit):
  if experiment.analyze is not None:
    output = experiment.analyze(context, member, fit)
    runtime.on_main_process(lambda: rundir.write_json(
        pathlib.Path(member.config.workdir) / ANALYSIS, output))


def _report_member(echo: Callable[[str], Any], experiment: Experiment,
                   member: sweep.Member, summary: dict[str, Any] | None, seconds: float):
  if experiment.verbose:
    return
  if summary is None:
    outcome = 'measured'
  elif summary['status'] == 'completed':
    outcome = (f'train loss {summary["final_train_loss"]:.4f}, test acc '
               f'{summary["final_test_accuracy"]:.2%}')
  else:
    outcome = f'{summary["status"]} at step {summary["diverged_at_step"]}'
  echo(f'    {outcome} ({seconds:.1f}s)')


def is_done(experiment: Experiment, member: sweep.Member) -> bool:
  """Whether a member finished earlier: measured, or trained (and analyzed)."""
  workdir = pathlib.Path(member.config.workdir)
  if experiment.measure is not None:
    return (workdir / MEASUREMENT).exists()
  return sweep.is_finished(member) and (experiment.analyze is None
                                        or (workdir / ANALYSIS).exists())


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return None


def collect(experiment: Experiment, members: list[sweep.Member]) -> dict[str, Result]:
  """Every member's result as its directory holds it (any shard may have run it)."""
  results = {}
  for member in members:
    workdir = pathlib.Path(member.config.workdir)
    done = is_done(experiment, member)
    summary = _read_json(workdir / 'summary.json') if done else None
    output = (_read_json(workdir / (MEASUREMENT if experiment.measure else ANALYSIS))
              if done else None)
    results[member.name] = Result(member.name, member.settings, member.config, summary,
                                  output)
  return results


SUMMARY_KEYS = ('status', 'diverged_at_step', 'steps', 'initial_loss',
                'expected_initial_loss', 'final_train_loss', 'final_train_accuracy',
                'final_validation_loss', 'final_validation_accuracy', 'final_test_loss',
                'final_test_accuracy', 'wall_time_s')


def finish(experiment: Experiment, context: Context, members: list[sweep.Member], *,
           seconds: float, echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Collects the results; once every member is there, summarizes and checks them.
  Writes (process 0) and returns ``results.json``'s content."""
  results = collect(experiment, members)
  missing = [name for name, r in results.items() if r.status == 'pending']
  content = {
      'experiment': experiment.name,
      'description': experiment.description,
      'paper': experiment.paper,
      'scale': context.scale,
      'config': context.config.to_dict(),
      'settings': settings_dict(context.settings),
      'finished': len(results) - len(missing),
      'of': len(results),
      'seconds_this_run': seconds,
      'members': [{'name': r.name, 'settings': r.settings, 'status': r.status,
                   'summary': ({k: r.summary.get(k) for k in SUMMARY_KEYS}
                               if r.summary else None),
                   'output': r.output} for r in results.values()],
  }
  if missing:
    echo(f'{len(results) - len(missing)}/{len(results)} members finished; '
         f'{len(missing)} to go (other shards, or re-run to resume): '
         + ', '.join(missing[:5]) + (', …' if len(missing) > 5 else ''))
    runtime.on_main_process(lambda: rundir.write_json(context.workdir / RESULTS, content))
    return content
  checks = [dataclasses.replace(c, passed=bool(c.passed))
            for c in (experiment.check(context, results) if experiment.check else [])]
  summary = (experiment.summarize(context, results) if experiment.summarize
             else Summary(f'{experiment.name}', ''))
  content['checks'] = [dataclasses.asdict(c) for c in checks]
  if checks:
    content['passed'] = all(c.passed for c in checks)
  content['values'] = summary.values
  # A vectorized member's wall time is its group's: shared by its vectorized_runs.
  member_seconds = sum(((r.summary or {}).get('wall_time_s') or 0.0)
                       / ((r.summary or {}).get('vectorized_runs') or 1)
                       for r in results.values())
  text = runtime.on_main_process(lambda: _write_report(
      context, summary, checks,
      flags=settings_flags(experiment, context.settings, scale=context.scale), seconds=seconds, member_seconds=member_seconds,
      content=content))
  if experiment.members is not None and text:  # A lesson's report is read at once.
    echo(text.rstrip())
  written = [summary.report_name, *summary.figures, *summary.files, RESULTS]
  echo(f'{len(results)}/{len(results)} members finished; wrote {context.workdir}/'
       + ', '.join(written))
  for c in checks:
    echo(f'check {"PASSED" if c.passed else "FAILED"}: {c.expected} — observed: '
         f'{c.observed}')
  return content


def check_section(checks: list[Check]) -> str:
  """The report's check table: what the lesson should show, and whether it did."""
  verdict = 'passed' if all(c.passed for c in checks) else 'FAILED'
  return (f'## Check: {verdict}\n\n' + report.markdown_table(
      ['expected', 'observed', 'passed'],
      [(c.expected, c.observed, 'yes' if c.passed else '**no**') for c in checks]))


def settings_flags(experiment: Experiment, settings, *, scale: str = 'default') -> str:
  """The flags of ``settings`` that differ from their defaults at ``scale``, as a
  command line writes them (`` --from=runs/X``), for the report's reproduce line."""
  if settings is None:
    return ''
  from fundamentals import cli  # pylint: disable=g-import-not-at-top  # absl flags.
  defaults = experiment.scale(scale).settings
  return ''.join(
      f' --{cli.flag_name(f, experiment.settings_prefix)}='
      f'{config_lib.format_value(getattr(settings, f.name))}'
      for f in dataclasses.fields(settings)
      if getattr(settings, f.name) != defaults.get(f.name, f.default))


def _write_report(context: Context, summary: Summary, checks: list[Check], *,
                  flags: str = '', seconds: float, member_seconds: float, content: dict[str, Any]) -> str:
  """Writes the figures, files, report and ``results.json``; returns the report."""
  for name, fig in summary.figures.items():
    fig.savefig(context.workdir / name)  # At the figure's own dpi.
  for name, text in summary.files.items():
    rundir.write_text(context.workdir / name, text)
  parts = [f'# {summary.title}']
  if checks:
    parts.append(check_section(checks))
  if summary.text:
    parts.append(summary.text.strip('\n'))
  if summary.report_name == 'report.md':
    scale = '' if context.scale == 'default' else f' --scale={context.scale}'
    parts.append(f'Scale: {context.scale}. Time: {seconds:.0f} s this invocation; the '
                 f'members\' runs {member_seconds:.0f} s in all. Reproduce: `python '
                 f'launch.py --experiment={context.config.experiment}{scale}{flags}` '
                 '(`results.json` holds every number).')
  text = '\n\n'.join(parts) + '\n'
  rundir.write_text(context.workdir / summary.report_name, text)
  rundir.write_json(context.workdir / RESULTS, content)
  return text


def summarize(experiment: Experiment, workdir: str | pathlib.Path, *,
              echo: Callable[[str], Any] = print) -> dict[str, Any]:
  """Collects the results of an experiment or sweep in ``workdir`` (all shards) and
  writes its results and report again, without running anything."""
  manifest = sweep.read_manifest(workdir)
  base = Config.from_dict({**manifest['base'], 'workdir': str(workdir)})
  settings = (config_lib.build(experiment.settings, manifest.get('settings', {}))
              if experiment.settings is not None else None)
  members = sweep.from_manifest(manifest, workdir=workdir)
  context = Context(base, settings, pathlib.Path(workdir),
                    scale=manifest.get('scale', 'default'))
  return finish(experiment, context, members, seconds=0.0, echo=echo)


@dataclasses.dataclass(frozen=True)
class Options(Knobs):
  """How ``launch.py`` runs an experiment: these change no number of it."""
  overwrite: bool = knob(False, 'Replace a run, sweep or experiment already in --workdir.',
                         group='run')
  config: str = knob('', 'A run\'s config.json to start from: its values replace the '
                     'defaults, flags given beside it win, and the run gets a new '
                     '--workdir (the file\'s experiment and workdir are not taken).',
                     group='run')
  resume: bool = knob(False, 'Go on with the interrupted run in --workdir from its last '
                      'checkpoint (same flags); sweeps and experiments always do.',
                      group='run')
  sweep_shard: str = knob('0/1', 'k/n: run only members k, k+n, k+2n, ... of a sweep or '
                          'experiment (for job arrays).', group='sweep')
  summarize: bool = knob(False, 'Only collect the results of the sweep or experiment in '
                         '--workdir (all shards), running nothing.', group='sweep')
  vectorize: bool = knob(False, 'Train members that differ only in seed, init, output '
                         'init/scale, lr or momentum together, vmapped in one jitted '
                         'program (members of one structure share one compilation either '
                         'way).', group='sweep')
  scale: str = knob('default', 'Size of an experiment: default (minutes on a laptop '
                    'CPU), full (the paper-sized setup), tiny (seconds; a smoke test '
                    'whose checks are not meaningful). Explicit flags win over it.',
                    group='run', choices=lambda: list(SCALES))

  def validate(self):
    sweep.parse_shard(self.sweep_shard)
    if self.scale not in SCALES:
      raise ValueError(f'--scale={self.scale}: must be one of {", ".join(SCALES)}')

  @property
  def shard(self) -> tuple[int, int]:
    return sweep.parse_shard(self.sweep_shard)


def plan(experiment: Experiment, overrides: dict[str, Any], *,
         axes: dict[str, list[Any]] | None = None,
         settings: dict[str, Any] | None = None,
         options: Options = Options(), experiments: dict[str, Experiment] | None = None,
         echo: Callable[[str], Any] = print) -> Callable[[], Any]:
  """Checks everything a launch needs (configs, data, directory, what to resume)
  and returns the work itself, a function of no arguments: nothing is written, and
  no work done, before every user error has been raised (ValueError, OSError).

  Args:
    experiment: what to run.
    overrides: the Config fields given explicitly (they win over the experiment's
      defaults).
    axes: the sweep axes (several values of a flag).
    settings: the experiment's settings given explicitly (they win over its scale's
      and its own defaults).
    options: how to run it (``options.scale``: which defaults).
    experiments: the registry, for ``--summarize`` (which reads the experiment's
      name from the directory).
  """
  if options.summarize:
    config = experiment.configure({k: v for k, v in overrides.items() if k != 'lr'})
    if not config.workdir:
      raise ValueError('--summarize needs the --workdir of a sweep or experiment')
    check_summarizable(config.workdir)
    name = sweep.read_manifest(config.workdir).get('experiment', 'train')
    chosen = (experiments or {}).get(name, experiment if name == experiment.name else None)
    if chosen is None:
      raise ValueError(f'{config.workdir} holds the experiment {name!r}, which this '
                       'version does not know')
    return lambda: summarize(chosen, config.workdir, echo=echo)
  built_settings = experiment.default_settings(settings, scale=options.scale)
  if options.config:
    overrides = {**config_file_overrides(options.config), **overrides}
  if experiment.inherits is not None:
    overrides = {**experiment.inherits(built_settings, overrides), **overrides}
  config, dataset = resolve_auto_lr(experiment, overrides, axes=axes, scale=options.scale,
                                    echo=echo)
  if experiment.members is None and not axes:
    return _plan_single(config, options, dataset=dataset, echo=echo)
  if options.resume:
    raise ValueError('--resume goes on with one training run; sweeps and experiments '
                     'resume by re-running the same command with the same --workdir')
  prepared = prepare(experiment, config, settings=built_settings, axes=axes,
                     overwrite=options.overwrite, dataset=dataset, scale=options.scale)
  return lambda: execute(experiment, *prepared, shard=options.shard,
                         vectorize=options.vectorize, overwrite=options.overwrite,
                         echo=echo)


def check_summarizable(workdir: str | pathlib.Path):
  """Raises FileNotFoundError, NotADirectoryError or ValueError saying what
  ``--workdir`` is instead, unless it may hold a sweep or experiment for
  ``--summarize`` (whose ``sweep.json`` :func:`sweep.read_manifest` then reads)."""
  path = pathlib.Path(workdir)
  if not path.exists():
    raise FileNotFoundError(f'--summarize: --workdir={path} holds no sweep or experiment: '
                            'it does not exist; give the --workdir of one')
  if not path.is_dir():
    raise NotADirectoryError(f'--summarize: --workdir={path} holds no sweep or experiment: '
                             'it is a file; give the --workdir of one')
  if not (path / sweep.MANIFEST).exists() and (path / 'config.json').exists():
    parent = path.resolve().parent
    raise ValueError(
        f'--summarize: --workdir={path} holds a single run, not a sweep or experiment: '
        'its results are its summary.json and report.md'
        + (f'; it is a member of the sweep in {parent}: --summarize --workdir={parent}'
           if (parent / sweep.MANIFEST).exists() else ''))


def config_file_overrides(path: str | pathlib.Path) -> dict[str, Any]:
  """The Config values of a ``config.json`` (``--config``) as overrides, but its
  experiment and workdir; raises FileNotFoundError / ValueError naming the file."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'--config={path}: no such file (a run directory\'s '
                            'config.json, e.g. runs/X/config.json)')
  try:
    values = json.loads(path.read_text())
    Config.from_dict(values)  # Validated as a whole, with its own message.
  except (json.JSONDecodeError, TypeError, ValueError) as e:
    raise ValueError(f'--config={path}: not a readable config ({e})') from None
  return {k: v for k, v in values.items() if k not in ('experiment', 'workdir')}


def resolve_auto_lr(experiment: Experiment, overrides: dict[str, Any], *,
                    axes: dict[str, list[Any]] | None = None, scale: str = 'default',
                    echo: Callable[[str], Any] = print
                    ) -> tuple[Config, data_lib.Dataset | None]:
  """The base config, with ``--lr=auto`` replaced by the lr range test's suggestion
  for it (``lr_finder.suggest``: the model as configured, from its own init, which
  the run then starts from afresh). Returns the config and the dataset the test
  loaded (None if it ran no test)."""
  if overrides.get('lr') != 'auto' and 'auto' not in (axes or {}).get('lr', ()):
    return experiment.configure(overrides, scale=scale), None
  if 'lr' in (axes or {}):
    raise ValueError('--lr=auto takes one value (the suggestion for the base config)')
  from fundamentals import lr_finder  # pylint: disable=g-import-not-at-top
  probe = experiment.configure({k: v for k, v in overrides.items() if k != 'lr'},
                               scale=scale)
  dataset = data_lib.load_configured(probe)
  lr, how = lr_finder.suggest(probe, dataset)
  echo(f'--lr=auto: {lr:.4g} ({how})')
  return experiment.configure({**overrides, 'lr': lr}, scale=scale), dataset


def _plan_single(config: Config, options: Options, *,
                 dataset: data_lib.Dataset | None = None, echo) -> Callable[[], Any]:
  """One training run in ``--workdir`` itself, checked before anything is written."""
  if options.vectorize:
    echo('launch.py: --vectorize trains sweep members together; with one value per '
         'flag there is a single run, trained as usual')
  if options.resume:
    if not config.workdir:
      raise ValueError('--resume goes on with the run in --workdir: give its --workdir')
    if not (pathlib.Path(config.workdir) / 'config.json').exists():
      raise FileNotFoundError(f'--resume: --workdir={config.workdir} holds no run to go '
                              'on with')
    rundir.check_not_in_use(config.workdir)  # Before reading what another one writes.
    checkpoints.resume_step([config], overwrite=options.overwrite)
  else:
    config = dataclasses.replace(
        config, workdir=config.workdir or rundir.default_path(config.experiment))
    rundir.check_available(config.workdir, overwrite=options.overwrite)
  dataset = dataset if dataset is not None else data_lib.load_configured(config)
  train.check_fits(config, dataset)
  check_devices(config)
  return lambda: train.train(config, dataset=dataset, overwrite=options.overwrite,
                             resume=options.resume, echo=echo)
