"""The step benchmark: the project's train step against PyTorch's, measured side by side.

Each case runs in a fresh process (``python -m fundamentals.benchmark SPEC.json``,
one ``RESULT {json}`` line), and the cases run in interleaved rounds (A B A B …), so
that a drift of this shared machine's speed hits both sides of a comparison alike:
a ratio is taken per round between the JAX case and the PyTorch case of the same
model that ran beside it, and the median of those per-round ratios is the figure.

Cases (``plan``): the reference MLP 12288 → H → H → H → 30 (BatchNorm, tanh, SGD
momentum 0.9, lr 0.01, batch 256; ``model_config``) at H = 512 and H = 64, in
``float32`` and ``bfloat16`` (``--precision``; PyTorch: ``torch.autocast``), and the
sweep case: K seeds of the 64-wide model vectorized, sequential, and in PyTorch one
after another. The JAX side times ``train.compiled_steps`` (the step exactly as
``train.fit`` runs it: on-device batch gather from a per-epoch permutation and
normalization included); the PyTorch side ``fundamentals.torch_reference``, the same
model from the same initial weights.

Per case: steps/s (median of timed windows after warm-up), examples/s, compile
time, time from process start to the first finished step, evaluation throughput,
peak resident memory, achieved FLOP/s (matmul FLOPs counted exactly,
:func:`matmul_flops`) against the matmul peak measured in the same process with the
same library and precision, and the input pipeline's and diagnostics' shares of the
step time.
"""

import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from fundamentals import runtime

NUM_EXAMPLES = 4096
"""Examples of the benchmark's random uint8 dataset (16 batches of 256 per epoch)."""
IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 30
LAYERS = 3




def model_config(hidden: int, *, precision: str = 'float32', batch_size: int = 256,
                 seed: int = 0, data_seed: int = -1, workdir: str = ''):
  """The benchmarked run: the reference MLP of 3 hidden layers of ``hidden`` units."""
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  return Config(hidden=(hidden,) * LAYERS, activation='tanh', batchnorm=True,
                init='lecun', lr=0.01, momentum=0.9, schedule='constant',
                batch_size=batch_size, steps=10**6, precision=precision, seed=seed,
                data_seed=data_seed, workdir=workdir)


def matmul_flops(widths: list[int], batch_size: int) -> int:
  """Matmul FLOPs of one train step, exactly: 2·B·n_in·n_out per product.

  Forward y = x·W and the weight gradient ∂W = xᵀ·∂y for every Dense layer; the input
  gradient ∂x = ∂y·Wᵀ for every layer but the first (nothing needs ∂L/∂input).
  ``widths``: [in_features, *hidden, num_classes].
  """
  products = [n_in * n_out for n_in, n_out in zip(widths[:-1], widths[1:])]
  return 2 * batch_size * (2 * sum(products) + sum(products[1:]))


def random_dataset(num_examples: int = NUM_EXAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
  """Random uint8 images and labels (timing does not depend on what the pixels show)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, *IMAGE_SHAPE), dtype=np.uint8)
  return {'images': images,
          'labels': rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32),
          'mean': np.full(3, 0.5, np.float32), 'std': np.full(3, 0.25, np.float32)}


def time_steps(run: Callable[[int, int], float], *, start: int = 1,
               warmup_s: float = 1.0, window_s: float = 0.7, windows: int = 4
               ) -> dict[str, Any]:
  """Steps/s of ``run(first_step, count) -> loss`` (which waits for its result).

  Warm-up until ``warmup_s`` have passed (at least 2 calls), a calibration call, then
  ``windows`` timed windows of the same step count lasting about ``window_s`` each;
  the figure is their median.
  """
  step = start
  began = time.perf_counter()
  calls = 0
  while time.perf_counter() - began < warmup_s or calls < 2:
    run(step, 1)
    step, calls = step + 1, calls + 1
  t = time.perf_counter()
  run(step, 2)
  step += 2
  count = max(2, int(window_s / max((time.perf_counter() - t) / 2, 1e-6)))
  rates, loss = [], float('nan')
  for _ in range(windows):
    t = time.perf_counter()
    loss = run(step, count)
    rates.append(count / (time.perf_counter() - t))
    step += count
  return {'steps_per_s': statistics.median(rates), 'window_rates': rates,
          'window_steps': count, 'final_loss': loss}


def peak_resident_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_time(f: Callable[[], Any], *, budget_s: float = 1.5) -> float:
  """The fastest of repeated calls of ``f`` (which waits for its result): at least 2,
  then as many as fit in ``budget_s``."""
  times = []
  began = time.perf_counter()
  while len(times) < 2 or time.perf_counter() - began < budget_s:
    t = time.perf_counter()
    f()
    times.append(time.perf_counter() - t)
  return min(times)


def jax_matmul_peak(precision: str, *, size: int = 2048) -> float:
  """FLOP/s of a square ``size`` matmul in ``precision`` (float32 accumulation)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if precision == 'bfloat16' else jnp.float32
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  return 2 * size**3 / best_time(lambda: f(a, a).block_until_ready())


def torch_matmul_peak(precision: str, *, size: int = 2048) -> float:
  """The same with ``torch.mm`` (bfloat16: smaller, since without bf16 units it is slow)."""
  import torch  # pylint: disable=g-import-not-at-top
  size = size if precision == 'float32' else size // 2
  a = torch.randn(size, size).to(torch.bfloat16 if precision == 'bfloat16' else torch.float32)
  torch.mm(a, a)
  return 2 * size**3 / best_time(lambda: torch.mm(a, a))


def _dataset_object(arrays: dict[str, np.ndarray]):
  from fundamentals import data as data_lib  # pylint: disable=g-import-not-at-top
  names = tuple(str(i) for i in range(NUM_CLASSES))
  return data_lib.Dataset('benchmark', arrays['images'], arrays['labels'],
                          arrays['images'][:512], arrays['labels'][:512], names,
                          arrays['mean'], arrays['std'])


def measure_jax(spec: dict[str, Any]) -> dict[str, Any]:
  """One JAX case in this process (``spec``: ``plan``'s entries)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  members = spec.get('members', 1)
  shared = spec.get('shared_order', False)
  configs = [model_config(spec['hidden'], precision=spec['precision'],
                          batch_size=spec['batch_size'], seed=s,
                          data_seed=0 if shared else -1) for s in range(members)]
  dataset = _dataset_object(dict(np.load(spec['data'])))
  starts = [train.initial_state(c, dataset) for c in configs]
  vectorized = spec.get('mode') == 'vectorized'
  steps = train.compiled_steps(starts[0].graphs, train.canonical_config(configs[0]),
                               vectorized=vectorized, shared_order=vectorized and shared)
  images, labels = jax.device_put(dataset.train_images), jax.device_put(dataset.train_labels)
  mean, std = jax.device_put(dataset.mean), jax.device_put(dataset.std)
  steps_per_epoch = len(dataset.train_labels) // spec['batch_size']
  epochs = spec['epochs']

  def perms_of(start):
    return [train.epoch_permutation(start.shuffle_key, e, len(dataset.train_labels))
            for e in range(epochs)]

  if vectorized:
    states = [train._stack([s.state for s in starts])]  # pylint: disable=protected-access
    perms = [[p for p in perms_of(starts[0])]] if shared else [
        [jnp.stack(ps) for ps in zip(*[perms_of(s) for s in starts])]]
  else:
    states = [s.state for s in starts]
    perms = [perms_of(s) for s in starts]
  chunk = spec.get('chunk', 0)

  def run(first, count, *, diagnostics=False):
    metrics = None
    for i in range(len(states)):
      if chunk and not diagnostics:
        metrics = _run_chunked(steps, i, states, perms, images, labels, mean, std,
                               first=first, count=count, steps_per_epoch=steps_per_epoch,
                               epochs=epochs, chunk=chunk)
        continue
      for s in range(first, first + count):
        epoch, position = divmod(s, steps_per_epoch)
        states[i], metrics = steps.train(states[i], images, labels, perms[i][epoch % epochs],
                                         position, mean, std, with_diagnostics=diagnostics)
    return float(np.ravel(jax.device_get(metrics['loss']))[-1])

  t = time.perf_counter()
  first_loss = run(0, 1)
  first_call_s = time.perf_counter() - t
  first_step_s = runtime.seconds_since_process_start()
  result = time_steps(run, **spec['timing'])
  step_s = 1 / result['steps_per_s']
  widths = [dataset.num_features, *configs[0].hidden, dataset.num_classes]
  flops = matmul_flops(widths, spec['batch_size']) * members
  result.update(first_loss=first_loss, first_step_s=first_step_s,
                compile_s=max(first_call_s - step_s, 0.0), library=f'jax {jax.__version__}',
                backend=jax.default_backend(), device=jax.devices()[0].device_kind)
  # An accelerator needs a larger product than a CPU to reach its peak.
  result['matmul_peak_flops'] = jax_matmul_peak(
      spec['precision'], size=2048 if jax.default_backend() == 'cpu' else 8192)
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    result['device_peak_mb'] = stats['peak_bytes_in_use'] / 2**20
  if spec.get('extras') and not vectorized and members == 1:
    eval_images = jax.device_put(dataset.train_images)
    rates = []
    for _ in range(3):
      t = time.perf_counter()
      train.evaluate(steps.eval, states[0], eval_images, dataset.train_labels, mean, std)
      rates.append(len(dataset.train_labels) / (time.perf_counter() - t))
    gathers = _input_pipeline(images, mean, std, batch_size=spec['batch_size'],
                              steps_per_epoch=steps_per_epoch)
    input_rate = time_steps(lambda first, count: float(gathers(perms[0][0], count)),
                            **spec['timing'])['steps_per_s']
    every = configs[0].diagnostics_every
    diag_rate = time_steps(lambda first, count: run(first, count, diagnostics=True),
                           **{**spec['timing'], 'windows': 2})['steps_per_s']
    result.update(
        eval_examples_per_s=statistics.median(rates),
        input_share=(1 / input_rate) / step_s,
        diagnostics_share=max(1 / diag_rate - step_s, 0.0) / every / step_s)
  result.update(flops_per_step=flops, flops_per_s=flops * result['steps_per_s'],
                examples_per_s=result['steps_per_s'] * spec['batch_size'] * members,
                peak_resident_mb=peak_resident_mb())
  return result


def _input_pipeline(images, mean, std, *, batch_size: int, steps_per_epoch: int):
  """``gathers(perm, count)``: the train step's input part alone (the batch gathered
  from the epoch order and normalized, as ``train.make_train_step`` does), ``count``
  batches in one compiled loop, each materialized as the step's first matmul reads it,
  so that its time per batch has no dispatch in it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fundamentals import data as data_lib  # pylint: disable=g-import-not-at-top
  flat = jnp.reshape(images, (images.shape[0], -1))

  @jax.jit
  def gathers(perm, count):
    def body(i, previous):
      idx = jax.lax.dynamic_slice_in_dim(perm, (i % steps_per_epoch) * batch_size,
                                         batch_size)
      # Depends on the previous batch (one element), so no iteration is skipped.
      return data_lib.normalize(flat[idx], mean, std) + 0 * previous[0, 0]
    return jax.lax.fori_loop(0, count, body, jnp.zeros((batch_size, flat.shape[1])))[0, 0]

  return gathers


def _run_chunked(steps, i, states, perms, images, labels, mean, std, *, first, count,
                 steps_per_epoch, epochs, chunk):
  """``count`` steps from ``first`` as ``train.fit`` runs them: up to ``chunk`` steps
  per compiled call (``train.Steps.train_steps``), never across an epoch's end."""
  metrics = None
  s, stop = first, first + count
  while s < stop:
    epoch, position = divmod(s, steps_per_epoch)
    n = min(chunk, stop - s, steps_per_epoch - position)
    states[i], metrics = steps.train_steps(states[i], images, labels, perms[i][epoch % epochs],
                                           position, n, mean, std, length=chunk)
    metrics = {'loss': metrics['loss'][..., n - 1]}
    s += n
  return metrics


def measure_torch(spec: dict[str, Any]) -> dict[str, Any]:
  """One PyTorch case in this process (``fundamentals.torch_reference``)."""
  from fundamentals import torch_reference  # pylint: disable=g-import-not-at-top
  result = torch_reference.measure(
      spec, timing=lambda run, start: time_steps(run, start=start, **spec['timing']),
      clock=runtime.seconds_since_process_start)
  members = spec.get('members', 1)
  widths = [int(np.prod(IMAGE_SHAPE)), *(spec['hidden'],) * LAYERS, NUM_CLASSES]
  flops = matmul_flops(widths, spec['batch_size']) * members
  result.update(flops_per_step=flops, flops_per_s=flops * result['steps_per_s'],
                examples_per_s=result['steps_per_s'] * spec['batch_size'] * members,
                peak_resident_mb=peak_resident_mb())
  result['matmul_peak_flops'] = torch_matmul_peak(spec['precision'])
  return result


def child_main(path: str):
  """``python -m fundamentals.benchmark SPEC.json``: measures one case, prints RESULT."""
  spec = json.loads(pathlib.Path(path).read_text())
  result = (measure_torch if spec['library'] == 'torch' else measure_jax)(spec)
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  child_main(sys.argv[1])


# ----------------------------------------------------------------- the parent side

def torch_available() -> bool:
  """Whether the PyTorch reference can run (``torch`` importable, checked cheaply)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec('torch') is not None


def case(library: str, hidden: int, precision: str, *, mode: str = 'single',
         members: int = 1, shared_order: bool = False, chunk: int = 0,
         batch_size: int = 256) -> dict[str, Any]:
  """One benchmark case, labelled, e.g. ``jax 512 float32``."""
  label = f'{library} {hidden} {precision}'
  if library == 'jax' and not chunk:
    label += ' one-step'
  if mode != 'single':
    label += f' sweep×{members} {mode}' + (' shared-order' if shared_order else '')
  return {'label': label, 'library': library, 'hidden': hidden, 'precision': precision,
          'mode': mode, 'members': members, 'shared_order': shared_order, 'chunk': chunk,
          'batch_size': batch_size}


def plan(*, models=(512, 64), precisions=('float32', 'bfloat16'), sweep_members: int = 8,
         with_torch: bool = True, chunk: int = NUM_EXAMPLES // 256) -> list[dict[str, Any]]:
  """The cases of one round, each JAX case right after its PyTorch reference.

  JAX cases run ``chunk`` steps per compiled call, as ``train.fit`` does (a window
  between records, within an epoch: here an epoch); ``… one-step`` (the smallest
  model) dispatches every step, to show what the fewer dispatches gain.
  """
  cases = []
  for hidden in models:
    for precision in precisions:
      if with_torch:
        cases.append(case('torch', hidden, precision))
      cases.append(case('jax', hidden, precision, chunk=chunk))
      if hidden == min(models) and precision == precisions[0]:
        cases.append(case('jax', hidden, precision, chunk=0))
  if sweep_members:
    small = min(models)
    if with_torch:
      cases.append(case('torch', small, 'float32', mode='sequential', members=sweep_members))
    cases += [case('jax', small, 'float32', mode='sequential', members=sweep_members,
                   chunk=chunk),
              case('jax', small, 'float32', mode='vectorized', members=sweep_members,
                   chunk=chunk),
              case('jax', small, 'float32', mode='vectorized', members=sweep_members,
                   shared_order=True, chunk=chunk)]
  return cases


def write_inputs(directory: pathlib.Path, cases: list[dict[str, Any]], *,
                 epochs: int = 4, num_examples: int = NUM_EXAMPLES) -> dict[str, Any]:
  """The shared random dataset (with seed 0's epoch orders, for PyTorch) and each
  seed's initial weights of each model, as the project draws them; returns the paths."""
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  directory.mkdir(parents=True, exist_ok=True)
  arrays = random_dataset(num_examples)
  dataset = _dataset_object(arrays)
  paths = {'data': str(directory / 'data.npz'), 'init': {}}
  order = None
  for c in cases:
    for seed in range(c['members']):
      key = f'{c["hidden"]}_{seed}'
      if key in paths['init']:
        continue
      start = train.initial_state(model_config(c['hidden'], seed=seed), dataset)
      if order is None:
        order = np.stack([np.asarray(train.epoch_permutation(start.shuffle_key, e,
                                                             len(arrays['labels'])))
                          for e in range(epochs)])
      params = start.state.params
      weights = {f'dense_{i}': np.asarray(params['dense'][i]['kernel'].value)
                 for i in range(LAYERS)}
      weights['output_kernel'] = np.asarray(params['output']['kernel'].value)
      paths['init'][key] = str(directory / f'init_{key}.npz')
      np.savez(paths['init'][key], **weights)
  np.savez(paths['data'], perms=order, **arrays)
  return paths


def child_spec(c: dict[str, Any], inputs: dict[str, Any], *, timing: dict[str, float],
               extras: bool, epochs: int = 4) -> dict[str, Any]:
  config = model_config(c['hidden'])
  return {**c, 'data': inputs['data'],
          'init': [inputs['init'][f'{c["hidden"]}_{s}'] for s in range(c['members'])],
          'timing': timing, 'extras': extras, 'epochs': epochs, 'threads': os.cpu_count(),
          'layers': LAYERS, 'lr': config.lr, 'momentum': config.momentum,
          'bn_momentum': config.bn_momentum, 'bn_epsilon': config.bn_epsilon}


def run_child(spec: dict[str, Any], path: pathlib.Path, *, timeout_s: float = 900
              ) -> dict[str, Any]:
  """Runs one case in a fresh process; its result, or ``{'error': ...}``."""
  path.write_text(json.dumps(spec))
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  t = time.time()
  try:
    done = subprocess.run([sys.executable, '-m', 'fundamentals.benchmark', str(path)],
                          capture_output=True, text=True, env=env, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {'error': f'timed out after {timeout_s:.0f} s'}
  for line in done.stdout.splitlines():
    if line.startswith('RESULT '):
      return {**json.loads(line[len('RESULT '):]), 'wall_s': time.time() - t}
  return {'error': f'exit status {done.returncode}: {done.stderr.strip()[-1500:]}'}


def run_rounds(cases: list[dict[str, Any]], *, rounds: int, directory: pathlib.Path,
               timing: dict[str, float], echo: Callable[[str], Any] = print,
               num_examples: int = NUM_EXAMPLES) -> list[dict[str, Any]]:
  """Every case ``rounds`` times, interleaved: round 1 runs them all in order, then
  round 2, … Round 1 also measures the extras (evaluation, input, diagnostics)."""
  inputs = write_inputs(directory, cases, num_examples=num_examples)
  runs = []
  for r in range(1, rounds + 1):
    for i, c in enumerate(cases):
      spec = child_spec(c, inputs, timing=timing, extras=r == 1)
      result = run_child(spec, directory / f'spec_{i}.json')
      runs.append({'label': c['label'], 'case': c, 'round': r, **result})
      shown = (f'{result["steps_per_s"]:.2f} steps/s' if 'steps_per_s' in result
               else 'FAILED: ' + result['error'].splitlines()[-1][:200])
      echo(f'  round {r}/{rounds} [{i + 1}/{len(cases)}] {c["label"]:<44} {shown}')
  return runs


def reference_of(c: dict[str, Any], precision: str) -> str:
  """The label of the PyTorch case a JAX case is compared with."""
  ref = dict(c, library='torch', precision=precision, chunk=0, shared_order=False)
  if c['mode'] != 'single':
    ref.update(mode='sequential', precision='float32')
  return case(ref['library'], ref['hidden'], ref['precision'], mode=ref['mode'],
              members=ref['members'])['label']


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per case: medians over rounds, and the medians of per-round ratios
  against PyTorch float32 and bfloat16 (and the better of the two) of the same model."""
  ok = [r for r in runs if 'steps_per_s' in r]
  by_round = {(r['round'], r['label']): r for r in ok}
  rows = []
  for label in dict.fromkeys(r['label'] for r in runs):
    mine = [r for r in ok if r['label'] == label]
    errors = [r['error'] for r in runs if r['label'] == label and 'error' in r]
    if not mine:
      rows.append({'label': label, 'error': errors[0]})
      continue
    c = mine[0]['case']
    row = {'label': label, 'case': c, 'rounds': len(mine), 'errors': len(errors)}
    for key in ('steps_per_s', 'examples_per_s', 'flops_per_s', 'compile_s',
                'first_step_s', 'peak_resident_mb', 'first_loss', 'eval_examples_per_s',
                'input_share', 'diagnostics_share', 'matmul_peak_flops'):
      values = [r[key] for r in mine if key in r]
      if values:
        row[key] = statistics.median(values)
    if 'matmul_peak_flops' in row:
      row['peak_fraction'] = row['flops_per_s'] / row['matmul_peak_flops']
    if c['library'] != 'torch':
      for precision in ('float32', 'bfloat16'):
        ref = reference_of(c, precision)
        ratios = [r['steps_per_s'] / by_round[(r['round'], ref)]['steps_per_s']
                  for r in mine if (r['round'], ref) in by_round]
        if ratios:
          row[f'vs_torch_{precision}'] = statistics.median(ratios)
          row[f'vs_torch_{precision}_pairs'] = ratios
          if c['mode'] != 'single':
            break
      best = [r['steps_per_s'] / max(by_round[(r['round'], reference_of(c, p))]['steps_per_s']
                                     for p in ('float32', 'bfloat16')
                                     if (r['round'], reference_of(c, p)) in by_round)
              for r in mine if c['mode'] == 'single' and any(
                  (r['round'], reference_of(c, p)) in by_round for p in ('float32', 'bfloat16'))]
      if best:
        row['vs_torch_best'] = statistics.median(best)
    rows.append(row)
  return rows


def _cell(row, key, fmt):
  return fmt.format(row[key]) if key in row and row[key] is not None else '–'


def table(rows: list[dict[str, Any]]) -> str:
  """The benchmark's Markdown table."""
  from fundamentals.report import markdown_table  # pylint: disable=g-import-not-at-top
  header = ['case', 'steps/s', 'examples/s', 'GFLOP/s', '% of matmul peak', 'compile s',
            'first step s', 'eval examples/s', 'peak RSS MB', 'input share',
            'diagnostics share', '× torch f32', '× torch bf16', '× torch best']
  body = []
  for row in rows:
    if 'error' in row:
      body.append([row['label'], 'failed: ' + row['error'].splitlines()[-1][:80]]
                  + ['–'] * (len(header) - 2))
      continue
    body.append([
        row['label'], _cell(row, 'steps_per_s', '{:.2f}'), _cell(row, 'examples_per_s', '{:,.0f}'),
        f'{row["flops_per_s"] / 1e9:.1f}',
        f'{100 * row["peak_fraction"]:.0f}%' if 'peak_fraction' in row else '–',
        _cell(row, 'compile_s', '{:.2f}'), _cell(row, 'first_step_s', '{:.1f}'),
        _cell(row, 'eval_examples_per_s', '{:,.0f}'), _cell(row, 'peak_resident_mb', '{:,.0f}'),
        _cell(row, 'input_share', '{:.1%}'), _cell(row, 'diagnostics_share', '{:.1%}'),
        _cell(row, 'vs_torch_float32', '{:.2f}×'), _cell(row, 'vs_torch_bfloat16', '{:.2f}×'),
        _cell(row, 'vs_torch_best', '{:.2f}×')])
  return markdown_table(header, body)


def machine() -> dict[str, Any]:
  """The CPU, cores and library versions the benchmark ran with."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  info = {'platform': platform.platform(), 'python': platform.python_version(),
          'cores': os.cpu_count()}
  try:
    cpuinfo = pathlib.Path('/proc/cpuinfo').read_text()
    info['cpu'] = next(line.split(':', 1)[1].strip() for line in cpuinfo.splitlines()
                       if line.startswith('model name'))
    flags = next(line.split(':', 1)[1].split() for line in cpuinfo.splitlines()
                 if line.startswith('flags'))
    info['matmul_extensions'] = sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma')))
  except (OSError, StopIteration):
    info['cpu'] = platform.processor() or 'unknown'
  for package in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch'):
    try:
      info[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return info
