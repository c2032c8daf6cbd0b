"""The README's two command lines, and CI running exactly the second."""

import subprocess

from conftest import REPO


def readme_command_lines():
  text = (REPO / 'README.md').read_text()
  block = text.split('```')[1]
  return [line for line in block.splitlines()[1:] if line.strip()]


def test_readme_begins_with_install_and_run_then_install_and_test():
  text = (REPO / 'README.md').read_text()
  assert text.lstrip().startswith('# fundamentals\n\n```')
  run_line, test_line = readme_command_lines()[:2]
  assert 'pip install -e .' in run_line and run_line.endswith('python launch.py')
  assert "pip install -e '.[test]'" in test_line and 'pytest' in test_line


def test_ci_runs_exactly_the_readme_test_line():
  printed = subprocess.run(['bash', str(REPO / '.ci' / 'run'), '--print-command'],
                           capture_output=True, text=True, check=True).stdout.strip()
  assert printed == readme_command_lines()[1]
