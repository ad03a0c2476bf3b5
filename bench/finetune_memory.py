"""Memory of fine-tuning the real Higgs Audio V2 per method (lora / audio / full): counted, measured, projected.

    python bench/finetune_memory.py [--config tests/data/generation-original.config.json] [--seq 2048]
                                    [--measure-seq 256] [--no-measure]

1. Trainable parameters per method, counted on the meta device (no memory) from the checkpoint's config:
   `lora` = contract C's default `LoraSettings` (rank 16 on q/k/v/o_proj of every layer, base frozen),
   `audio` = the DualFFN audio path (audio FFNs + norms, audio embedding and head; text weights frozen),
   `full` = everything.
2. Measured on the CPU (`--measure-seq` tokens, 70 % audio, batch 1, random float32 weights, no text head,
   which an audio loss never reaches): one forward + backward at 1 and at 2 layers of the real width, each in
   a fresh process. Float32, not bf16: a CPU without AVX-512 bf16 runs bf16 matrix products through a
   reference kernel (under 1 GFLOP/s for some layouts, minutes per step); activations in bf16 take half
   the bytes, which is how they enter the GPU formula. Two figures per run: the bytes autograd saves for backward (saved-tensor hooks, parameters
   excluded: exact, the activations), and the step's peak resident memory above the process's baseline
   (`ru_maxrss`). Scaled to all layers as `m(1) + (L - 1) * (m(2) - m(1))`: the layers are identical, so the
   second layer's increment is every further layer's. Activations per token and layer = the saved-bytes
   increment / tokens.
3. GPU memory at `--seq` tokens (batch 1), per method, without and with gradient checkpointing, as
       weights    2 B per frozen parameter (bf16) + 6 B per trained one (bf16 working copy + fp32 master)
     + grads      4 B per trained parameter (fp32)
     + AdamW      8 B per trained parameter (fp32 m and v)
     + activations  no checkpointing: L * seq * a      with checkpointing: L * seq * 2 * hidden + seq * a
                    (a = half the measured float32 bytes per token and layer; checkpointing keeps each layer's
                    bf16 input and recomputes one layer at a time) + seq * n_q * entries * 10 B for the
                    audio logits (bf16) and their fp32 log-softmax and gradient.
   A method "fits" a GPU when that total is at most 90 % of its memory (CUDA context, fragmentation).
   "Trained" = receives a gradient: `full` trains everything but the text head (the loss is on the audio
   logits; the text head is loaded, frozen, 2 B per parameter).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from higgslab.config import HiggsConfig
from higgslab.model.lm import HiggsAudioModel

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "audio", "full")
LORA_RANK, LORA_ALPHA = 16, 32  # contract C's default LoraSettings: rank 16 on attention
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
AUDIO_PARTS = (  # what the `audio` method trains: every parameter whose name holds one of these
    "audio_mlp.",
    "audio_input_layernorm.",
    "audio_post_attention_layernorm.",
    "audio_attn.",
    "audio_post_audio_attn_layer_norm.",
    "embed_audio.",
    "audio_head.",
)
GPUS_GB = (24, 48, 80)
USABLE = 0.9  # share of a GPU's memory a run may plan for
GB = 1e9


def build(config: HiggsConfig, device: str = "meta", text_head: bool = True) -> HiggsAudioModel:
    with torch.device(device):
        return HiggsAudioModel(config, text_head=text_head)


def lora_parameters(model: nn.Module, rank: int = LORA_RANK, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """LoRA's added parameters: `rank * (in + out)` (A `[rank, in]`, B `[out, rank]`) per targeted Linear."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def is_audio_parameter(name: str) -> bool:
    return any(part in name for part in AUDIO_PARTS)


def parameter_counts(model: HiggsAudioModel) -> dict[str, dict[str, int]]:
    """Per method: `total` parameters held, `trainable` ones (what `trainable_parameters` reports) and
    `trained` ones (those that receive a gradient from an audio loss: not the text head)."""
    named = dict(model.named_parameters())
    base = sum(p.numel() for p in named.values())
    text_head = sum(p.numel() for n, p in named.items() if n.startswith("text_head."))
    audio = sum(p.numel() for n, p in named.items() if is_audio_parameter(n))
    lora = lora_parameters(model)
    return {
        "lora": {"total": base + lora, "trainable": lora, "trained": lora},
        "audio": {"total": base, "trainable": audio, "trained": audio},
        "full": {"total": base, "trainable": base, "trained": base - text_head},
    }


def logits_bytes_per_token(config: HiggsConfig) -> int:
    return config.num_codebooks * config.codebook_entries * (2 + 4 + 4)


def gpu_bytes(
    config: HiggsConfig, counts: dict[str, int], seq: int, act_per_token_layer: float, checkpointing: bool
) -> dict[str, float]:
    """The formula of the module docstring, in bytes, for one method at `seq` tokens (batch 1)."""
    trained, frozen = counts["trained"], counts["total"] - counts["trained"]
    L = config.num_layers
    if checkpointing:
        layers = L * seq * 2 * config.hidden_size + seq * act_per_token_layer
    else:
        layers = L * seq * act_per_token_layer
    parts = {
        "weights": 2 * frozen + 6 * trained,
        "grads": 4 * trained,
        "adamw": 8 * trained,
        "activations": layers + seq * logits_bytes_per_token(config),
    }
    parts["total"] = sum(parts.values())
    return parts


# ---- the measured step (run in a fresh process per figure: ru_maxrss only grows) ------------------------
def reduced(config: HiggsConfig, layers: int) -> HiggsConfig:
    kinds = [i for i in config.dual_ffn_layers if i < layers] or list(range(layers))
    return config.replace(num_layers=layers, dual_ffn_layers=tuple(kinds))


def prepare(model: HiggsAudioModel, method: str) -> nn.Module:
    """requires_grad as the method sets it; `lora` through peft itself (adapters start at B = 0)."""
    for name, p in model.named_parameters():
        p.requires_grad_(method == "full" or (method == "audio" and is_audio_parameter(name)))
    if method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=list(LORA_TARGETS))
        model = inject_adapter_in_model(lora, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    return model


def batch(config: HiggsConfig, seq: int, audio_share: float = 0.7) -> tuple[torch.Tensor, ...]:
    """One row: text then audio-out placeholders, `audio_share` of them audio; random codes and labels."""
    g = torch.Generator().manual_seed(0)
    n_audio = round(seq * audio_share)
    text = torch.randint(0, min(config.bos_token_id, config.vocab_size), (1, seq - n_audio), generator=g)
    audio = torch.full((1, n_audio), config.audio_out_token_id)
    codes = torch.randint(0, config.codebook_size, (1, config.num_codebooks, n_audio), generator=g)
    labels = torch.randint(0, config.codebook_size, (n_audio, config.num_codebooks), generator=g)
    return torch.cat([text, audio], 1), codes, labels


class Checkpointed(nn.Module):
    """A layer whose activations are recomputed in backward (non-reentrant `torch.utils.checkpoint`)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *args):
        return torch.utils.checkpoint.checkpoint(self.layer, *args, use_reentrant=False)


def measure_step(config: HiggsConfig, method: str, seq: int, checkpointing: bool) -> dict[str, float]:
    """Saved activation bytes and peak resident bytes (above the start) of one float32 forward + backward."""
    start = rss_now()
    model = build(config, text_head=False).to_empty(device="cpu")
    for p in model.parameters():  # random weights, every page touched (resident)
        nn.init.normal_(p, std=0.02)
    model.materialize_buffers()
    model = prepare(model, method)
    if checkpointing:
        model.layers = nn.ModuleList(Checkpointed(layer) for layer in model.layers)
    input_ids, codes, labels = batch(config, seq)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # a (view of a) parameter is not an activation
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids, codes, logits="all")
        logits = out.audio_logits[out.audio_out_mask]  # [N_audio, n_q, entries]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    loss.backward()
    return {"saved": sum(saved.values()), "peak": peak_rss() - start}


def rss_now() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_in_child(config_path: str, method: str, layers: int, seq: int, checkpointing: bool) -> dict:
    cmd = [sys.executable, __file__, "--config", config_path, "--child", method, str(layers), str(seq)]
    cmd += ["--checkpointing"] if checkpointing else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {method} {layers} layers failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the report -------------------------------------------------------------------------------------------
def fits(total_bytes: float) -> str:
    ok = [f"{gb}" for gb in GPUS_GB if total_bytes <= USABLE * gb * GB]
    return f"fits {'/'.join(ok)} GB" if ok else f"fits none of {'/'.join(map(str, GPUS_GB))} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "tests/data/generation-original.config.json"))
    ap.add_argument("--seq", type=int, default=2048, help="tokens per sample for the GPU projection")
    ap.add_argument("--measure-seq", type=int, default=256, help="tokens of the measured CPU step")
    ap.add_argument("--no-measure", action="store_true", help="counts and formula only (activations: --act)")
    ap.add_argument("--act", type=float, default=None, help="bytes per token and layer, instead of measuring")
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "LAYERS", "SEQ"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    config = HiggsConfig.from_file(args.config)

    if args.child:  # one measured step, JSON on stdout
        method, layers, seq = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps(measure_step(reduced(config, layers), method, seq, args.checkpointing)))
        return

    counts = parameter_counts(build(config))
    L = config.num_layers
    print(
        f"{args.config}: {L} layers, hidden {config.hidden_size}, FFN {config.intermediate_size}, "
        f"vocab {config.vocab_size}, {counts['full']['total']:,} parameters"
    )
    print(f"\ntrainable parameters (lora: rank {LORA_RANK} on {'/'.join(LORA_TARGETS)})")
    for method in METHODS:
        c = counts[method]
        print(f"  {method:5s} {c['trainable']:>13,}  ({c['trainable'] / c['total']:.2%} of {c['total']:,})")

    act = {m: args.act for m in METHODS}
    if not args.no_measure:
        S = args.measure_seq
        print(f"\nmeasured on the CPU: one float32 forward + backward, {S} tokens (70 % audio), batch 1")
        print(
            f"  (1 and 2 layers in fresh processes; scaled to {L} layers as m(1) + {L - 1} * (m(2) - m(1)))"
        )
        for method in METHODS:
            row = []
            for ckpt in (False, True):
                m1, m2 = (measure_in_child(args.config, method, n, S, ckpt) for n in (1, 2))
                scaled = {k: m1[k] + (L - 1) * (m2[k] - m1[k]) for k in m1}
                if not ckpt:
                    act[method] = (m2["saved"] - m1["saved"]) / S / 2  # bf16 on the GPU: half the bytes
                row.append(
                    f"{'checkpointing' if ckpt else 'plain':13s} peak {scaled['peak'] / GB:6.2f} GB "
                    f"(1 layer {m1['peak'] / GB:.2f}, 2 layers {m2['peak'] / GB:.2f}), "
                    f"saved activations {scaled['saved'] / GB:.3f} GB"
                )
            print(f"  {method:5s} " + f"\n  {'':5s} ".join(row))
            print(f"  {'':5s} activations per token and layer: {act[method] / 1024:.1f} KiB in bf16")
    if any(a is None for a in act.values()):
        sys.exit("error: --no-measure needs --act (bytes per token and layer)")

    print(
        f"\nGPU memory at {args.seq} tokens, batch 1 (bf16 weights, trained ones with fp32 master, grads, "
        f"AdamW; fits = total <= {USABLE:.0%} of the GPU)"
    )
    for method in METHODS:
        for ckpt in (False, True):
            b = gpu_bytes(config, counts[method], args.seq, act[method], ckpt)
            parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in b.items() if k != "total")
            label = "checkpointing" if ckpt else "plain"
            print(f"  {method:5s} {label:13s} {b['total'] / GB:6.1f} GB = {parts}: {fits(b['total'])}")


if __name__ == "__main__":
    main()
