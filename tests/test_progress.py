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
  p.advance(100)
  p.record(RECORD)
  p.echo('hello')
  p.close()
  assert len(lines) == 2 and lines[0].startswith('step  100/1500  loss 1.6115')
  assert ' eta ' in lines[0] and lines[1] == 'hello'


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
  assert 'step  100/1500  loss 1.6115' in capsys.readouterr().out  # lines above the bar


def test_a_resumed_run_paces_its_eta_by_the_steps_it_ran(monkeypatch):
  clock = iter([1000.0, 1010.0])  # Made at t=1000; asked 10 s later.
  monkeypatch.setattr(progress.time, 'time', lambda: next(clock))
  p = progress.Progress(100, echo=lambda line: None, start_step=50)
  # 10 steps (50 → 60) in 10 s: 40 left take 40 s (not 10/60·40 ≈ 7 s).
  assert p.eta_s(60) == 40.0
