"""CI runs what the README promises: its test command as written there, ruff, the slow checks."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_ruff_and_the_slow_checks():
    readme = (REPO / "README.md").read_text()
    main_command, test_command = readme.split("```bash\n", 1)[1].splitlines()[:2]
    assert main_command.startswith("pip install") and "python -m higgslab.generate" in main_command
    assert test_command.startswith("pip install") and test_command.endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    order = [test_command, "ruff check .", "ruff format --check .", "python -m pytest -m slow"]
    assert [ci.index(line) for line in order] == sorted(ci.index(line) for line in order)
