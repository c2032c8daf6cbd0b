"""The sweep engine: members run one by one or in groups, sharded, resumable.

A *member* is the base :class:`Config` with some fields overridden (its
``settings``), run in its own sub-directory of the sweep's. Members come from a grid,
the Cartesian product of flag values (:func:`expand`: ``--init=normal,kaiming
--seed=0,1`` is four members named ``init-normal__seed-0`` …), or from an
experiment's declaration (:func:`named`). :func:`run` runs this shard's unfinished
members and skips those that finished (a re-run after a kill goes on where it
stopped); ``--sweep_shard=k/n`` runs members k, k+n, k+2n, … so that n jobs cover a
sweep disjointly. ``sweep.json`` records what the sweep is, so a different sweep is
never mixed into its directory. Results, tables and figures are the runner's
(``fundamentals.runner``) and the experiments'.
"""

import dataclasses
import itertools
import json
import pathlib
from typing import Any, Callable, Sequence

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
  """Whether the member's run wrote a summary that says it finished."""
  path = pathlib.Path(member.config.workdir) / 'summary.json'
  if not path.exists():
    return False
  try:
    return json.loads(path.read_text()).get('status') in FINISHED
  except json.JSONDecodeError:
    return False


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
  """Refuses (FileExistsError) a directory that holds a different sweep, or a run."""
  path = workdir / MANIFEST
  if overwrite:
    return
  if not path.exists():
    if (workdir / 'config.json').exists():
      raise FileExistsError(f'--workdir={workdir} already holds a run; choose another '
                            '--workdir (or pass --overwrite to replace it)')
    return
  try:
    old = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise FileExistsError(f'{path} is damaged ({e}); use another --workdir or pass '
                          '--overwrite') from None
  same = (old.get('experiment', 'train') == new['experiment']
          and old.get('scale', 'default') == new.get('scale', 'default')
          and old['axes'] == json.loads(json.dumps(new['axes']))
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


def read_manifest(workdir: str | pathlib.Path) -> dict[str, Any]:
  """``sweep.json`` of ``workdir``; raises FileNotFoundError or ValueError saying why."""
  path = pathlib.Path(workdir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f'{workdir} holds no sweep or experiment ({MANIFEST} is '
                            'missing); --summarize needs the directory of one')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is damaged: {e}') from None


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
    if done(member) and not overwrite:
      echo(f'[{position[member.name]}/{len(mine)}] {member.name}: finished earlier, skipped')
    else:  # Never ran, or was interrupted: (re)start it.
      todo.append(member)
  batches = group(todo, group_key) if run_group is not None else [[m] for m in todo]
  for batch in batches:
    where = ','.join(str(position[m.name]) for m in batch)
    if len(batch) == 1:
      echo(f'[{where}/{len(mine)}] {batch[0].name}')
      run_member(batch[0], overwrite=True, resume=not overwrite)
    else:
      echo(f'[{where}/{len(mine)}] {len(batch)} members together: '
           + ', '.join(m.name for m in batch))
      run_group(batch, overwrite=True, resume=not overwrite)
  return todo
