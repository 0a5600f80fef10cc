"""README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    install_and_run, run_tests = setup_commands()
    assert install_and_run.endswith("tfkit run")
    assert "pytest" in run_tests
    assert run_tests in (ROOT / ".ci" / "run").read_text()
