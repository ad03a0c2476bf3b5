"""The Hydra configs the CLIs, the training recipe and the notebooks share, shipped inside the package.

    @hydra.main(config_path=CONF_DIR, config_name="generate")       # a CLI
    with initialize_config_dir(config_dir=CONF_DIR): compose(...)    # a notebook or a test

Found through `importlib.resources`, so an editable checkout and an installed wheel read the same files.
Your own configs go next to these with Hydra's `--config-dir DIR` or `hydra.searchpath=[file://DIR]`.
"""

from importlib.resources import files

CONF_DIR = str(files(__name__))  # a folder on disk: pip installs wheels unpacked
