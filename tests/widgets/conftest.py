"""A tiny tokenizer and a tiny Generator (random weights, text tokenizer included) written to a temp dir."""

import pytest

import higgslab


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    from higgslab.tiny.model import write_tiny_model
    from higgslab.tiny.text import write_tiny_text_tokenizer
    from higgslab.tiny.tokenizer import write_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    model = write_tiny_model(root / "model", "original", seed=0)
    write_tiny_text_tokenizer(model)
    return model, write_tiny_tokenizer(root / "tokenizer", "original", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_paths):
    return higgslab.load_tokenizer(tiny_paths[1])


@pytest.fixture(scope="session")
def generator(tiny_paths):
    return higgslab.Generator.from_paths(*tiny_paths, device="cpu")
