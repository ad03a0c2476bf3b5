"""higgslab: a Jupyter-first research workbench for Higgs Audio V2.

Data flow, and where each step lives:
    audio --(tokenizer.codec.AudioTokenizer.encode)--> codes [n_q, T]
          --(delay.apply)--> delayed codes --(model.lm.HiggsAudioModel)--> audio logits
          --(generate.generator.Generator)--> codes --(AudioTokenizer.decode)--> audio
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from higgslab.errors import HiggsLabError

__version__ = "0.1.0"

# Heavy pieces are imported on first use, so `import higgslab` stays fast in notebooks and CLIs.
_LAZY = {
    "HiggsConfig": "higgslab.config",
    "HiggsAudioModel": "higgslab.model.lm",
    "load_model": "higgslab.io.load",
    "AudioTokenizer": "higgslab.tokenizer.codec",
    "load_tokenizer": "higgslab.io.load",
    "Generator": "higgslab.generate.generator",
}

if TYPE_CHECKING:
    from higgslab.config import HiggsConfig
    from higgslab.generate.generator import Generator
    from higgslab.io.load import load_model, load_tokenizer
    from higgslab.model.lm import HiggsAudioModel
    from higgslab.tokenizer.codec import AudioTokenizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'higgslab' has no attribute {name!r}")


__all__ = [
    "AudioTokenizer",
    "Generator",
    "HiggsAudioModel",
    "HiggsConfig",
    "HiggsLabError",
    "load_model",
    "load_tokenizer",
]
