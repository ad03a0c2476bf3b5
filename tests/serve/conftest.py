"""One speech server around the shipped mini for the whole directory (package scope), on 127.0.0.1 and a
free port."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


def serve_settings(*overrides: str):
    """`ServeSettings` as `python -m higgslab.serve` would compose them with `overrides`."""
    from hydra import compose, initialize_config_dir

    from higgslab.conf import CONF_DIR
    from higgslab.serve.settings import settings_from

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return settings_from(compose("serve", overrides=list(overrides)))


@dataclass
class Server:
    url: str
    gen: object
    batcher: object
    settings: object


@pytest.fixture(scope="package")
def mini():
    from higgslab.generate.generator import Generator

    return Generator.from_pretrained()


@pytest.fixture(scope="package")
def server(mini):
    from higgslab.generate.batching import ContinuousBatcher
    from higgslab.serve.app import create_app, running

    s = serve_settings("max_new_tokens=400", "max_tokens=640", "rows=16", "max_input_chars=300")
    batcher = ContinuousBatcher(mini.model, rows=s.rows, max_tokens=s.max_tokens, max_queue=s.max_queue)
    batcher.start()
    try:
        with running(create_app(mini, batcher, s)) as url:
            yield Server(url, mini, batcher, s)
    finally:
        batcher.stop()
