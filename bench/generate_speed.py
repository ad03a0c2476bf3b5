"""Decode speed: higgslab's Generator vs transformers' HiggsAudioV2 `generate`, same random weights, one run.

    python bench/generate_speed.py [--configs overhead mid real] [--steps 8 40] [--compile [MODE]]
    python bench/generate_speed.py --device cuda --configs overhead mid real --compile reduce-overhead

Greedy, stream-eos rows of the audio head zeroed so that every contender runs every step. The time per
decode step is the difference between a long and a short run divided by the extra steps, so prefill and
set-up cancel out. The contenders, interleaved:
- transformers' `generate` as it comes (dynamic cache, eager), with `cache_implementation="static"`, and
  with the static cache compiled (`compile_config`: transformers' own compile of the decode forward);
- higgslab's `Generator` with the settings a user gets by default for a `--default-steps` (2048) run
  (`Generator(model)`, `compile="auto"`: the decision is printed), its eager step, and (`--compile`) the
  compiled step.
Ratios are transformers' default `generate` / higgslab (> 1: higgslab is faster) and transformers' best
of the three / higgslab. Every config also prints the time of the step's matrix products alone
(`weights_alone`: the floor for a bandwidth-bound step), its GB/s, and transformers' default over it.
`--device cuda` (or npu) runs all on an accelerator; `--compile reduce-overhead` adds CUDA graphs.
"""

from __future__ import annotations

import argparse
import time

import torch

from higgslab.config import HiggsConfig
from higgslab.device import cpu_features, device_name, pick_device, synchronize
from higgslab.errors import cli_errors
from higgslab.generate.generator import Generator
from higgslab.model.lm import HiggsAudioModel
from higgslab.model.packing import pack_for_decode

CONFIGS = {
    # name: (hidden, layers, heads, kv_heads, intermediate, dtype, target ratio, threads)
    # The overhead config is pure dispatch: both contenders get one thread there (a second one only adds
    # OpenMP hand-offs, which a busy machine turns into stalls); the others use every core, for bandwidth.
    "overhead": (64, 28, 4, 2, 128, torch.float32, 3.0, 1),
    "mid": (1024, 8, 16, 4, 2816, torch.float32, 1.3, None),
    "real": (3072, 28, 24, 8, 8192, torch.bfloat16, 1.0, None),
}
DEFAULT_THREADS = torch.get_num_threads()
PROMPT = torch.tensor(
    [128000, 128006, 9125, 128007, 271, 5, 6, 7, 128009, 128006, 78191, 128007, 271, 128013]
)


def build(name: str, device: torch.device | str = "cpu"):
    """Our model with random weights, and transformers' model with the same values, on `device`."""
    from transformers import HiggsAudioV2ForConditionalGeneration
    from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import HiggsAudioV2RotaryEmbedding

    from higgslab.io.keys import to_disk
    from higgslab.io.lm_format import KEY_RULES
    from higgslab.tiny.model import REAL_ROPE, tiny_hf_config

    hidden, layers, heads, kv, inter, dtype, _, _ = CONFIGS[name]
    hf_config = tiny_hf_config(hidden=hidden, layers=layers, heads=heads, kv_heads=kv, intermediate=inter)
    hf_config.rope_parameters = dict(REAL_ROPE)
    config = HiggsConfig.from_dict(json_dict(hf_config))
    with torch.device("meta"):
        ours = HiggsAudioModel(config, text_head=False)
        theirs = HiggsAudioV2ForConditionalGeneration(hf_config)
    ours = ours.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if n.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype))
        ours.audio_head.weight.view(8, 1026, -1)[:, 1025] = 0  # no stream-eos: every step runs
    ours.materialize_buffers()
    device = torch.device(device)
    ours = ours.to(device)
    # ours as the Generator runs it (packed on the CPU); transformers gets every weight in nn.Linear's own
    # layout: the same tensors where packing kept that layout, its own copies where it did not (float32)
    if device.type == "cpu":
        pack_for_decode(ours)
    shared = {
        to_disk(k, KEY_RULES["transformers"]): v.detach().contiguous() for k, v in ours.state_dict().items()
    }
    theirs.load_state_dict(shared, strict=True, assign=True)
    theirs.model.rotary_emb = HiggsAudioV2RotaryEmbedding(hf_config).to(device)  # float32 frequencies
    theirs.model.embed_audio_tokens.audio_tokens_offsets = torch.arange(8, device=device) * 1026
    return ours.eval(), theirs.eval()


def json_dict(hf_config) -> dict:
    import json

    return json.loads(hf_config.to_json_string())


def per_step(
    runs: dict, short: int, long: int, repeats: int = 5
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per extra decode step between a `short` and a `long` run, for each of `runs` (name → fn(n)),
    and the seconds of each one's first run (its warm-up: compilation where it compiles).

    The runs are interleaved and each keeps its best: on a shared machine every contender then sees the
    same background load, so the ratio stays meaningful even when the absolute times wobble."""
    warm_up = {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        run(short)  # compiles where it compiles
        warm_up[name] = time.perf_counter() - t0
        run(long)  # a static cache sized for the long run may compile once more
    best = {name: [float("inf"), float("inf")] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            for i, n in enumerate((short, long)):
                t0 = time.perf_counter()
                run(n)
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
    return {name: (b[1] - b[0]) / (long - short) for name, b in best.items()}, warm_up


def weight_bytes_per_step(model: HiggsAudioModel) -> int:
    """Weights an audio decode step reads: attention, audio norms + FFNs, final norm, audio head."""
    n = model.audio_head.weight.numel() + model.norm.weight.numel()
    for layer in model.layers:
        n += sum(p.numel() for p in layer.self_attn.parameters())
        n += sum(p.numel() for name, p in layer.named_parameters() if name.startswith("audio_"))
    return n * model.dtype.itemsize


def decode_matrices(model: HiggsAudioModel) -> list[torch.Tensor]:
    """The `[in, out]` matrices one decode step multiplies a row by: per layer q/k/v, o, gate/up and down
    (fused where the layer is packed), then the audio head."""
    mats = []
    for layer in model.layers:
        attn, mlp, packed = layer.self_attn, layer.audio_mlp, layer.packed
        if packed is not None:
            mats += [packed.qkv, attn.o_proj.weight.t(), packed.gate_up, mlp.down_proj.weight.t()]
        else:
            projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
            mats += [m.weight.t() for m in (*projections, mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    return mats + [model.audio_head.weight.t()]


def weights_alone(model: HiggsAudioModel, repeats: int = 20) -> float:
    """Seconds for the products of one decode step and nothing else (`decode_matrices` times one row):
    the floor a decode step cannot go under."""
    mats = decode_matrices(model)
    rows = [torch.randn(1, m.shape[0], dtype=m.dtype, device=m.device) for m in mats]
    best = float("inf")
    for _ in range(repeats):
        synchronize(model.device)
        t0 = time.perf_counter()
        for x, m in zip(rows, mats, strict=True):
            torch.mm(x, m)
        synchronize(model.device)
        best = min(best, time.perf_counter() - t0)
    return best


TRANSFORMERS = ("default", "static", "static+compile")


def transformers_runs(theirs, prompt: torch.Tensor, which: list[str]) -> dict:
    """transformers' `generate` as it comes, with its static cache, and with the static cache compiled
    (its documented path: `cache_implementation="static"` + `compile_config`; generate then compiles the
    decode forward, on the CPU only when told `_compile_all_devices`)."""
    from transformers import CompileConfig

    compiled = CompileConfig()  # transformers' defaults: inductor, mode "reduce-overhead"
    compiled._compile_all_devices = True
    settings = {
        "default": {},
        "static": {"cache_implementation": "static"},
        "static+compile": {"cache_implementation": "static", "compile_config": compiled},
    }

    def runner(extra: dict):
        def run(n: int):
            out = theirs.generate(input_ids=prompt, max_new_tokens=n, do_sample=False, **extra)
            synchronize(prompt.device)
            return out

        return run

    return {f"transformers {w}": runner(settings[w]) for w in which}


def higgslab_runs(ours: HiggsAudioModel, default_steps: int, compile: bool | str) -> dict:
    """higgslab's `Generator` as a user gets it for a `default_steps` run (`Generator(model)`), its eager
    step when that default compiles, and `compile` when asked for and not already there."""
    greedy = dict(temperature=0, ras_window=0)
    default, start = Generator(ours).compile_plan(
        default_steps
    )  # its steps from `start` on: what a long run runs
    how = "eager" if not default else f"compiled from step {start}" if default is True else default
    settings = {f"higgslab default ({default_steps} steps: {how})": default}
    if default is not False:
        settings["higgslab eager"] = False
    if compile and compile != default:
        settings["higgslab compiled" if compile is True else f"higgslab {compile}"] = compile

    def runner(gen: Generator):
        return lambda n: gen.generate(PROMPT, max_new_tokens=n, **greedy)

    return {label: runner(Generator(ours, compile=c)) for label, c in settings.items()}


def measure(
    name: str,
    short: int,
    long: int,
    compile: bool | str,
    device: torch.device,
    default_steps: int,
    which: list[str],
) -> None:
    """Print ms/step of transformers' variants and of higgslab's, and the ratios."""
    hidden, layers, heads, kv, inter, dtype, target, threads = CONFIGS[name]
    torch.set_num_threads(threads or DEFAULT_THREADS)
    ours, theirs = build(name, device)
    prompt = PROMPT[None].to(device)
    runs = transformers_runs(theirs, prompt, which) | higgslab_runs(ours, default_steps, compile)
    with torch.inference_mode():
        reference = runs["transformers default"](short + 9)[0].T.cpu()
        eager = Generator(ours, compile=False).generate(
            PROMPT, max_new_tokens=short + 9, temperature=0, ras_window=0
        )
        same = torch.equal(eager.columns, reference)
        times, warm_up = per_step(runs, short, long)
    floor = weights_alone(ours)
    weights = weight_bytes_per_step(ours)
    t_default = times["transformers default"]
    t_best = min(t for label, t in times.items() if label.startswith("transformers"))
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    print(
        f"\n{name}: hidden {hidden}, {layers} layers, {heads}/{kv} heads, FFN {inter}, {str(dtype)[6:]}, {where}; "
        f"same greedy codes as higgslab: {same}\n"
        f"  the weights alone: {floor * 1e3:.2f} ms ({weights / floor / 1e9:.1f} GB/s of weights); "
        f"transformers default / weights alone: {t_default / floor:.2f}x"
    )
    print(
        f"  {'contender':46s} {'ms/step':>8s} {'vs tf default':>14s} {'vs tf best':>11s} {'first run':>10s} {'GB/s':>6s}"
    )
    for label, t in times.items():
        ratio = t_default / t
        verdict = ""
        if label.startswith("higgslab default"):
            verdict = f"  (target >= {target}x: {'meets' if ratio >= target else 'MISSES'})"
        print(
            f"  {label:46s} {t * 1e3:8.2f} {ratio:13.2f}x {t_best / t:10.2f}x {warm_up[label]:9.1f}s"
            f" {weights / t / 1e9:6.2f}{verdict}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["overhead", "mid"], choices=list(CONFIGS))
    p.add_argument("--steps", nargs=2, type=int, default=[8, 40], metavar=("SHORT", "LONG"))
    p.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="MODE",
        help="also measure higgslab with the compiled decode step (MODE: a torch.compile mode)",
    )
    p.add_argument(
        "--default-steps",
        type=int,
        default=2048,
        metavar="N",
        help="measure higgslab's default settings as they are for a run of N steps (default 2048)",
    )
    p.add_argument(
        "--transformers",
        nargs="+",
        default=list(TRANSFORMERS),
        choices=TRANSFORMERS,
        help="transformers' variants to measure (the default is always measured: the ratios' base)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, npu or auto (default: cpu)")
    args = p.parse_args()
    with cli_errors():  # an unknown or absent device: one line, not a traceback
        device = pick_device(args.device)
    which = ["default"] + [w for w in args.transformers if w != "default"]
    import transformers

    machine = cpu_features() if device.type == "cpu" else device_name(device)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {device}: {machine}")
    for name in args.configs:
        short, long = args.steps if name != "real" else (4, 12)
        measure(name, short, long, args.compile, device, args.default_steps, which)


if __name__ == "__main__":
    main()
