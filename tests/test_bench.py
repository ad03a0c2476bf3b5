"""The decode-speed bench runs end to end (its figures are checked in bench/RESULTS.md, not here)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from higgslab.config import HiggsConfig

ROOT = Path(__file__).resolve().parents[1]


def test_generate_speed_bench_runs_and_compares_codes():
    # a short default run stays eager and transformers' compiled variant is left out: nothing compiles here
    cmd = [sys.executable, "bench/generate_speed.py", "--configs", "overhead", "--steps", "2", "4"]
    cmd += ["--default-steps", "16", "--transformers", "static"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same greedy codes as higgslab: True" in out.stdout
    rows = [line.split()[:2] for line in out.stdout.splitlines() if "ms/step" not in line]
    assert ["transformers", "default"] in rows and ["transformers", "static"] in rows
    assert "higgslab default (16 steps: eager)" in out.stdout and "higgslab eager" not in out.stdout
    assert "vs tf default" in out.stdout and "vs tf best" in out.stdout and "GB/s of weights" in out.stdout


def test_generate_speed_bench_names_an_unknown_device_in_one_line():
    cmd = [sys.executable, "bench/generate_speed.py", "--device", "tpu"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown device 'tpu'" in out.stderr


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real():
    """The memory bench, the real checkpoint's config and its per-method counts (meta device: no memory)."""
    fm = _bench_module("finetune_memory")
    config = HiggsConfig.from_file(ROOT / "tests/data/generation-original.config.json")
    return fm, config, fm.parameter_counts(fm.build(config))


def test_finetune_memory_counts_the_real_model_and_matches_peft(real):
    fm, config, counts = real
    assert counts["full"]["total"] == 5_771_283_456  # FORMATS.md: the real checkpoint's count
    D, I, L = config.hidden_size, config.intermediate_size, config.num_layers
    audio_table = config.num_codebooks * config.codebook_entries * D
    assert counts["audio"]["trainable"] == L * (3 * D * I + 2 * D) + 2 * audio_table
    assert counts["full"]["trained"] == counts["full"]["total"] - config.vocab_size * D  # no text head grads
    kv = config.num_kv_heads * config.head_dim
    assert counts["lora"]["trainable"] == L * 16 * (2 * (D + D) + 2 * (D + kv))

    # the shape count is what peft itself adds, on the mini (real modules, real peft)
    from peft import LoraConfig, inject_adapter_in_model

    mini = HiggsConfig.from_file(ROOT / "higgslab/assets/mini/model/config.json")
    model = fm.build(mini, "cpu")
    counted = fm.lora_parameters(model)
    lora = LoraConfig(r=fm.LORA_RANK, lora_alpha=fm.LORA_ALPHA, target_modules=list(fm.LORA_TARGETS))
    added = sum(p.numel() for n, p in inject_adapter_in_model(lora, model).named_parameters() if "lora_" in n)
    assert added == counted == fm.parameter_counts(fm.build(mini))["lora"]["trainable"]


def test_finetune_memory_formula_and_measured_step(real):
    fm, config, counts = real
    b = fm.gpu_bytes(config, counts["lora"], seq=2048, act_per_token_layer=100_000, checkpointing=False)
    trained = counts["lora"]["trained"]
    assert b["weights"] == 2 * (counts["lora"]["total"] - trained) + 6 * trained
    assert b["adamw"] == 2 * b["grads"] == 8 * trained
    assert b["activations"] == 2048 * (28 * 100_000 + fm.logits_bytes_per_token(config))
    ckpt = fm.gpu_bytes(config, counts["lora"], seq=2048, act_per_token_layer=100_000, checkpointing=True)
    assert ckpt["activations"] < b["activations"] and ckpt["weights"] == b["weights"]
    assert fm.fits(b["total"]) == "fits 24/48/80 GB"  # LoRA of the 5.8B model: ~12 GB of bf16 weights
    full = fm.gpu_bytes(config, counts["full"], seq=2048, act_per_token_layer=100_000, checkpointing=True)
    assert fm.fits(full["total"]) == "fits none of 24/48/80 GB"  # 18 B per trained parameter > 80 GB

    # the measured step runs for every method; checkpointing saves fewer activations (mini, 2 layers)
    mini = fm.reduced(HiggsConfig.from_file(ROOT / "higgslab/assets/mini/model/config.json"), 2)
    for method in fm.METHODS:
        plain = fm.measure_step(mini, method, seq=32, checkpointing=False)
        assert 0 < fm.measure_step(mini, method, seq=32, checkpointing=True)["saved"] < plain["saved"]


@pytest.mark.slow
def test_dualffn_train_bench_runs_every_method():
    cmd = [sys.executable, "bench/dualffn_train.py", "--hidden", "96", "--seq", "32", "--repeats", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for method in ("full", "lora", "audio"):
        assert f"\n{method}: trained parameters" in out.stdout
    assert out.stdout.count("ratio") == 3 * 3  # one per repeat, wall and CPU summaries, per method
    bad = subprocess.run(cmd + ["--methods", "qlora"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (
        bad.returncode != 0
        and bad.stderr.strip() == "error: unknown method(s) ['qlora']; choose from full, lora, audio"
    )


def test_finetune_speed_models_have_the_real_shape_and_examples_their_length(tmp_path):
    from higgslab.embedded import resolve_paths
    from higgslab.io.text_tokenizer import load_text_tokenizer
    from higgslab.train.examples import read_prepared

    fs = _bench_module("finetune_speed")
    mini_dir = resolve_paths(None, None)[0]
    mini, real = HiggsConfig.from_file(mini_dir / "config.json"), HiggsConfig.from_file(fs.REAL_CONFIG)
    mid = fs.mid_config(mini, real, hidden=1024, layers=8)
    assert (mid.hidden_size, mid.num_layers, mid.head_dim, mid.num_heads) == (1024, 8, 128, 8)
    assert (
        mid.intermediate_size == 2731 and mid.num_kv_heads == 4
    )  # 8192/3072 x 1024; <= 3 queries per kv head
    assert [mid.layer_kind(i) for i in range(8)] == ["dual_ffn"] * 8
    assert (mid.vocab_size, mid.num_codebooks, mid.codebook_size) == (mini.vocab_size, 8, 1024)
    with pytest.raises(fs.BenchError, match="multiple of the real head width 128"):
        fs.mid_config(mini, real, hidden=1000, layers=8)

    data = read_prepared(fs.write_prepared(tmp_path / "data", mini_dir, n=4, seq=96))
    data.check(mini)
    tok = load_text_tokenizer(mini_dir)
    assert [len(data.example(e, tok, mini).input_ids) for e in data.entries] == [96] * 4  # no padding
    with pytest.raises(fs.BenchError, match="--seq 20 is shorter than the prompt"):
        fs.write_prepared(tmp_path / "short", mini_dir, n=1, seq=20)


@pytest.mark.slow
def test_finetune_speed_bench_runs_one_process_and_torchrun(tmp_path):
    cmd = [sys.executable, "bench/finetune_speed.py", "--quick", "--models", "mid"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert out.stdout.startswith("CPU: ") and "threads: 1 process x" in out.stdout
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("| mid (2 layers, hidden 256")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[4]) > 0 and cells[5].startswith("yes")  # scaling; the two launches' losses agree


@pytest.mark.slow
def test_finetune_speed_stops_a_launch_and_its_workers_at_the_timeout():
    import psutil

    fs = _bench_module("finetune_speed")
    marker = "61.2345"  # a sleep no one else runs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(fs.free_port()), "--no-python", "sleep", marker]  # fmt: skip
    with pytest.raises(fs.BenchError, match="did not finish in 10 s"):
        fs.launch(cmd, threads=1, timeout=10)
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    assert left == []


@pytest.mark.slow
def test_quantize_bench_runs_at_a_small_size(tmp_path):
    """The real-size memory/speed bench end to end on the mini's architecture: three processes, a table."""
    cmd = [sys.executable, "bench/quantize.py", "--config", "higgslab/assets/mini/model/config.json",
           "--workdir", str(tmp_path), "--steps", "2", "4", "--repeats", "1"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.stdout.splitlines()
        if line.split()[:1] in (["none"], ["int8"], ["int4"])
    }
    assert set(rows) == {"none", "int8", "int4"} and rows["none"][-2] == "1.000"  # top-1 against itself
    assert float(rows["int8"][5]) < 1  # weights as a share of none's


def test_stream_decode_bench_compares_its_schedules_with_one_shot():
    cmd = [sys.executable, "bench/stream_decode.py", "--frames", "12", "--repeats", "1", "--streams", "3"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if "pushes" in line]
    assert [row.split("(")[1].split()[0] for row in rows] == ["2", "3", "12"]  # 10 + 2; 5, 5, 2; 1 × 12
    assert all(float(row.rsplit(" ", 1)[1]) < 1e-5 for row in rows)
    assert "3 sequences of 3 lengths" in out.stdout.splitlines()[-1]
