"""Training progress: a tqdm bar on a terminal, plain periodic lines otherwise.

On a terminal the bar shows the step, ETA and the latest loss, lr and examples/s,
and the periodic lines scroll above it (``tqdm.write``), without an ETA of their own.
In CI logs and pipes there is no bar: only the lines, each with its ETA.

The first step compiles (seconds to minutes), so before it the bar, or a line, says
``compiling…``; the pace and the ETA count from the first step dispatched, once
compilation is over, so that it does not inflate them.
"""

import sys
import time
from typing import Any, Callable, TextIO

import tqdm


class Progress:
  """Reports a run of ``total_steps`` steps.

  Call :meth:`compiling` just before the first step, :meth:`advance` after each
  dispatch, :meth:`record` for each metrics record.

  Args:
    total_steps: steps of the run.
    echo: where lines go when there is no bar.
    bar: draw a bar; default: only when ``echo`` is ``print`` and ``file`` is a
      terminal (a custom ``echo``, as tests and loggers pass, gets plain lines).
    file: the bar's stream (default ``sys.stderr``).
    start_step: steps already done (a resumed run); the pace counts only the rest.
  """

  def __init__(self, total_steps: int, *, echo: Callable[[str], Any] = print,
               bar: bool | None = None, file: TextIO | None = None,
               start_step: int = 0):
    file = file or sys.stderr
    if bar is None:
      bar = echo is print and file.isatty()
    self.total_steps = total_steps
    self._echo = echo
    self._start = time.time()
    self._start_step = start_step
    self._done = start_step
    # (time, step) when the first steps were dispatched: jit had compiled them by then.
    self._compiled: tuple[float, int] | None = None
    self._bar = (tqdm.tqdm(total=total_steps, initial=start_step, unit='step', file=file,
                           dynamic_ncols=True, leave=False, mininterval=0.5)
                 if bar else None)

  @property
  def has_bar(self) -> bool:
    return self._bar is not None

  def compiling(self):
    """Says, until the first steps are dispatched, that they are being compiled."""
    if self._bar is not None:
      self._bar.set_description_str('compiling…')
    else:
      self._echo('compiling the train step…')

  def advance(self, steps: int = 1):
    """Counts steps dispatched (cheap: no device sync).

    The first call ends compilation (``jax.jit`` compiles before it dispatches): the
    pace counts from it, and the bar's clock too (its rate and ETA leave the compile
    out; its elapsed time is the training's).
    """
    if self._compiled is None:
      self._compiled = (time.time(), self._done)
      if self._bar is not None:
        self._bar.unpause()
        # Drawn now, not at the next timed refresh (the first window may take long).
        self._bar.set_description_str('')
    self._done += steps
    if self._bar is not None:
      self._bar.update(steps)

  def echo(self, line: str):
    """Prints a line without breaking the bar."""
    if self._bar is not None:
      tqdm.tqdm.write(line, file=sys.stdout)
    else:
      self._echo(line)

  def record(self, record: dict[str, Any]):
    """Reports a metrics record: the bar's postfix and a line above it, or (no bar) a
    line with the ETA."""
    if self._bar is None:
      self.echo(format_record(record, self.total_steps, eta_s=self.eta_s(record['step'])))
      return
    self._bar.set_postfix(loss=f'{record["train_loss"]:.4f}', lr=f'{record["lr"]:.3g}',
                          ex_s=f'{record["examples_per_sec"]:,.0f}')
    self.echo(format_record(record, self.total_steps))  # The bar has the ETA.

  def eta_s(self, step: int) -> float:
    """Seconds left at the mean pace since compilation (since the start, before
    the first dispatch): elapsed / steps run · (total − step)."""
    since, from_step = self._compiled or (self._start, self._start_step)
    return (time.time() - since) / max(step - from_step, 1) * (self.total_steps - step)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def format_record(record: dict[str, Any], total_steps: int, *,
                  eta_s: float | None = None) -> str:
  """'step  100/1500  loss 1.6115  acc 41.59%  lr 0.04946  5,630 ex/s  eta 41s | …'."""
  line = (f'step {record["step"]:>{len(str(total_steps))}}/{total_steps}  '
          f'loss {record["train_loss"]:.4f}  acc {record["train_accuracy"]:.2%}  '
          f'lr {record["lr"]:.4g}  {record["examples_per_sec"]:,.0f} ex/s')
  if eta_s is not None and record['step'] < total_steps:
    line += f'  eta {format_duration(eta_s)}'
  for split in ('validation', 'test'):
    if f'{split}_loss' in record:
      line += (f'  | {split} loss {record[f"{split}_loss"]:.4f} '
               f'acc {record[f"{split}_accuracy"]:.2%}')
  return line


def format_duration(seconds: float) -> str:
  """'42s', '3m05s', '1h02m'.

  >>> format_duration(185)
  '3m05s'
  """
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
