"""The Hydra configs the CLIs, the training recipe and the notebooks share, shipped inside the package.

    main = command("generate", run)                                  # a CLI: python -m higgslab.generate
    with initialize_config_dir(config_dir=CONF_DIR): compose(...)    # a notebook or a test

Found through `importlib.resources`, so an editable checkout and an installed wheel read the same files.
Your own configs go next to these with Hydra's `--config-dir DIR` or `hydra.searchpath=[file://DIR]`.
"""

import sys
from collections.abc import Callable
from importlib.resources import files

CONF_DIR = str(files(__name__))  # a folder on disk: pip installs wheels unpacked


def command(config_name: str, run: Callable) -> Callable[[], None]:
    """A CLI's entry point: Hydra composes `config_name` with the command line's overrides, then `run(cfg)`
    runs with a `HiggsLabError` (or a missing file) as one `error:` line and exit code 2; an int that `run`
    returns is the exit code."""
    import hydra

    from higgslab.errors import cli_errors

    def main(cfg) -> None:
        with cli_errors():
            code = run(cfg)
        sys.exit(code if isinstance(code, int) else 0)

    main.__wrapped__ = run  # Hydra names the job after the module that defines `run`
    return hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(main)
