"""Tokenizer checkpoints in both on-disk layouts (FORMATS.md §3–4), read into and written from `HiggsAudioCodec`.

    original      config.json (n_filters, D, ratios, bins, n_q, codebook_dim, …) + model.pth
                  DAC convs weight-normalised (`.weight_g`/`.weight_v`), keys `encoder.block.N…`, `decoder_2.model.N…`,
                  `quantizer.vq.layers.q._codebook.embed`, `fc_prior`, `fc_post2`, semantic convs `….conv.conv.`
    transformers  config.json (model_type higgs_audio_v2_tokenizer) + model.safetensors, plain weights,
                  `acoustic_encoder`, `acoustic_decoder`, `quantizer.quantizers.q.codebook.embed`, `fc`, `fc2`

Widths, the number of quantizers and (for the original layout, whose config names only "hubert_base_general")
the HuBERT geometry are read from the tensors; every tensor is then checked against the model built from them,
so a missing, extra or misshaped tensor is reported by its on-disk name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from higgslab.errors import HiggsLabError
from higgslab.io.atomic import atomic_write
from higgslab.tokenizer.model import CodecConfig, HiggsAudioCodec

DAC_INNER = ("snake1", "conv1", "snake2", "conv2")  # a DAC residual unit's layers, in order
# tensors that exist on disk but take no part in inference (training-only heads, k-means bookkeeping)
UNUSED = re.compile(
    r"^(decoder_semantic\.|fc_post1\.|fc1\.|semantic_model\.masked_spec_embed$"
    r"|quantizer\.(vq\.layers|quantizers)\.\d+\.(_codebook|codebook)\.(inited|cluster_size|embed_avg)$)"
)
HUBERT_KERNELS = [10, 3, 3, 3, 3, 2, 2]
HUBERT_STRIDES = [5, 2, 2, 2, 2, 2, 2]


def original_module_names(n_blocks: int) -> dict[str, str]:
    """Original DAC module path -> ours, e.g. `encoder.block.1.block.0.block.1` -> `acoustic_encoder.block.0.res_unit1.conv1`."""
    names = {
        "encoder.block.0": "acoustic_encoder.conv1",
        f"encoder.block.{n_blocks + 1}": "acoustic_encoder.snake1",
        f"encoder.block.{n_blocks + 2}": "acoustic_encoder.conv2",
        "decoder_2.model.0": "acoustic_decoder.conv1",
        f"decoder_2.model.{n_blocks + 1}": "acoustic_decoder.snake1",
        f"decoder_2.model.{n_blocks + 2}": "acoustic_decoder.conv2",
    }
    for b in range(n_blocks):
        enc, dec = f"encoder.block.{b + 1}.block", f"decoder_2.model.{b + 1}.block"
        # encoder block: 3 residual units, snake, strided conv; decoder block: snake, transposed conv, 3 units
        names[f"{enc}.3"], names[f"{enc}.4"] = (
            f"acoustic_encoder.block.{b}.snake1",
            f"acoustic_encoder.block.{b}.conv1",
        )
        names[f"{dec}.0"], names[f"{dec}.1"] = (
            f"acoustic_decoder.block.{b}.snake1",
            f"acoustic_decoder.block.{b}.conv_t1",
        )
        for r in range(3):
            for j, layer in enumerate(DAC_INNER):
                names[f"{enc}.{r}.block.{j}"] = f"acoustic_encoder.block.{b}.res_unit{r + 1}.{layer}"
                names[f"{dec}.{r + 2}.block.{j}"] = f"acoustic_decoder.block.{b}.res_unit{r + 1}.{layer}"
    return names


# (pattern on disk, replacement) applied in order after the DAC table; the reverse direction swaps them
ORIGINAL_RULES = [
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.embed$", r"quantizer.layers.\1.codebook"),
    (r"^quantizer\.vq\.layers\.", "quantizer.layers."),
    (r"\.(conv|conv1|conv2)\.conv\.", r".\1."),  # xcodec wraps each semantic nn.Conv1d in a module
]
TRANSFORMERS_RULES = [
    (r"^quantizer\.quantizers\.(\d+)\.codebook\.embed$", r"quantizer.layers.\1.codebook"),
    (r"^quantizer\.quantizers\.", "quantizer.layers."),
    (r"^fc\.", "fc_prior."),
    (r"^fc2\.", "fc_post2."),
]


def to_ours(key: str, fmt: str, dac_names: dict[str, str]) -> str:
    """On-disk tensor name -> our parameter name (weight norm already folded: `.weight_g` gone)."""
    if fmt == "original":
        module, _, leaf = key.rpartition(".")
        if module in dac_names:
            return f"{dac_names[module]}.{leaf}"
        if key.startswith("encoder_semantic."):
            return re.sub(ORIGINAL_RULES[2][0], ORIGINAL_RULES[2][1], key)
        rules = ORIGINAL_RULES[:2]
    else:
        rules = TRANSFORMERS_RULES
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def to_disk(key: str, fmt: str, dac_names: dict[str, str]) -> str:
    """Our parameter name -> the on-disk name in `fmt` (inverse of `to_ours`)."""
    if fmt == "original":
        module, _, leaf = key.rpartition(".")
        inverse = {v: k for k, v in dac_names.items()}
        if module in inverse:
            return f"{inverse[module]}.{leaf}"
        if key.startswith("encoder_semantic."):
            return re.sub(r"\.(conv|conv1|conv2)\.(weight|bias)$", r".\1.conv.\2", key)
        key = re.sub(r"^quantizer\.layers\.(\d+)\.codebook$", r"quantizer.vq.layers.\1._codebook.embed", key)
        return re.sub(r"^quantizer\.layers\.", "quantizer.vq.layers.", key)
    key = re.sub(r"^quantizer\.layers\.(\d+)\.codebook$", r"quantizer.quantizers.\1.codebook.embed", key)
    key = re.sub(r"^quantizer\.layers\.", "quantizer.quantizers.", key)
    return re.sub(r"^fc_prior\.", "fc.", re.sub(r"^fc_post2\.", "fc2.", key))


# ------------------------------------------------------------------------------------------- reading


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.pth` or `model.safetensors`, as float32; a clear error for a bad file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a checkpoint at all
        raise HiggsLabError(
            f"{path}: cannot read tensors ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from e
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise HiggsLabError(f"{path}: expected a flat state dict of tensors, got {type(tensors).__name__}")
    return {k: v.float() for k, v in tensors.items()}


def fold_weight_norm(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`x.weight_g` + `x.weight_v` -> `x.weight` = g · v / ‖v‖ (norm over all dims but 0)."""
    out = {}
    for key, value in tensors.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            base = key.removesuffix(".weight_g")
            v = tensors.get(base + ".weight_v")
            if v is None:
                raise HiggsLabError(f"{path}: '{key}' has no matching '{base}.weight_v'")
            if value.numel() != v.shape[0]:
                raise HiggsLabError(
                    f"{path}: '{key}' has shape {list(value.shape)}, expected {v.shape[0]} entries"
                )
            out[base + ".weight"] = value * v / v.norm(dim=list(range(1, v.dim())), keepdim=True)
        else:
            out[key] = value
    orphans = [k for k in tensors if k.endswith(".weight_v") and k[: -len("_v")] + "_g" not in tensors]
    if orphans:
        raise HiggsLabError(f"{path}: '{orphans[0]}' has no matching weight_g")
    return out


def shape_of(tensors: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in tensors:
        raise HiggsLabError(f"{path}: missing tensor '{key}'")
    return tuple(tensors[key].shape)


def hubert_from_weights(t: dict[str, torch.Tensor], path: Path) -> dict:
    """HuBERT geometry from its tensors (the original config names only the teacher). Attention heads are not
    visible in the weights: HuBERT's head width is 64 (base and large), so heads = hidden // 64 (at least 1)."""
    p = "semantic_model."
    hidden = shape_of(t, p + "feature_projection.projection.weight", path)[0]
    conv = [t[p + f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(len(HUBERT_KERNELS))
            if p + f"feature_extractor.conv_layers.{i}.conv.weight" in t]  # fmt: skip
    kernels = [w.shape[-1] for w in conv]
    if kernels != HUBERT_KERNELS:
        raise HiggsLabError(
            f"{path}: semantic_model feature-extractor kernels {kernels}, expected HuBERT's {HUBERT_KERNELS}"
        )
    layers = {int(m[1]) for k in t if (m := re.match(rf"^{p}encoder\.layers\.(\d+)\.", k))}
    pos = shape_of(t, p + "encoder.pos_conv_embed.conv.parametrizations.weight.original1", path)
    return {
        "hidden_size": hidden,
        "num_hidden_layers": max(layers) + 1 if layers else 0,
        "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": shape_of(t, p + "encoder.layers.0.feed_forward.intermediate_dense.weight", path)[
            0
        ],
        "conv_dim": [w.shape[0] for w in conv],
        "conv_kernel": kernels,
        "conv_stride": HUBERT_STRIDES,
        "conv_bias": p + "feature_extractor.conv_layers.0.conv.bias" in t,
        "feat_extract_norm": "layer"
        if p + "feature_extractor.conv_layers.1.layer_norm.weight" in t
        else "group",
        "feat_proj_layer_norm": p + "feature_projection.layer_norm.weight" in t,
        "num_conv_pos_embeddings": pos[2],
        "num_conv_pos_embedding_groups": hidden // pos[1],
    }


def n_quantizers(ours: dict[str, torch.Tensor], path: Path) -> int:
    levels = {int(m[1]) for k in ours if (m := re.match(r"^quantizer\.layers\.(\d+)\.codebook$", k))}
    if not levels:
        raise HiggsLabError(f"{path}: no quantizer codebooks found")
    return max(levels) + 1


def config_from(raw: dict, fmt: str, ours: dict[str, torch.Tensor], disk: dict, path: Path) -> CodecConfig:
    """CodecConfig from config.json plus the tensors' shapes."""
    q = n_quantizers(ours, path)
    codebook = shape_of(ours, "quantizer.layers.0.codebook", path)
    common = dict(
        encoder_width=shape_of(ours, "acoustic_encoder.conv1.weight", path)[0],
        latent_dim=shape_of(ours, "acoustic_encoder.conv2.weight", path)[0],
        decoder_width=shape_of(ours, "acoustic_decoder.conv1.weight", path)[0],
        n_q=q,
        bins=codebook[0],
        codebook_dim=codebook[1],
    )
    if fmt == "original":
        return CodecConfig(
            sample_rate=int(raw.get("sample_rate", 24000)),
            ratios=tuple(raw.get("ratios", (8, 5, 4, 2, 3))),
            hubert=hubert_from_weights(disk, path),
            **common,
        )
    acoustic = raw.get("acoustic_model_config") or {}
    down, up = acoustic.get("downsampling_ratios"), acoustic.get("upsampling_ratios")
    if down is None or (up is not None and list(up) != list(down)):
        raise HiggsLabError(
            f"{path}: acoustic_model_config needs equal downsampling/upsampling_ratios, got {down} / {up}"
        )
    return CodecConfig(
        sample_rate=int(raw.get("sample_rate", 24000)),
        ratios=tuple(down),
        semantic_sample_rate=int(raw.get("semantic_sample_rate", 16000)),
        semantic_hop=int(raw.get("downsample_factor", 320)),
        hubert={k: v for k, v in (raw.get("semantic_model_config") or {}).items() if not k.startswith("_")},
        semantic_kernel=int(raw.get("kernel_size", 3)),
        semantic_strides=tuple(raw.get("strides", (1, 1))),
        semantic_channel_ratios=tuple(raw.get("channel_ratios", (1, 1))),
        semantic_dilations=tuple(raw.get("block_dilations", (1, 1))),
        semantic_unit_kernel=int(raw.get("unit_kernel_size", 3)),
        **common,
    )


def detect_format(directory: Path) -> tuple[str, Path]:
    if not directory.is_dir():
        raise HiggsLabError(f"tokenizer directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise HiggsLabError(f"{directory}: no config.json")
    for fmt, name in (("transformers", "model.safetensors"), ("original", "model.pth")):
        if (directory / name).is_file():
            return fmt, directory / name
    raise HiggsLabError(
        f"{directory}: neither model.pth (original) nor model.safetensors (transformers) found"
    )


def load_codec(directory: str | Path, device: str | torch.device = "cpu") -> tuple[HiggsAudioCodec, str]:
    """Read a tokenizer directory in either layout -> (model in eval mode on `device`, 'original' | 'transformers')."""
    directory = Path(directory)
    fmt, weights = detect_format(directory)
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HiggsLabError(f"{directory / 'config.json'}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise HiggsLabError(f"{directory / 'config.json'}: expected a JSON object")
    disk = read_tensors(weights)
    if fmt == "original":
        disk = fold_weight_norm(disk, weights)
    n_blocks = len(
        raw.get("ratios") or (raw.get("acoustic_model_config") or {}).get("downsampling_ratios") or ()
    )
    dac_names = original_module_names(n_blocks)
    ours = {to_ours(k, fmt, dac_names): v for k, v in disk.items() if not UNUSED.match(k)}
    cfg = config_from(raw, fmt, ours, disk, weights)
    with torch.device("meta"):
        model = HiggsAudioCodec(cfg)
    expected = model.state_dict()
    for key in expected.keys() - ours.keys():
        raise HiggsLabError(f"{weights}: missing tensor '{to_disk(key, fmt, dac_names)}'")
    for key in ours.keys() - expected.keys():
        raise HiggsLabError(f"{weights}: unexpected tensor '{to_disk(key, fmt, dac_names)}'")
    for key, value in ours.items():
        if value.shape != expected[key].shape:
            raise HiggsLabError(
                f"{weights}: tensor '{to_disk(key, fmt, dac_names)}' has shape {list(value.shape)}, "
                f"expected {list(expected[key].shape)}"
            )
    model.load_state_dict(ours, assign=True)
    return model.to(device).eval(), fmt


# ------------------------------------------------------------------------------------------- writing


def split_weight_norm(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight -> (g, v) with g = ‖weight‖ over all dims but 0 (shape [out, 1, 1]) and v = weight."""
    return weight.norm(dim=list(range(1, weight.dim())), keepdim=True), weight.clone()


def training_only_tensors(cfg: CodecConfig, fmt: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random stand-ins for the tensors a real checkpoint carries but inference ignores (semantic decoder,
    fc_post1, k-means buffers), so written checkpoints have the real key set."""
    d, fused = cfg.semantic_dim, cfg.latent_dim + cfg.semantic_dim
    wrap = ".conv" if fmt == "original" else ""  # xcodec wraps semantic convs

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    out = {
        f"decoder_semantic.conv1{wrap}.weight": rand(d, d, 3),
        f"decoder_semantic.conv2{wrap}.weight": rand(d, d, 3),
    }
    for i in range(len(cfg.semantic_strides)):
        block = f"decoder_semantic.conv_blocks.{i}"
        out[f"{block}.conv{wrap}.weight"], out[f"{block}.conv{wrap}.bias"] = rand(d, d, 3), rand(d)
        for j in range(len(cfg.semantic_dilations)):
            out[f"{block}.res_units.{j}.conv1{wrap}.weight"] = rand(d, d, cfg.semantic_unit_kernel)
            out[f"{block}.res_units.{j}.conv2{wrap}.weight"] = rand(d, d, 1)
    fc1 = "fc_post1" if fmt == "original" else "fc1"
    out[f"{fc1}.weight"], out[f"{fc1}.bias"] = rand(d, fused), rand(d)
    return out


def original_config_json(cfg: CodecConfig) -> dict:
    return {
        "n_filters": 32,
        "D": cfg.latent_dim,
        "codebook_dim": cfg.codebook_dim,
        "target_bandwidths": [0.5, 1, 1.5, 2, 4],
        "ratios": list(cfg.ratios),
        "sample_rate": cfg.sample_rate,
        "bins": cfg.bins,
        "n_q": cfg.n_q,
        "semantic_techer": "hubert_base_general",
    }


def transformers_config_json(cfg: CodecConfig) -> dict:
    from transformers import HiggsAudioV2TokenizerConfig

    bits = (cfg.bins - 1).bit_length()
    config = HiggsAudioV2TokenizerConfig(
        # transformers derives the quantizer count from the last bandwidth: make it say n_q
        target_bandwidths=[cfg.n_q * cfg.frame_rate * bits / 1000],
        sample_rate=cfg.sample_rate,
        codebook_size=cfg.bins,
        codebook_dim=cfg.codebook_dim,
        kernel_size=cfg.semantic_kernel,
        strides=list(cfg.semantic_strides),
        channel_ratios=list(cfg.semantic_channel_ratios),
        block_dilations=list(cfg.semantic_dilations),
        unit_kernel_size=cfg.semantic_unit_kernel,
        semantic_sample_rate=cfg.semantic_sample_rate,
        downsample_factor=cfg.semantic_hop,
        acoustic_model_config=cfg.dac_config().to_dict(),
        semantic_model_config=cfg.hubert_config().to_dict(),
        architectures=["HiggsAudioV2TokenizerModel"],
    )
    return config.to_dict()


def save_codec(model: HiggsAudioCodec, directory: str | Path, fmt: str = "original", seed: int = 0) -> Path:
    """Write `model` as a tokenizer checkpoint in `fmt`; files are written to temporaries and renamed."""
    if fmt not in ("original", "transformers"):
        raise HiggsLabError(f"unknown tokenizer format {fmt!r}: use 'original' or 'transformers'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    dac_names = original_module_names(len(cfg.ratios))
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        disk = to_disk(key, fmt, dac_names)
        is_dac_conv = key.startswith("acoustic_") and key.endswith(".weight") and value.dim() == 3
        if fmt == "original" and is_dac_conv:
            base = disk.removesuffix(".weight")
            tensors[base + ".weight_g"], tensors[base + ".weight_v"] = split_weight_norm(value)
        else:
            tensors[disk] = value.detach().clone().contiguous()
        if key.endswith(".codebook"):  # k-means bookkeeping kept beside each codebook on disk
            prefix = disk.removesuffix(".embed")
            tensors[prefix + ".inited"] = torch.ones(1)
            tensors[prefix + ".cluster_size"] = torch.zeros(cfg.bins)
            tensors[prefix + ".embed_avg"] = value.detach().clone()
    tensors.update(training_only_tensors(cfg, fmt, torch.Generator().manual_seed(seed)))
    config = original_config_json(cfg) if fmt == "original" else transformers_config_json(cfg)
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    if fmt == "original":
        atomic_write(directory / "model.pth", lambda p: torch.save(tensors, p))
    else:
        from safetensors.torch import save_file

        atomic_write(
            directory / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"})
        )
    return directory
