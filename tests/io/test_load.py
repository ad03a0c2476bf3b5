"""The loading entry points and what production code imports: the shipped mini loads without any fixture."""

import subprocess
import sys

import pytest

from higgslab.errors import HiggsLabError

NO_FIXTURES = """
import sys
import numpy as np
import higgslab.train.codec, higgslab.train.text, higgslab.train.tokenizer, higgslab.train.lm
from higgslab.embedded import resolve_paths
model, tokenizer, _ = resolve_paths(None, None)
tok = higgslab.load_tokenizer(tokenizer)
assert not tok.model.cfg.semantic and not hasattr(tok.model, "semantic_model")
assert tok.encode(np.zeros(24000, dtype=np.float32)).shape == (8, 25)
higgslab.load_model(model)
print(sorted(m for m in sys.modules if m.startswith("higgslab.tiny")))
"""


def test_shipped_mini_loads_without_importing_fixtures(monkeypatch):
    import higgslab

    monkeypatch.delenv("HIGGSLAB_EMBEDDED", raising=False)
    proc = subprocess.run([sys.executable, "-c", NO_FIXTURES], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert higgslab.load_model.__module__ == higgslab.load_tokenizer.__module__ == "higgslab.io.load"


def test_missing_shipped_mini_is_one_line(monkeypatch, tmp_path):
    from higgslab import embedded

    monkeypatch.delenv("HIGGSLAB_EMBEDDED", raising=False)
    monkeypatch.setattr(embedded, "ASSETS", tmp_path / "mini")
    with pytest.raises(HiggsLabError, match="the shipped higgslab-mini is missing .*HIGGSLAB_EMBEDDED=tiny"):
        embedded.resolve_paths(None, None)
