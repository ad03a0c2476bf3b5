"""CI runs what the README promises: its test command as written there, then ruff."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_then_ruff():
    readme = (REPO / "README.md").read_text()
    main_command, test_command = readme.split("```bash\n", 1)[1].splitlines()[:2]
    assert main_command.startswith("pip install") and "python -m higgslab.generate" in main_command
    assert test_command.startswith("pip install") and test_command.endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci.index(test_command) < ci.index("ruff check .") < ci.index("ruff format --check .")
