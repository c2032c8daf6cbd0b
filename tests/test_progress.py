import io

from fundamentals import progress

RECORD = {'step': 100, 'train_loss': 1.61154, 'train_accuracy': 0.4159, 'lr': 0.049463,
          'examples_per_sec': 5630.2}


def test_record_line():
  assert progress.format_record(RECORD, 1500, eta_s=65) == (
      'step  100/1500  loss 1.6115  acc 41.59%  lr 0.04946  5,630 ex/s  eta 1m05s')
  line = progress.format_record({**RECORD, 'step': 1500, 'test_loss': 1.3,
                                 'test_accuracy': 0.624}, 1500, eta_s=0)
  assert line.endswith('ex/s  | test loss 1.3000 acc 62.40%')  # no eta at the end


def test_durations():
  assert [progress.format_duration(s) for s in (4.4, 59.6, 185, 3725)] == [
      '4s', '1m00s', '3m05s', '1h02m']


def test_without_a_terminal_there_are_plain_lines_and_no_bar():
  lines = []
  p = progress.Progress(1500, echo=lines.append, file=io.StringIO())
  assert not p.has_bar  # a custom echo never gets a bar
  p.compiling()
  assert lines == ['compiling the train step…']  # At once, not after the first record.
  p.advance(100)
  p.record(RECORD)
  p.echo('hello')
  p.close()
  assert len(lines) == 3 and lines[1].startswith('step  100/1500  loss 1.6115')
  assert ' eta ' in lines[1] and lines[2] == 'hello'


def test_print_to_a_pipe_gets_no_bar():
  assert not progress.Progress(10, echo=print, file=io.StringIO()).has_bar


def test_on_a_terminal_the_bar_shows_step_loss_lr_and_speed(capsys):
  bar_stream = io.StringIO()
  p = progress.Progress(1500, bar=True, file=bar_stream)
  assert p.has_bar
  p.advance(100)
  p.record(RECORD)
  p.close()
  bar = bar_stream.getvalue()
  assert '100/1500' in bar and 'loss=1.6115' in bar and 'lr=0.0495' in bar
  assert 'ex_s=5,630' in bar
  line = capsys.readouterr().out
  assert 'step  100/1500  loss 1.6115' in line  # Lines above the bar,
  assert ' eta ' not in line  # without a second ETA: the bar's is the one.


def drawn(stream: io.StringIO) -> str:
  """The bar as a terminal shows it now: its last redraw."""
  return stream.getvalue().rsplit('\r', 1)[-1]


def fake_clock(monkeypatch, start: float = 1000.0) -> list[float]:
  """The time Progress and tqdm read: ``now[0]``, moved by the test."""
  now = [start]
  monkeypatch.setattr(progress.time, 'time', lambda: now[0])
  monkeypatch.setattr(progress.tqdm.std, 'time', lambda: now[0])  # Bars made from now on.
  return now


def test_the_bar_says_compiling_until_the_first_step_then_paces_without_it(monkeypatch):
  now = fake_clock(monkeypatch)
  stream = io.StringIO()
  p = progress.Progress(1000, bar=True, file=stream)
  p.compiling()
  assert drawn(stream).startswith('compiling…')  # At once, before a step.
  now[0] += 60.0  # A minute of compilation, then the first step is dispatched.
  p.advance(1)
  assert 'compiling' not in drawn(stream)
  for _ in range(10):  # Then 10 steps/s.
    now[0] += 1.0
    p.advance(10)
  bar = drawn(stream)
  # 899 steps left at 10 steps/s: 01:29, not the 20 minutes a pace counting the
  # compilation (1 step/60 s, then 101 in 70 s) would foretell.
  assert ' 101/1000 [00:10<01:29, 10.0' in bar, bar
  p.close()


def test_the_postfix_shows_the_latest_record(monkeypatch, capsys):
  now = fake_clock(monkeypatch)
  stream = io.StringIO()
  p = progress.Progress(1500, bar=True, file=stream)
  p.compiling()
  p.advance(100)
  p.record(RECORD)
  now[0] += 1.0
  p.advance(100)
  p.record({**RECORD, 'step': 200, 'train_loss': 0.98765, 'lr': 0.04, 'examples_per_sec': 7000})
  assert 'ex_s=7,000, loss=0.9877, lr=0.04]' in drawn(stream)
  p.close()
  assert 'step  200/1500  loss 0.9877' in capsys.readouterr().out


def test_without_a_bar_the_eta_leaves_the_compilation_out(monkeypatch):
  now = fake_clock(monkeypatch)
  lines = []
  p = progress.Progress(1500, echo=lines.append)
  p.compiling()
  now[0] += 60.0  # Compiling.
  p.advance(1)
  now[0] += 10.0  # 100 steps in 10 s.
  p.advance(99)
  p.record(RECORD)
  # 1400 steps left at 10 steps/s: 2m20s (with the compile counted: 70/100·1400 = 16m).
  assert lines[-1].endswith('eta 2m20s')


def test_a_resumed_run_paces_its_eta_by_the_steps_it_ran(monkeypatch):
  clock = iter([1000.0, 1010.0])  # Made at t=1000; asked 10 s later.
  monkeypatch.setattr(progress.time, 'time', lambda: next(clock))
  p = progress.Progress(100, echo=lambda line: None, start_step=50)
  # 10 steps (50 → 60) in 10 s: 40 left take 40 s (not 10/60·40 ≈ 7 s).
  assert p.eta_s(60) == 40.0
