"""`python -m higgslab.download`: the NPU port's folder layout, and a fast one-line failure offline."""

import subprocess
import sys

import pytest

from higgslab.errors import HiggsLabError
from higgslab.io import hub


def test_layout_with_a_stand_in_hub(monkeypatch, tmp_path):
    fetched = []

    class FakeApi:
        def __init__(self, endpoint=None):
            pass

        def model_info(self, repo, timeout=None):
            return {"id": repo}

    def fake_snapshot(repo, local_dir, endpoint=None):
        fetched.append(repo)
        local_dir.mkdir(parents=True)
        return str(local_dir)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = hub.download(root=tmp_path)
    assert out == {"model": tmp_path / "model_cache", "tokenizer": tmp_path / "tokenizer_cache"}
    assert fetched == ["bosonai/higgs-audio-v2-generation-3B-base", "bosonai/higgs-audio-v2-tokenizer"]
    with pytest.raises(HiggsLabError, match="unknown download target 'vocoder'"):
        hub.download(("vocoder",), root=tmp_path)


def test_unreachable_hub_fails_fast_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "higgslab.download",
            "--root",
            str(tmp_path),
            "--endpoint",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a speed check: a retrying client would never come back
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hugging Face hub" in lines[0] and "model_path=" in lines[0]
    assert list(tmp_path.iterdir()) == []
