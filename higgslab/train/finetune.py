"""Fine-tune a Higgs Audio V2 checkpoint on a prepared folder: one process, or many under `torchrun`.

    python -m higgslab.finetune data=PREPARED_DIR output_dir=DIR method=lora|audio|full steps=N
    torchrun --nproc_per_node 2 -m higgslab.finetune ... distributed=ddp|fsdp

A step is one global batch of `batch_size × world × grad_accum` examples, drawn from a permutation of the
training split per epoch (seeded by `seed` and the epoch, so the order is a function of the step alone).
Micro-batch a of rank r is the slice `[(a·world + r)·batch_size, …+batch_size)` of it: 2 ranks × batch b and
1 rank × batch 2b see the same examples, and their losses agree. The loss of a step is the mean
cross-entropy over every audio target of the global batch (+ `text_weight` × the text targets' mean); each
micro-batch contributes its summed cross-entropy divided by the global target count (known on every rank:
the labels are built before training), times the world size because DDP and FSDP average gradients over
ranks. So gradient accumulation and the number of ranks never change the numbers, only their rounding.

Checkpoints (`last.pt`, rank 0 writes it atomically): the trainable weights and optimizer state as full
tensors (`torch.distributed.checkpoint.state_dict`, the same for one process, DDP and FSDP2), the step and
the history; the learning rate is a function of the step (`loop.learning_rate`). A resumed run continues
with the losses of the uninterrupted one. Logs: `log.csv` and `loss.png` beside it (`tokens_per_s`: the
global batch's tokens over the training step's wall time, evaluation and checkpoints excluded); the trained
model through `methods.save_trained` into `output_dir/model` (for `lora` a PEFT adapter directory).
"""

from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from higgslab.errors import HiggsLabError
from higgslab.train.examples import IGNORE, TrainExample, collate, loss_sums, read_prepared
from higgslab.train.sync import barrier

DISTRIBUTED = ("none", "ddp", "fsdp")
COLLECTIVES = {"cuda": "nccl", "npu": "hccl"}  # each accelerator's torch.distributed backend; the CPU: gloo
METHODS = ("lora", "audio", "full")  # methods.METHODS once helper C's module is merged
LOG = "log.csv"


@dataclass
class FinetuneSettings:
    """Every key of `python -m higgslab.finetune` (finetune.yaml), typed."""

    data: str
    output_dir: str
    method: str = "lora"
    method_settings: dict = field(default_factory=dict)  # the `finetune` group (LoRA rank, alpha, ...)
    model_path: str | None = None
    steps: int = 100
    batch_size: int = 4  # per rank and micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    text_weight: float = 0.0  # weight of the text targets (<|audio_out_bos|>, <|audio_eos|>, <|eot_id|>)
    eval_examples: int = 0  # held out from training, for the eval loss
    eval_every: int = 0  # 0: at the last step only
    checkpoint_every: int = 50
    seed: int = 0
    gradient_checkpointing: bool = False
    distributed: str = "none"
    resume: bool = True
    threads: int | None = None

    def check(self) -> None:
        """One line per bad setting, before anything loads."""
        if self.method not in METHODS:
            raise HiggsLabError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if self.distributed not in DISTRIBUTED:
            raise HiggsLabError(f"distributed={self.distributed!r}: expected one of {', '.join(DISTRIBUTED)}")
        for key in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise HiggsLabError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup", "eval_examples", "eval_every", "text_weight", "weight_decay"):
            if getattr(self, key) < 0:
                raise HiggsLabError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise HiggsLabError(f"lr and grad_clip must be > 0, got {self.lr} and {self.grad_clip}")


def settings_from(cfg) -> FinetuneSettings:
    """The CLI's config (finetune.yaml + the method group) → checked `FinetuneSettings`; one line per error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for key in ("data", "output_dir"):
        if OmegaConf.is_missing(cfg, key):
            raise HiggsLabError(
                f"{key}=... is required (python -m higgslab.finetune data=DIR output_dir=DIR)"
            )
    raw = OmegaConf.to_container(cfg, resolve=True)
    lora = raw.pop("lora", None)
    unknown = sorted(set(raw) - set(FinetuneSettings.__dataclass_fields__))
    if unknown:
        raise HiggsLabError(f"unknown setting(s) {', '.join(unknown)} (see higgslab/conf/finetune.yaml)")
    try:
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FinetuneSettings), raw))
    except OmegaConfBaseException as e:
        raise HiggsLabError(str(e).splitlines()[0]) from None
    settings.method_settings = dict(lora or {}) if settings.method == "lora" else {}
    settings.check()
    return settings


# ---- processes --------------------------------------------------------------------------------------------
@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_distributed(kind: str) -> Ranks:
    """The process group `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on
    GPUs, HCCL on Ascend NPUs, gloo on the CPU. `kind="none"` is one process and refuses a multi-process launch."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if kind == "none":
        if world > 1:
            raise HiggsLabError(f"launched with WORLD_SIZE={world}: set distributed=ddp or distributed=fsdp")
        return Ranks(device=_device(0))
    if "RANK" not in os.environ:
        raise HiggsLabError(f"distributed={kind} needs torchrun (RANK, WORLD_SIZE, MASTER_ADDR are not set)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(local)
    if not dist.is_initialized():
        dist.init_process_group(COLLECTIVES.get(device.type, "gloo"))
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def _device(local_rank: int) -> torch.device:
    """This rank's accelerator in `device.pick_device`'s order (NPU, then GPU), else the CPU; Apple's MPS is
    not used for training."""
    from higgslab.device import _backend, pick_device

    kind = pick_device("auto").type
    if kind not in COLLECTIVES:
        return torch.device("cpu")
    _backend(torch.device(kind)).set_device(local_rank)
    return torch.device(kind, local_rank)


def _all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum over ranks (a no-op for one process): for logging and counting, never for gradients."""
    if ranks.world > 1:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
    return values


# ---- the model ------------------------------------------------------------------------------------------
class LossModel(nn.Module):
    """The model with its loss as `forward`, so that DDP and FSDP2 see every head the loss uses run inside
    one forward call. `forward(batch)` → `loss_sums` (summed cross-entropies and target counts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return loss_sums(self.model, batch)


def prepare_method(model: nn.Module, method: str, method_settings: dict) -> nn.Module:
    """Apply the method (`higgslab.train.methods.prepare_for`); `method_settings`: the LoRA settings."""
    from higgslab.train import methods

    lora = None
    if method == "lora":
        lora = methods.LoraSettings(
            **{**method_settings, "targets": tuple(method_settings.get("targets", ("attention",)))}
        )
    return methods.prepare_for(model, method, lora)


def save_model(model: nn.Module, method: str, output_dir: Path, base_path: Path) -> Path:
    """Write the trained model (`higgslab.train.methods.save_trained`): an adapter, or a checkpoint."""
    from higgslab.train import methods

    return methods.save_trained(model, method, output_dir, base_path=base_path)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.layers:
        forward = layer.forward
        layer.forward = lambda *a, _forward=forward, **k: checkpoint(_forward, *a, use_reentrant=False, **k)


def wrap(model: nn.Module, kind: str, ranks: Ranks) -> nn.Module:
    """`LossModel(model)` as one process, under DDP, or sharded with FSDP2 (each decoder layer, then the
    root: embeddings, norm and heads)."""
    loss_model = LossModel(model).to(ranks.device)
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            loss_model, device_ids=[ranks.device.index] if ranks.device.index is not None else None
        )
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in _decoder_layers(model):
            fully_shard(layer)
        return fully_shard(loss_model)
    return loss_model


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    from higgslab.model.dualffn import DualFFNLayer

    return [m for m in model.modules() if isinstance(m, DualFFNLayer)]


# ---- data order --------------------------------------------------------------------------------------------
def split(n: int, eval_examples: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) indices: a seeded permutation, its first `eval_examples` held out."""
    if eval_examples >= n:
        raise HiggsLabError(f"eval_examples={eval_examples} leaves nothing to train on ({n} examples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[eval_examples:]), sorted(order[:eval_examples])


def global_batch(step: int, n: int, size: int, seed: int) -> list[int]:
    """The `size` indices into `n` training examples that step `step` trains on: consecutive positions of
    per-epoch permutations (each seeded by `seed` and the epoch), so every example comes once an epoch."""
    picked = []
    for position in range(step * size, (step + 1) * size):
        epoch = position // n
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        picked.append(int(order[position % n]))
    return picked


def micro_batches(indices: list[int], batch_size: int, ranks: Ranks) -> list[list[int]]:
    """This rank's micro-batches of a global batch: micro-batch a is slice a·world + rank."""
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return chunks[ranks.rank :: ranks.world]


# ---- checkpoints ---------------------------------------------------------------------------------------
def _state_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, ignore_frozen_params=True, **kw)


def save_state(path: Path, module: nn.Module, optimizer, step: int, history: list, ranks: Ranks) -> None:
    """Full trainable weights + optimizer state, written by rank 0 only (atomically, `loop.write_state`)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from higgslab.train.loop import write_state

    model_state, optim_state = get_state_dict(module, optimizer, options=_state_options(cpu_offload=True))
    if ranks.main:
        write_state(path, {"model": model_state, "optimizer": optim_state, "step": step, "history": history})
    barrier(ranks.world, ranks.device)


def load_state(path: Path, module: nn.Module, optimizer) -> tuple[int, list]:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = torch.load(path, map_location="cpu", weights_only=False)
    set_state_dict(
        module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
        options=_state_options(strict=False),
    )  # fmt: skip
    return state["step"], state["history"]


def write_log(history: list[dict], path: Path) -> None:
    keys = ["step"] + sorted({k for row in history for k in row} - {"step"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(history)


# ---- the run ---------------------------------------------------------------------------------------------
def finetune(s: FinetuneSettings, stop_after: int | None = None) -> list[dict]:
    """Run as configured; returns the history (one dict per step, identical on every rank but for the
    `tokens_per_s` each rank clocks).
    `stop_after`: return after that step as if killed (tests of resuming). Seeds torch's global generator
    from `seed` (adapter init, dropout per step) and restores its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        return _finetune(s, stop_after)


def _finetune(s: FinetuneSettings, stop_after: int | None) -> list[dict]:
    from tqdm import tqdm

    from higgslab.embedded import resolve_paths
    from higgslab.io.load import load_model
    from higgslab.io.text_tokenizer import load_text_tokenizer
    from higgslab.train.loop import CURVE, learning_rate, plot_history

    s.check()
    data = read_prepared(s.data)
    train_ids, eval_ids = split(len(data.entries), s.eval_examples, s.seed)
    model_dir, _, label = resolve_paths(s.model_path, None)
    out = Path(s.output_dir)
    ranks = start_distributed(s.distributed)
    if s.threads:
        torch.set_num_threads(s.threads)

    # float32 master weights; bf16 autocast on accelerators
    model = load_model(model_dir, dtype=torch.float32)
    data.check(model.config)
    text_tok = load_text_tokenizer(model_dir)
    examples = [data.example(e, text_tok, model.config) for e in data.entries]
    torch.manual_seed(s.seed)  # a new adapter's init: the same on every rank and in a resumed run
    model = prepare_method(model, s.method, dict(s.method_settings))
    if s.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    module = wrap(model, s.distributed, ranks)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    if s.resume and (out / "last.pt").is_file():
        start, history = load_state(out / "last.pt", module, optimizer)
    autocast = (
        torch.autocast(ranks.device.type, dtype=torch.bfloat16)
        if ranks.device.type != "cpu"
        else nullcontext()
    )

    def run_batch(batch_examples: list[TrainExample]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(ranks.device) for k, v in collate(batch_examples, model.config).items()}
        with autocast:
            return module(batch)

    G = s.batch_size * ranks.world * s.grad_accum
    if ranks.main:
        print(
            f"fine-tuning {label} ({s.method}) on {len(train_ids)} examples, {ranks.world} rank(s), batch {G}"
        )
    bar = tqdm(
        range(start, s.steps),
        initial=start,
        total=s.steps,
        desc=f"finetune {s.method}",
        disable=not ranks.main,
    )
    module.train()
    for step in bar:
        t0 = time.perf_counter()
        torch.manual_seed(
            (s.seed * 1_000_003 + step) * ranks.world + ranks.rank
        )  # dropout: a function of the step
        picked = [examples[train_ids[i]] for i in global_batch(step, len(train_ids), G, s.seed)]
        n_audio = sum(e.targets for e in picked)
        n_text = sum(int((e.text_labels != IGNORE).sum()) for e in picked)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, s.lr, s.warmup, s.steps)
        optimizer.zero_grad(set_to_none=True)
        logged = torch.zeros(2)
        for micro in micro_batches(list(range(G)), s.batch_size, ranks):
            sums = run_batch([picked[i] for i in micro])
            audio, text = sums["audio"] / n_audio, sums["text"] / max(n_text, 1)
            ((audio + s.text_weight * text) * ranks.world).backward()
            logged += torch.stack([audio, text]).detach().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        optimizer.step()
        audio_loss, text_loss = _all_sum(logged, ranks).tolist()  # (every rank has finished the step)
        tokens = sum(len(e.input_ids) for e in picked)  # the global batch's
        row = {"step": step + 1, "loss": audio_loss + s.text_weight * text_loss, "audio_loss": audio_loss,
               "text_loss": text_loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
               "tokens_per_s": tokens / (time.perf_counter() - t0)}  # fmt: skip
        last = step + 1 == s.steps
        if eval_ids and ((s.eval_every and (step + 1) % s.eval_every == 0) or last):
            row["eval_loss"] = evaluate(module, [examples[i] for i in eval_ids], run_batch, ranks)
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if (step + 1) % s.checkpoint_every == 0 or last:
            save_state(out / "last.pt", module, optimizer, step + 1, history, ranks)
            if ranks.main:
                write_log(history, out / LOG)
        # a plot takes seconds: once, at the end (log.csv has every checkpoint's rows)
        if ranks.main and last:
            plot_history(history, out / CURVE, f"finetune {s.method}")
        if stop_after is not None and step + 1 == stop_after:
            return history
    module.eval()
    _save_final(module, model, s, model_dir, out, ranks)
    return history


@torch.no_grad()
def evaluate(module: nn.Module, held_out: list[TrainExample], run_batch, ranks: Ranks) -> float:
    """Mean audio cross-entropy over every held-out target, one example per forward (every rank runs the
    same number of forwards, as FSDP needs; a rank short of examples repeats one and drops its sums)."""
    module.eval()
    sums = torch.zeros(2)
    for i in range(math.ceil(len(held_out) / ranks.world)):
        j = i * ranks.world + ranks.rank
        out = run_batch([held_out[min(j, len(held_out) - 1)]])
        if j < len(held_out):
            sums += torch.stack([out["audio"].float().cpu(), out["audio_targets"].float().cpu()])
    module.train()
    total, count = _all_sum(sums, ranks).tolist()
    return total / count


def _save_final(
    module: nn.Module, model: nn.Module, s: FinetuneSettings, model_dir: Path, out: Path, ranks: Ranks
) -> None:
    """The trained model into `out/model` by rank 0; under FSDP the full weights are gathered into an
    unsharded copy first."""
    if s.distributed == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from higgslab.io.load import load_model

        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if ranks.main:
            model = prepare_method(
                load_model(model_dir, dtype=torch.float32), s.method, dict(s.method_settings)
            )
            LossModel(model).load_state_dict(full)
    if ranks.main:
        path = save_model(model.eval(), s.method, out / "model", model_dir)
        print(f"wrote {path}")
    barrier(ranks.world, ranks.device)
