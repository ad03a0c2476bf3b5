"""Every notebook runs top to bottom in a real kernel (nbclient), from a temporary copy, with the embedded
default model written into a fresh cache, offline. 05 (fine-tuning) runs with tiny sizes injected after its
"parameters" cell (papermill's convention) and a cell of checks appended."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))

# 05 at test size: seconds instead of minutes (a high LR, so that 3 steps still change the speech)
FINETUNE_SIZES = """\
SENTENCES, EVAL_EXAMPLES, STEPS, BATCH, EVAL_EVERY, LR = 6, 2, 3, 2, 0, 5e-2
HELD_OUT, MAX_NEW_TOKENS = 1, 24
WORK = Path({work!r})
"""
FINETUNE_CHECKS = """\
import re

import numpy as np
import torch

from higgslab.train.methods import LoraSettings

assert [r["step"] for r in history] == list(range(1, STEPS + 1)) and "eval_loss" in history[-1]
assert (RUN / "loss.png").is_file() and (RUN / "log.csv").read_text().count("\\n") == STEPS + 1
assert (trained / "adapter_config.json").is_file()
# the adapter, merged at load, changed exactly the weights its targets name, and with them the speech
targets = LoraSettings(targets=tuple(ft_cfg.lora.targets)).target_regex() + r"\\.weight"
base = dict(before.model.named_parameters())
changed = [n for n, p in after.model.named_parameters() if not torch.equal(p, base[n])]
assert changed and all(re.fullmatch(targets, n) for n in changed), changed
assert all(not np.array_equal(clips["before"], clips["after"]) for clips in heard)
print("checked", len(changed), "adapted weights")
"""


@pytest.fixture(scope="session")
def fresh_cache(tmp_path_factory):
    """One embedded-model cache for all notebooks: the first one writes it, as on a fresh clone."""
    return tmp_path_factory.mktemp("higgslab-cache")


def test_the_five_notebooks_are_there_and_stripped():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_tokenizer",
        "02_delay_and_generation",
        "03_dualffn",
        "04_experiments",
        "05_finetune",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(
            not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"
        )
        assert "widgets" not in nb.metadata, f"{path.name}: widget state saved in git"


def test_the_model_pick_takes_an_adapter_and_quantization_wherever_a_generator_is_built():
    """`adapter_path=`, `quantize=` (+ group_size) and `tokenizer_device=` in a notebook's OVERRIDES must
    reach every Generator built from the model pick, as the CLI passes them; 05 builds its own from the run
    it trains."""
    picks = 0
    for path in NOTEBOOKS[:4]:
        cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        built = [c for c in cells if "Generator.from_paths(model_dir" in c]
        if not built:
            continue  # 01 uses the audio tokenizer only
        picks += 1
        assert "adapter_dir = cfg.adapter_path and ROOT / cfg.adapter_path" in cells[0], path.name
        assert (
            "model_kw = dict(adapter_path=adapter_dir, quantize=cfg.quantize, group_size=cfg.group_size,"
            in cells[0]
        )
        assert "tokenizer_device=cfg.tokenizer_device)" in cells[0], path.name
        assert all(
            "Generator.from_paths(model_dir, tokenizer_dir, device=str(device), **model_kw)" in c
            for c in built
        )
    assert picks == 3


def at_test_size(nb, tmp_path: Path) -> None:
    """05: the tiny sizes after the cell tagged "parameters", the checks at the end."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "05_finetune needs one cell tagged parameters"
    nb.cells.insert(
        tagged[0] + 1, nbformat.v4.new_code_cell(FINETUNE_SIZES.format(work=str(tmp_path / "work")))
    )
    nb.cells.append(nbformat.v4.new_code_cell(FINETUNE_CHECKS))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, fresh_cache, monkeypatch):
    monkeypatch.setenv("HIGGSLAB_CACHE", str(fresh_cache))  # the kernel inherits it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = Path(shutil.copy(path, tmp_path))
    nb = nbformat.read(copy, as_version=4)
    if path.stem == "05_finetune":
        from tests.train.conftest import espeak_or_skip

        espeak_or_skip()  # it speaks its dataset
        at_test_size(nb, tmp_path)
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
    if path.stem == "05_finetune":
        assert images and widgets, "05 shows the loss plot and the before/after players"
        assert "adapted weights" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
