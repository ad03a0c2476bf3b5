"""`python -m higgslab.serve [host=127.0.0.1 port=8000 model=real rows=16 max_queue=64 api_key=...]`.

Hydra config `higgslab/conf/serve.yaml` (with the `model=` and `generation=` groups of the generate CLI);
no model configured serves the embedded default. The settings are checked first (`settings.settings_from`:
a bad one is one `error:` line, exit code 2, nothing loaded), and the serve extra's presence; then the
model loads, the batcher's thread starts, and uvicorn serves `app.create_app` until Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import logging

from omegaconf import DictConfig

from higgslab.conf import command
from higgslab.errors import HiggsLabError


def run(cfg: DictConfig) -> None:
    from higgslab.generate.settings import load_settings
    from higgslab.serve.settings import settings_from, step_threads

    s = settings_from(cfg)
    absent = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if absent:
        raise HiggsLabError(f"the server needs {' and '.join(absent)}: pip install 'higgslab[serve]'")

    import uvicorn

    from higgslab.generate.batching import ContinuousBatcher
    from higgslab.generate.generator import Generator
    from higgslab.serve.app import create_app

    gen = Generator.from_pretrained(s.model_path, s.tokenizer_path, device=s.device, **load_settings(s))
    print(f"model: {gen.label}")
    threads = step_threads(s)
    print(f"device: {gen.model.device} ({gen.model.dtype}); {s.rows} rows, queue {s.max_queue}; "
          f"threads: {threads} for the decode steps, {s.decode_threads} for audio")  # fmt: skip
    batcher = ContinuousBatcher(gen.model, rows=s.rows, max_tokens=s.max_tokens, max_queue=s.max_queue)
    batcher.start(threads)
    if s.api_key is None and s.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {s.host} without an api_key: anyone who reaches it can use it")
    # the server's own log (a cut stream, an unfinished request) at uvicorn's level and in its style; Hydra's
    # disabled job logging leaves the root logger at ERROR
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log = logging.getLogger("higgslab.serve")
    log.setLevel(s.log_level.upper())
    log.addHandler(handler)
    log.propagate, log.disabled = False, False
    try:
        uvicorn.run(create_app(gen, batcher, s), host=s.host, port=s.port, log_level=s.log_level)
    finally:
        batcher.stop()


main = command("serve", run)


if __name__ == "__main__":
    main()
