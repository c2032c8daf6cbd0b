"""The sweep engine: members run one by one or in groups, sharded, resumable.

A *member* is the base :class:`Config` with some fields overridden (its
``settings``), run in its own sub-directory of the sweep's. Members come from a grid,
the Cartesian product of flag values (:func:`expand`: ``--init=normal,kaiming
--seed=0,1`` is four members named ``init-normal__seed-0`` …), or from an
experiment's declaration (:func:`named`). :func:`run` runs this shard's unfinished
members and skips those that finished (a re-run after a kill goes on where it
stopped); ``--sweep_shard=k/n`` runs members k, k+n, k+2n, … so that n jobs cover a
sweep disjointly, at once: each member's directory is taken (``rundir.claim``)
while it runs, the sweep's own directory is not, and its files are written
atomically. ``sweep.json`` records what the sweep is, wherever it lies (a sweep moved
elsewhere resumes there), so a different sweep is never mixed into its directory. A
member whose summary cannot be read is said to be run again, never silently. Results,
tables and figures are the runner's (``fundamentals.runner``) and the experiments'.
"""

import contextlib
import dataclasses
import itertools
import json
import pathlib
from typing import Any, Callable, Iterator, Sequence

from fundamentals import config as config_lib
from fundamentals import rundir
from fundamentals import runtime
from fundamentals.config import Config

FINISHED = ('completed', 'diverged')
MANIFEST = 'sweep.json'


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  settings: dict[str, Any]  # The fields it overrides (a grid's: those that vary).
  config: Config


def parse_axes(values: dict[str, Sequence[str]]) -> dict[str, list[Any]]:
  """Parses flag strings per Config field; raises ValueError naming a bad field or value."""
  fields = config_lib.fields_of(Config)
  axes = {}
  for name, raw in values.items():
    if name not in fields or not fields[name].metadata['sweep']:
      raise ValueError(f'{name!r} cannot be swept; sweepable: '
                       f'{config_lib.sweepable_fields()}')
    axes[name] = config_lib.parse_values(fields[name], raw)
  return axes


def member_name(settings: dict[str, Any]) -> str:
  """``field-value`` pairs of the varied settings, joined by ``__``."""
  return '__'.join(f'{k}-{config_lib.format_value(v)}' for k, v in settings.items()
                   ) or 'single'


def _build(base: Config, entries: list[tuple[str, dict[str, Any], dict[str, Any]]],
           workdir: str | pathlib.Path) -> list[Member]:
  """Members from ``(name, settings, overrides)``, every Config built (so validated)
  here: all invalid ones are reported together, before anything runs."""
  members, errors = [], []
  for name, settings, overrides in entries:
    try:
      config = dataclasses.replace(base, **overrides, experiment='train',
                                   workdir=str(pathlib.Path(workdir) / name))
    except (ValueError, TypeError) as e:
      errors.append(f'{name}: {e}')
      continue
    members.append(Member(name, settings, config))
  if errors:
    raise ValueError(f'{len(errors)} invalid sweep member(s): ' + '; '.join(errors))
  if len({m.name for m in members}) < len(members):
    raise ValueError(f'member names repeat: {[m.name for m in members]}')
  return members


def expand(base: Config, axes: dict[str, list[Any]], *, workdir: str | pathlib.Path
           ) -> list[Member]:
  """All members of the grid, in row-major order of ``axes``, named by what varies."""
  varied = [k for k, values in axes.items() if len(values) > 1]
  entries = []
  for combo in itertools.product(*axes.values()):
    values = dict(zip(axes, combo))
    settings = {k: values[k] for k in varied}
    entries.append((member_name(settings), settings, values))
  return _build(base, entries, workdir)


def named(base: Config, overrides: dict[str, dict[str, Any]], *,
          workdir: str | pathlib.Path) -> list[Member]:
  """Members as an experiment declares them: ``{name: {field: value}}``, in order."""
  return _build(base, [(name, dict(o), dict(o)) for name, o in overrides.items()],
                workdir)


def from_manifest(manifest: dict[str, Any], *, workdir: str | pathlib.Path  # pylint: disable=redefined-outer-name
                  ) -> list[Member]:
  """The members ``sweep.json`` records, as they were run (names, settings, order)."""
  base = Config.from_dict({**manifest['base'], 'workdir': str(workdir)})
  return _build(base, [(m['name'], m['settings'], m['settings'])
                       for m in manifest['members']], workdir)


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
  varied = ', '.join(f'{k} ({len(v)}: {",".join(map(config_lib.format_value, v))})'
                     for k, v in axes.items() if len(v) > 1)
  return (f'sweep: {len(members)} runs varying {varied or "nothing"}; this job runs '
          f'{len(mine)}')


def is_finished(member: Member) -> bool:
  """Whether the member's run wrote a summary that says it finished (completed or
  diverged; not ``interrupted``, which goes on from its checkpoint). A summary that
  cannot be read says nothing (:func:`unreadable_summary`)."""
  summary = _read_summary(pathlib.Path(member.config.workdir) / 'summary.json')
  return isinstance(summary, dict) and summary.get('status') in FINISHED


def unreadable_summary(member: Member) -> str:
  """Why the member's ``summary.json`` cannot be read ('' when it can, or when there
  is none): what :func:`run` says before running such a member again."""
  path = pathlib.Path(member.config.workdir) / 'summary.json'
  summary = _read_summary(path)
  if isinstance(summary, Exception):
    return f'{path} is unreadable ({summary})'
  if summary is not None and not isinstance(summary, dict):
    return f'{path} is damaged (a JSON {type(summary).__name__}, not an object)'
  return ''


def _read_summary(path: pathlib.Path) -> Any:
  """The JSON value of ``path``, None if there is no such file, or the error that
  reading it raised."""
  if not path.exists():
    return None
  try:
    return json.loads(path.read_bytes())
  except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError.
    return e


def manifest(base: Config, members: list[Member], *, experiment: str = 'train',
             axes: dict[str, list[Any]] | None = None,
             settings: dict[str, Any] | None = None,
             scale: str = 'default') -> dict[str, Any]:
  """What ``sweep.json`` records: the experiment, its scale, base config and
  settings, the grid's axes and every member's name and settings."""
  return {'experiment': experiment, 'scale': scale, 'base': base.to_dict(),
          'axes': axes or {}, 'settings': settings or {},
          'members': [{'name': m.name, 'settings': m.settings} for m in members]}


def check_manifest(workdir: pathlib.Path, new: dict[str, Any], *, overwrite: bool):
  """Refuses a directory that holds a different sweep (compared wherever it lies: a
  sweep moved elsewhere is the same sweep), a run, or a damaged ``sweep.json``
  (ValueError naming it); one that cannot be written, or where a member's folder is
  a file. Writes nothing."""
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise FileExistsError(f'--workdir={workdir} exists and is not a directory')
  rundir.check_writable(workdir)
  for member in new['members']:
    folder = workdir / member['name']
    if folder.exists() and not folder.is_dir():
      raise FileExistsError(f'{folder}, the folder of the member {member["name"]} of '
                            f'--workdir={workdir}, is a file; move it away')
  path = workdir / MANIFEST
  if overwrite:
    return
  if not path.exists():
    if (workdir / 'config.json').exists():
      raise FileExistsError(f'--workdir={workdir} already holds a run; choose another '
                            '--workdir (or pass --overwrite to replace it)')
    return
  old = _parse_manifest(path)
  same = (old.get('experiment', 'train') == new['experiment']
          and old.get('scale', 'default') == new.get('scale', 'default')
          and old.get('axes', {}) == json.loads(json.dumps(new['axes']))
          and old.get('settings', {}) == json.loads(json.dumps(new['settings']))
          and [m['name'] for m in old['members']] == [m['name'] for m in new['members']]
          and _same_config(old['base'], new['base']))
  if not same:
    raise FileExistsError(f'{workdir} holds a different sweep; use another --workdir '
                          'or pass --overwrite')


def _same_config(stored: dict[str, Any], base: dict[str, Any]) -> bool:
  """Whether a stored base config is ``base``, wherever the sweep now lies; fields
  added since it was written count as their defaults, so that older sweeps resume."""
  try:
    old = Config.from_dict({k: v for k, v in stored.items() if k != 'workdir'})
  except (ValueError, TypeError):  # Unknown or invalid fields: another version's sweep.
    return False
  return old == Config.from_dict({k: v for k, v in base.items() if k != 'workdir'})


def manifest_problem(value: Any) -> str:
  """What is wrong with the content of a ``sweep.json`` ('' if nothing): the fields
  that reading it needs, of the right types."""
  if not isinstance(value, dict):
    return f'a JSON {type(value).__name__}, not an object'
  if not isinstance(value.get('base'), dict):
    return 'no base config ("base")'
  members = value.get('members')
  if not isinstance(members, list) or not all(
      isinstance(m, dict) and isinstance(m.get('name'), str)
      and isinstance(m.get('settings'), dict) for m in members):
    return 'its "members" are not a list of {"name", "settings"}'
  for key in ('axes', 'settings'):
    if not isinstance(value.get(key, {}), dict):
      return f'its "{key}" are not an object'
  return ''


def _parse_manifest(path: pathlib.Path) -> dict[str, Any]:
  """The content of the ``sweep.json`` at ``path``; ValueError naming it if damaged."""
  try:
    value = json.loads(path.read_bytes())
    why = manifest_problem(value)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError.
    why = str(e)
  if why:
    raise ValueError(f'{path} is damaged ({why}); restore it from a copy, or pass '
                     '--overwrite to run the whole sweep again')
  return value


def read_manifest(workdir: str | pathlib.Path) -> dict[str, Any]:
  """``sweep.json`` of ``workdir``; raises FileNotFoundError or ValueError saying why."""
  path = pathlib.Path(workdir) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f'{workdir} holds no sweep or experiment ({MANIFEST} is '
                            'missing); --summarize needs the directory of one')
  manifest = _parse_manifest(path)  # pylint: disable=redefined-outer-name
  try:
    Config.from_dict({**manifest['base'], 'workdir': str(workdir)})
  except (ValueError, TypeError) as e:
    raise ValueError(f'{path}: its base config is not one this version reads ({e})'
                     ) from None
  return manifest


def group(members: list[Member], key: Callable[[Config], Any]) -> list[list[Member]]:
  """Members with equal ``key(config)``, in order of their first member."""
  groups: dict[Any, list[Member]] = {}
  for member in members:
    groups.setdefault(key(member.config), []).append(member)
  return list(groups.values())


def run(members: list[Member], *, workdir: str | pathlib.Path,
        manifest: dict[str, Any],  # pylint: disable=redefined-outer-name
        run_member: Callable[..., Any],
        run_group: Callable[..., Any] | None = None,
        group_key: Callable[[Config], Any] | None = None,
        shard_spec: tuple[int, int] = (0, 1), overwrite: bool = False,
        done: Callable[[Member], bool] = is_finished,
        files: dict[str, Any] | None = None,
        echo: Callable[[str], Any] = print) -> list[Member]:
  """Runs this shard's unfinished members; returns the members it ran.

  First ``sweep.json`` (refused if the directory holds another sweep or a run) and
  ``files``, ``{name: JSON value}`` (e.g. the experiment's ``config.json``), are
  written into ``workdir``.

  ``run_member(member, overwrite=True, resume=not overwrite)`` runs one member, going
  on from its checkpoint if it has one (not when the whole sweep is redone with
  ``overwrite``). With ``run_group``, the unfinished members with equal
  ``group_key(config)`` run together as ``run_group(members, overwrite=True,
  resume=not overwrite)`` (e.g. vmapped, ``--vectorize``). ``done(member)`` says
  whether a member finished earlier (default: its run's summary).
  """
  if run_group is not None and group_key is None:
    raise ValueError('run_group needs the group_key that says which members go together')
  workdir = pathlib.Path(workdir)
  mine = shard(members, *shard_spec)

  def start():
    check_manifest(workdir, manifest, overwrite=overwrite)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(workdir / MANIFEST, manifest)
    for name, value in (files or {}).items():
      rundir.write_json(workdir / name, value)

  # In a multi-host run process 0 writes the files; all stop if it cannot.
  runtime.on_main_process(start)
  position = {m.name: i for i, m in enumerate(mine, 1)}
  todo = []
  for member in mine:
    damaged = '' if overwrite else unreadable_summary(member)
    if damaged:  # Said, never silently: its run is done again, as if it never ended.
      echo(f'[{position[member.name]}/{len(mine)}] {member.name}: {damaged}; running it '
           'again')
      todo.append(member)
    elif done(member) and not overwrite:
      echo(f'[{position[member.name]}/{len(mine)}] {member.name}: finished earlier, skipped')
    else:  # Never ran, or was interrupted: (re)start it.
      todo.append(member)
  batches = group(todo, group_key) if run_group is not None else [[m] for m in todo]
  from fundamentals import train  # pylint: disable=g-import-not-at-top  # JAX: only to run.
  for batch in batches:
    if train.stop_requested():  # SIGTERM/SIGINT during the last member: no other starts.
      raise train.Stopped(train.stop_requested(), None, [m.config.workdir for m in batch])
    where = ','.join(str(position[m.name]) for m in batch)
    if len(batch) == 1:
      echo(f'[{where}/{len(mine)}] {batch[0].name}')
      with taken(batch):
        run_member(batch[0], overwrite=True, resume=not overwrite)
    else:
      echo(f'[{where}/{len(mine)}] {len(batch)} members together: '
           + ', '.join(m.name for m in batch))
      with taken(batch):
        run_group(batch, overwrite=True, resume=not overwrite)
  return todo


@contextlib.contextmanager
def taken(members: list[Member]) -> Iterator[None]:
  """The members' directories, taken (``rundir.claim``, by process 0) while they
  run: a job running the same member is refused, while the shards of one sweep,
  which run different members, share its directory."""
  paths = [pathlib.Path(m.config.workdir) for m in members]

  def claim_all():
    claimed = []
    try:
      for path in paths:
        claimed.append(rundir.claim(path))
    except OSError:
      for path in claimed:
        rundir.release(path)
      raise

  runtime.on_main_process(claim_all)
  try:
    yield
  finally:  # Local, no collective: a process that failed alone must not wait here.
    if runtime.is_main_process():
      for path in paths:
        rundir.release(path)
