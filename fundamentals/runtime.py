"""Where and how JAX runs: platform, persistent compilation cache, hosts and devices.

Everything here configures JAX once, before the first computation (``launch.py`` calls
:func:`configure` first thing); :func:`data_mesh` is the device mesh a run shards its
batches over; :func:`environment` is what a run records of all this, and of the code.
"""

import contextlib
import copy
import dataclasses
import errno
import functools
import importlib.metadata
import logging
import os
import pathlib
import platform as platform_lib
import re
import subprocess
import time
from typing import Any, Callable, Iterator, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fundamentals import rundir
from fundamentals.config import Knobs, knob

T = TypeVar('T')

# --platform values: '' lets JAX pick (accelerator when present, else CPU).
PLATFORMS = ('', 'cpu', 'cuda', 'rocm', 'tpu')
# Computations that take less to compile than this are not worth a cache file.
MIN_CACHED_COMPILE_S = 0.2
BATCH_AXIS = 'batch'
# jax.monitoring's event for one XLA compilation (or persistent-cache load).
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
# The distributions whose versions a run's numbers depend on (environment()).
RECORDED_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'tensorflow-datasets')
GIT_TIMEOUT_S = 5.0


def seconds_since_process_start() -> float:
  """Wall seconds since this process started (Linux ``/proc``; elsewhere since this
  module was imported)."""
  try:
    stat = pathlib.Path('/proc/self/stat').read_text()
    ticks = int(stat.rsplit(')', 1)[1].split()[19])
    uptime = float(pathlib.Path('/proc/uptime').read_text().split()[0])
    return uptime - ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def default_compilation_cache() -> str:
  """``$FUNDAMENTALS_CACHE/jax_compilation`` (default ``~/.cache/fundamentals/…``)."""
  return str(rundir.default_cache_dir() / 'jax_compilation')


def enable_compilation_cache(path: str | os.PathLike):
  """Turns on JAX's persistent compilation cache in ``path``.

  A later process that compiles the same program (same model structure, shapes,
  JAX/XLA version and flags) loads the executable instead of compiling it: the
  executable is the same, so the numbers are bit-identical; only the compile time
  (about 1–2 s per variant of the train step on a 2-core CPU) goes.
  """
  path = pathlib.Path(path).expanduser()
  if path.exists() and not path.is_dir():
    raise FileExistsError(f'--compilation_cache={path} is a file, not a folder; choose '
                          'a folder, or give --compilation_cache= (empty) to turn it off')
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    code = f'{errno.errorcode.get(e.errno, e.errno)}: ' if e.errno else ''
    raise type(e)(f'--compilation_cache={path} cannot be made ({code}{e.strerror or e}); '
                  'choose another folder, or give --compilation_cache= (empty) to turn '
                  'it off') from None
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_CACHED_COMPILE_S)


def initialize_distributed(*, coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1):
  """``jax.distributed.initialize`` for multi-host runs (one process per host).

  Without arguments JAX detects the cluster (SLURM, Open MPI, TPU pods, …) from its
  environment; otherwise all three must be given: the ``host:port`` of process 0,
  how many processes there are, and this one's index.
  """
  given = [bool(coordinator_address), num_processes > 0, process_id >= 0]
  if any(given) and not all(given):
    raise ValueError(
        f'coordinator_address={coordinator_address!r}, num_processes={num_processes} and '
        f'process_id={process_id} must be given together (or none, to let JAX detect '
        'the cluster)')
  if all(given):
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id} must be in [0, {num_processes})')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()


@dataclasses.dataclass(frozen=True)
class Options(Knobs):
  """Where a run's JAX computations happen: set once per process (:func:`configure`)."""
  platform: str = knob('', 'JAX platform to run on; empty: JAX chooses (an accelerator '
                       'when present, else CPU).', group='devices',
                       choices=lambda: [repr(p) if not p else p for p in PLATFORMS])
  compilation_cache: str = knob(
      default_compilation_cache(), 'Directory of JAX\'s persistent compilation cache, '
      'so that later runs load compiled steps instead of compiling them (same numbers); '
      'empty turns it off.', group='devices')
  distributed: bool = knob(False, 'Multi-host: call jax.distributed.initialize(), which '
                           'detects the cluster (SLURM, Open MPI, TPU pods) from the '
                           'environment.', group='devices')
  coordinator_address: str = knob('', 'Multi-host without a detected cluster: host:port '
                                  'of process 0 (with --num_processes and --process_id).',
                                  group='devices')
  num_processes: int = knob(0, 'Multi-host: number of processes (hosts).',
                            group='devices')
  process_id: int = knob(-1, 'Multi-host: index of this process, 0-based.',
                         group='devices')

  def validate(self):
    if self.platform not in PLATFORMS:
      raise ValueError(f'platform={self.platform!r} is not one of {list(PLATFORMS)} '
                       "('' lets JAX choose)")
    given = [bool(self.coordinator_address), self.num_processes > 0, self.process_id >= 0]
    if any(given) and not all(given):
      raise ValueError(
          f'coordinator_address={self.coordinator_address!r}, num_processes='
          f'{self.num_processes} and process_id={self.process_id} must be given together '
          '(or none, to let JAX detect the cluster)')


def configure(options: Options | None = None, **kwargs):
  """Configures JAX before any computation: platform, compilation cache, hosts.

  ``options`` or its fields as keyword arguments. A ``platform`` asked for is checked
  at once, after the hosts are initialized (:func:`check_platform`).
  """
  options = options if options is not None else Options(**kwargs)
  previous = jax.config.jax_platforms
  if options.platform:
    jax.config.update('jax_platforms', options.platform)
  if options.compilation_cache:
    enable_compilation_cache(options.compilation_cache)
  if (options.distributed or options.coordinator_address or options.num_processes
      or options.process_id >= 0):
    initialize_distributed(coordinator_address=options.coordinator_address,
                           num_processes=options.num_processes,
                           process_id=options.process_id)
  if options.platform:
    check_platform(options.platform, otherwise=previous)


def check_platform(platform: str, *, otherwise: str | None = None):
  """Raises ValueError naming ``--platform`` and the platforms JAX does find, unless
  it has a device of ``platform`` (starting JAX's backends; after a failure, JAX is
  set back to ``otherwise``, its platforms before, so that it can still start).

  Without the check, a missing platform surfaced at the first computation, as a bare
  ``AssertionError`` from JAX (no CUDA plugin installed) or a RuntimeError.
  """
  # JAX logs each backend it fails to start (INFO): the one line below says it all.
  bridge_logger = logging.getLogger('jax._src.xla_bridge')
  level = bridge_logger.level
  bridge_logger.setLevel(logging.WARNING)
  try:
    try:
      jax.devices(platform)
      return
    except (RuntimeError, AssertionError) as e:  # AssertionError: no plugin at all.
      why = next((line.strip() for line in str(e).splitlines() if line.strip()),
                 f'jaxlib has no {platform} plugin installed')
      why = re.sub(r'\s*\(set JAX_PLATFORMS=.*\)$', '', why)
    jax.config.update('jax_platforms', otherwise)
    found = [p for p in PLATFORMS if p and _has_devices(p)]
  finally:
    bridge_logger.setLevel(level)
  raise ValueError(f'--platform={platform}: JAX finds no {platform} device here ({why});'
                   f' available: {", ".join(found) or "none"} (leave --platform unset to '
                   'let JAX choose)')


def _has_devices(platform: str) -> bool:
  try:
    return bool(jax.devices(platform))
  except (RuntimeError, AssertionError):
    return False


def data_mesh(batch_size: int) -> Mesh | None:
  """A 1-D mesh over all devices (all hosts) along the batch axis; None on one device.

  Raises ValueError when ``batch_size`` does not split evenly over the devices.
  """
  devices = jax.devices()
  if len(devices) == 1:
    return None
  check_batch_splits(batch_size)
  return Mesh(np.array(devices), (BATCH_AXIS,))


def check_batch_splits(batch_size: int):
  """Raises ValueError unless ``batch_size`` splits evenly over all devices (of all
  hosts), as data parallelism needs: checked when a run is planned, before any work."""
  count = jax.device_count()
  if count > 1 and batch_size % count:
    lower, upper = batch_size // count * count, -(-batch_size // count) * count
    raise ValueError(f'batch_size={batch_size} must be a multiple of the {count} devices '
                     f'it is split over (data parallelism), e.g. '
                     + (f'{lower} or ' if lower else '') + f'{upper}; or give '
                     '--data_parallel=false')


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over the mesh's devices."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def is_main_process() -> bool:
  """True on process 0, which alone writes a run's files in a multi-host run."""
  return jax.process_index() == 0


def on_main_process(fn: Callable[[], T]) -> T | None:
  """``fn()`` on process 0 only; its result there, None on the others.

  When it raises, every process raises (the others a RuntimeError), so that none
  goes on to wait in a collective for a process that stopped.
  """
  if jax.process_count() == 1:
    return fn()
  result, error = None, None
  if is_main_process():
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      error = e
  failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
  if error is not None:
    raise error
  if failed:
    raise RuntimeError('process 0 stopped with an error (see its output); stopping too')
  return result


def share(value, *, like):
  """Process 0's ``value`` (a pytree of arrays) on every process; the others pass
  ``like``, of the same structure, shapes and dtypes."""
  if jax.process_count() == 1:
    return value
  return multihost_utils.broadcast_one_to_all(value if is_main_process() else like)


def is_prng_key(x) -> bool:
  """Whether ``x`` is an array of typed PRNG keys (``jax.random.key``)."""
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree, mesh: Mesh):
  """``tree`` with every array whole on every device of ``mesh`` (all hosts).

  Typed PRNG keys go as their raw key data: ``device_put`` cannot place them on
  devices of other processes.
  """
  sharding = replicated(mesh)

  def put(x):
    if is_prng_key(x):
      return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(x), sharding),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


@contextlib.contextmanager
def compile_log() -> Iterator[list[tuple[str, float]]]:
  """Collects ``(function name, seconds)`` of every XLA compilation inside the block.

  A load from the persistent compilation cache counts too, with its (short) time.
  """
  compiles: list[tuple[str, float]] = []

  def listener(event: str, seconds: float, **metadata):
    if event == BACKEND_COMPILE_EVENT:
      compiles.append((str(metadata.get('fun_name', '?')), seconds))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def environment() -> dict[str, Any]:
  """What it takes to repeat a run elsewhere: versions, backend, devices, the code.

  ``{'python', 'packages': {distribution: version or None}, 'backend', 'devices':
  {'platform', 'kinds', 'count', 'local_count', 'process_count'}, 'xla_flags',
  'git': {'commit', 'dirty'} or None}``; ``git`` is None when the code is not a git
  work tree (an installed package) or git is missing. Initializes JAX's backends (call
  it once a run has started); measured once per process, a copy each call.
  """
  return copy.deepcopy(_environment())


@functools.cache
def _environment() -> dict[str, Any]:
  devices = jax.devices()
  return {
      'python': platform_lib.python_version(),
      'packages': {name: _version(name) for name in ('fundamentals', *RECORDED_PACKAGES)},
      'backend': jax.default_backend(),
      'devices': {'platform': devices[0].platform,
                  'kinds': sorted({d.device_kind for d in devices}),
                  'count': len(devices), 'local_count': jax.local_device_count(),
                  'process_count': jax.process_count()},
      # XLA's flags change the compiled programs (and can change the numbers).
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'git': git_state(pathlib.Path(__file__).resolve().parents[1]),
  }


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def git_state(root: pathlib.Path) -> dict[str, Any] | None:
  """``{'commit': HEAD's hash, 'dirty': whether files differ from it}`` when ``root``
  is the top of a git work tree; None otherwise, or when git is missing or slow."""

  def git(*args: str) -> str:
    return subprocess.run(['git', '-C', str(root), *args], capture_output=True,
                          text=True, check=True, timeout=GIT_TIMEOUT_S).stdout.strip()

  try:
    # Only the code's own repository: not one that happens to hold an installed copy.
    if pathlib.Path(git('rev-parse', '--show-toplevel')).resolve() != root.resolve():
      return None
    return {'commit': git('rev-parse', 'HEAD'), 'dirty': bool(git('status', '--porcelain'))}
  except (OSError, subprocess.SubprocessError):
    return None
