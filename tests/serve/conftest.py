"""One speech server around the shipped mini for the whole directory (package scope), on 127.0.0.1 and a
free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on 127.0.0.1 and a free port; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="package")
def server(mini):
    from higgslab.generate.batching import ContinuousBatcher
    from higgslab.serve.app import create_app

    s = serve_settings("max_new_tokens=400", "max_tokens=640", "rows=16", "max_input_chars=300")
    batcher = ContinuousBatcher(mini.model, rows=s.rows, max_tokens=s.max_tokens, max_queue=s.max_queue)
    batcher.start()
    try:
        with serving(create_app(mini, batcher, s)) as url:
            yield Server(url, mini, batcher, s)
    finally:
        batcher.stop()
