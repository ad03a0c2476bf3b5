"""Device choice and device calls: CPU for real, the NPU path with a stand-in torch_npu and torch.npu."""

import sys
import types

import pytest
import torch

from higgslab import device as dev
from higgslab.errors import HiggsLabError


@pytest.fixture
def fake_npu(monkeypatch):
    """A stand-in `torch_npu` module and `torch.npu` namespace (as vllm-ascend's unit tests do).

    Like the real torch_npu it names the privateuse1 backend "npu" so that `torch.device("npu")` parses.
    That rename is process-wide and permanent, and from then on torch reports "npu" as the accelerator
    (optimizers and `fork_rng` ask it), so afterwards `torch.npu` stays as a stand-in saying "none here".
    """
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    calls = []
    npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_name=lambda index=0: "Ascend910B3",
        synchronize=lambda: calls.append("synchronize"),
        max_memory_allocated=lambda device=None: 12345,
        reset_peak_memory_stats=lambda device=None: calls.append("reset"),
        NPUGraph=object,
        manual_seed_all=lambda seed: None,  # torch caches this module as the accelerator's: seeding asks it
        _is_in_bad_fork=lambda: False,
    )
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    torch.npu = npu
    npu.calls = calls
    yield npu
    torch.npu = types.SimpleNamespace(
        is_available=lambda: False,
        device_count=lambda: 0,
        manual_seed_all=lambda seed: None,
        _is_in_bad_fork=lambda: False,
    )


def test_auto_is_cpu_here_and_cpu_defaults():
    assert not dev.npu_available()  # no torch_npu installed in this environment
    device = dev.pick_device()
    assert device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = dev.pick_device("cpu")
    assert cpu == torch.device("cpu") and dev.default_dtype(cpu) == torch.float32
    assert dev.peak_memory(cpu) is None and not dev.graph_capture_supported(cpu)
    dev.synchronize(cpu)
    dev.reset_peak_memory(cpu)
    assert isinstance(dev.device_name(cpu), str) and dev.device_name(cpu)


@pytest.mark.parametrize(
    "name,word",
    [("tpu", "unknown"), ("cuda:x", "unknown"), ("npu", "not available"), ("npu:1", "not available")],
)
def test_unknown_or_missing_device_raises_one_line(name, word, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu → ImportError, on any machine
    with pytest.raises(HiggsLabError, match=word) as e:
        dev.pick_device(name)
    assert "\n" not in str(e.value) and repr(name) in str(e.value)


def test_cuda_past_the_last_device_raises_one_line():
    """`cuda:<count>`: "not available" without CUDA, "does not exist" on a CUDA machine."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    word = f"does not exist: {count} found" if count else "not available"
    with pytest.raises(HiggsLabError, match=word) as e:
        dev.pick_device(f"cuda:{count}")
    assert "\n" not in str(e.value)


def test_npu_comes_first_and_is_bf16_on_910b(fake_npu):
    assert dev.npu_available()
    device = dev.pick_device("auto")
    assert device == torch.device("npu")
    assert dev.pick_device("npu:1") == torch.device("npu:1")
    with pytest.raises(HiggsLabError, match="does not exist"):
        dev.pick_device("npu:2")
    assert dev.default_dtype(device) == torch.bfloat16
    assert dev.device_name(device) == "Ascend910B3"
    assert dev.peak_memory(device) == 12345 and dev.graph_capture_supported(device)
    dev.synchronize(device)
    dev.reset_peak_memory(device)
    assert fake_npu.calls == ["synchronize", "reset"]


@pytest.mark.parametrize(
    "name,dtype",
    [("Ascend910A", torch.float16), ("Ascend910ProA", torch.float16), ("Ascend310P3", torch.float16)]
    + [("Ascend910B4", torch.bfloat16), ("Ascend910_9391", torch.bfloat16)],
)
def test_npu_dtype_follows_the_chip(fake_npu, name, dtype):
    fake_npu.get_device_name = lambda index=0: name
    assert dev.default_dtype(torch.device("npu")) == dtype


def test_npu_without_cann_is_not_available(monkeypatch, fake_npu):
    def broken():
        raise RuntimeError("libascendcl.so: cannot open shared object file")

    fake_npu.is_available = broken
    assert not dev.npu_available()
    monkeypatch.delitem(sys.modules, "torch_npu")
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu → ImportError
    fake_npu.is_available = lambda: True
    assert not dev.npu_available()
    assert dev.pick_device() != torch.device("npu")


def test_finetune_ranks_take_their_own_npu_and_hccl(fake_npu, monkeypatch):
    """Under torchrun on an Ascend machine each rank trains on its LOCAL_RANK-th NPU and the group uses HCCL
    (NCCL on GPUs, gloo on the CPU): nothing of the collective is home-made."""
    import torch.distributed as dist

    from higgslab.train import finetune

    fake_npu.set_device = lambda index: fake_npu.calls.append(f"set_device {index}")
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    backends = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: backends.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    ranks = finetune.start_distributed("ddp")
    assert (ranks.rank, ranks.world, ranks.device) == (3, 4, torch.device("npu", 1))
    assert backends == ["hccl"] and fake_npu.calls == ["set_device 1"]
