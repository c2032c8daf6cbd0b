"""The benchmark on an accelerator, in one short run (< 4 min on one GPU).

  python benchmarks/gpu.py                  # on a GPU machine; prints one table
  python benchmarks/gpu.py --tiny           # the same plan, tiny, to check it on a CPU

Times, each case in a fresh process: the 512-wide reference MLP at batch 256 and
4096 in float32 and bfloat16 (steps/s, achieved TFLOP/s against the matmul peak
measured in the same process, device memory), and the 24-member sweep of the 64-wide
model vectorized, with a data order each and with one shared order. Never needed for
CI.
"""

import json
import pathlib

from absl import app
from absl import flags

flags.DEFINE_bool('tiny', False, 'Tiny models and batches (checks the script on a CPU).')
flags.DEFINE_string('workdir', 'runs/benchmark_gpu', 'Where the inputs and results go.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from fundamentals import benchmark  # pylint: disable=g-import-not-at-top
  from fundamentals.report import markdown_table  # pylint: disable=g-import-not-at-top
  wide, narrow, batches, members, examples = ((16, 8, (32, 64), 3, 256) if FLAGS.tiny
                                              else (512, 64, (256, 4096), 24, 16384))
  cases = [benchmark.case('jax', wide, p, batch_size=b, chunk=examples // b)
           for b in batches for p in ('float32', 'bfloat16')]
  for shared in (False, True):
    cases.append(benchmark.case('jax', narrow, 'float32', mode='vectorized', members=members,
                                shared_order=shared, chunk=examples // 256))
  for c in cases:
    c['label'] += f' batch {c["batch_size"]}'
  runs = benchmark.run_rounds(cases, rounds=1, directory=pathlib.Path(FLAGS.workdir) / 'cases',
                              num_examples=examples,
                              timing={'warmup_s': 1.0, 'window_s': 0.5, 'windows': 3})
  rows = []
  for r in runs:
    if 'error' in r:
      rows.append([r['label'], 'failed: ' + r['error'].splitlines()[-1][:80], '', '', '', ''])
      continue
    rows.append([r['label'], f'{r["steps_per_s"]:.1f}', f'{r["examples_per_s"]:,.0f}',
                 f'{r["flops_per_s"] / 1e12:.2f}',
                 f'{r["flops_per_s"] / r["matmul_peak_flops"]:.0%} of '
                 f'{r["matmul_peak_flops"] / 1e12:.1f}',
                 f'{r.get("device_peak_mb", r["peak_resident_mb"]):,.0f}'])
  print(f'{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}')
  print(markdown_table(['case', 'steps/s', 'examples/s', 'TFLOP/s', 'of matmul peak TFLOP/s',
                        'peak memory MB'], rows))
  (pathlib.Path(FLAGS.workdir) / 'benchmark_gpu.json').write_text(json.dumps(
      {'machine': benchmark.machine(), 'runs': runs}, indent=1))


if __name__ == '__main__':
  app.run(main)
