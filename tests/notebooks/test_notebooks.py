"""Every notebook runs top to bottom in a real kernel (nbclient), from a temporary copy, with the embedded
default model written into a fresh cache, offline."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def fresh_cache(tmp_path_factory):
    """One embedded-model cache for all notebooks: the first one writes it, as on a fresh clone."""
    return tmp_path_factory.mktemp("higgslab-cache")


def test_the_four_notebooks_are_there_and_stripped():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_tokenizer",
        "02_delay_and_generation",
        "03_dualffn",
        "04_experiments",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(
            not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"
        )
        assert "widgets" not in nb.metadata, f"{path.name}: widget state saved in git"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, fresh_cache, monkeypatch):
    monkeypatch.setenv("HIGGSLAB_CACHE", str(fresh_cache))  # the kernel inherits it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = Path(shutil.copy(path, tmp_path))
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    first = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "model in use: embedded" in first
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    widgets = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert images or widgets, "the notebook shows nothing"
