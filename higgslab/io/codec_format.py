"""Audio tokenizer checkpoints in both on-disk layouts (FORMATS.md §3–4), read for and written from `HiggsAudioCodec`.

    original      config.json (n_filters, D, ratios, bins, n_q, codebook_dim, semantic_techer, …) + model.pth
                  DAC convs weight-normalised (`.weight_g`/`.weight_v`), keys `encoder.block.N…`, `decoder_2.model.N…`,
                  `quantizer.vq.layers.q._codebook.embed`, `fc_prior`, `fc_post2`, semantic convs `….conv.conv.`
    transformers  config.json (model_type higgs_audio_v2_tokenizer) + model.safetensors, plain weights,
                  `acoustic_encoder`, `acoustic_decoder`, `quantizer.quantizers.q.codebook.embed`, `fc`, `fc2`

Names map through one rule table per layout (`key_rules`, both directions). Widths, the number of quantizers
and (for the original layout, whose config names only "hubert_base_general") the HuBERT geometry are read
from the tensors; `check_state_dict` then holds every tensor against the model built from them, so a missing,
extra or misshaped tensor is reported by its on-disk name. An original-layout config with `"semantic_techer":
null` describes a codec without a semantic branch (the shipped mini); the transformers layout has no such codec.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from higgslab.errors import HiggsLabError
from higgslab.io.atomic import atomic_write
from higgslab.io.keys import Rules, to_disk, to_ours
from higgslab.tokenizer.model import HUBERT_KERNELS, HUBERT_STRIDES, CodecConfig, HiggsAudioCodec

LAYOUTS = {"transformers": "model.safetensors", "original": "model.pth"}  # layout -> its weights file

DAC_INNER = ("snake1", "conv1", "snake2", "conv2")  # a DAC residual unit's layers, in order
# tensors that exist on disk but take no part in inference (training-only heads, k-means bookkeeping)
UNUSED = re.compile(
    r"^(decoder_semantic\.|fc_post1\.|fc1\.|semantic_model\.masked_spec_embed$"
    r"|quantizer\.(vq\.layers|quantizers)\.\d+\.(_codebook|codebook)\.(inited|cluster_size|embed_avg)$)"
)


def key_rules(fmt: str, n_blocks: int) -> Rules:
    """The rule table of `fmt` for a DAC with `n_blocks` strided blocks: on-disk name <-> ours, both ways."""
    if fmt == "transformers":  # DAC, HuBERT and semantic-encoder names are transformers' own here
        return [
            ("quantizer.quantizers.{q}.codebook.embed", "quantizer.layers.{q}.codebook"),
            ("quantizer.quantizers.{rest*}", "quantizer.layers.{rest*}"),
            ("fc.{leaf}", "fc_prior.{leaf}"),
            ("fc2.{leaf}", "fc_post2.{leaf}"),
            ("fc1.{leaf}", "fc_post1.{leaf}"),  # training-only
        ]
    dac = {
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
        dac[f"{enc}.3"], dac[f"{enc}.4"] = (
            f"acoustic_encoder.block.{b}.snake1",
            f"acoustic_encoder.block.{b}.conv1",
        )
        dac[f"{dec}.0"], dac[f"{dec}.1"] = (
            f"acoustic_decoder.block.{b}.snake1",
            f"acoustic_decoder.block.{b}.conv_t1",
        )
        for r in range(3):
            for j, layer in enumerate(DAC_INNER):
                dac[f"{enc}.{r}.block.{j}"] = f"acoustic_encoder.block.{b}.res_unit{r + 1}.{layer}"
                dac[f"{dec}.{r + 2}.block.{j}"] = f"acoustic_decoder.block.{b}.res_unit{r + 1}.{layer}"
    return [(f"{theirs}.{{leaf}}", f"{ours}.{{leaf}}") for theirs, ours in dac.items()] + [
        ("quantizer.vq.layers.{q}._codebook.embed", "quantizer.layers.{q}.codebook"),
        ("quantizer.vq.layers.{rest*}", "quantizer.layers.{rest*}"),
        # xcodec wraps each semantic conv (encoder, and the training-only decoder) in a module
        ("encoder_semantic.{module*}.conv.{leaf}", "encoder_semantic.{module*}.{leaf}"),
        ("decoder_semantic.{module*}.conv.{leaf}", "decoder_semantic.{module*}.{leaf}"),
    ]


# ------------------------------------------------------------------------------------------- reading


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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


def shape_of(tensors: dict[str, torch.Tensor], key: str, path: Path, rules: Rules = ()) -> tuple[int, ...]:
    """The shape of `tensors[key]`; a missing one is reported by its on-disk name (`rules` map ours to it)."""
    if key not in tensors:
        raise HiggsLabError(f"{path}: missing tensor '{to_disk(key, rules)}'")
    return tuple(tensors[key].shape)


def hubert_from_weights(t: dict[str, torch.Tensor], path: Path) -> dict:
    """HuBERT geometry from its tensors (the original config names only the teacher). Attention heads are not
    visible in the weights: HuBERT's head width is 64 (base and large), so heads = hidden // 64 (at least 1)."""
    p = "semantic_model."
    hidden = shape_of(t, p + "feature_projection.projection.weight", path)[0]
    conv = [t[p + f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(len(HUBERT_KERNELS))
            if p + f"feature_extractor.conv_layers.{i}.conv.weight" in t]  # fmt: skip
    kernels = [w.shape[-1] for w in conv]
    if kernels != list(HUBERT_KERNELS):
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
        "conv_stride": list(HUBERT_STRIDES),
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


def config_from(
    raw: dict, fmt: str, ours: dict[str, torch.Tensor], disk: dict, path: Path, rules: Rules
) -> CodecConfig:
    """CodecConfig from config.json plus the tensors' shapes (`ours`: our names, `disk`: the file's)."""
    q = n_quantizers(ours, path)
    codebook = shape_of(ours, "quantizer.layers.0.codebook", path, rules)
    common = dict(
        encoder_width=shape_of(ours, "acoustic_encoder.conv1.weight", path, rules)[0],
        latent_dim=shape_of(ours, "acoustic_encoder.conv2.weight", path, rules)[0],
        decoder_width=shape_of(ours, "acoustic_decoder.conv1.weight", path, rules)[0],
        rvq_dim=shape_of(ours, "fc_prior.weight", path, rules)[0],
        n_q=q,
        bins=codebook[0],
        codebook_dim=codebook[1],
    )
    if fmt == "original":
        semantic = raw.get("semantic_techer", "hubert_base_general") is not None
        return CodecConfig(
            sample_rate=int(raw.get("sample_rate", 24000)),
            ratios=tuple(raw.get("ratios", (8, 5, 4, 2, 3))),
            hubert=hubert_from_weights(disk, path) if semantic else None,
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


def layout_of(directory: Path) -> tuple[str, Path]:
    """('original' | 'transformers', its weights file) of a tokenizer directory, by which weights file it holds."""
    if not directory.is_dir():
        raise HiggsLabError(f"tokenizer directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise HiggsLabError(f"{directory}: no config.json")
    for fmt, name in LAYOUTS.items():
        if (directory / name).is_file():
            return fmt, directory / name
    raise HiggsLabError(
        f"{directory}: neither model.pth (original) nor model.safetensors (transformers) found"
    )


def read_codec(directory: str | Path) -> tuple[CodecConfig, dict[str, torch.Tensor], str, Path]:
    """A tokenizer directory in either layout -> (config, tensors under our names, layout, weights file)."""
    directory = Path(directory)
    fmt, weights = layout_of(directory)
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HiggsLabError(f"{directory / 'config.json'}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise HiggsLabError(f"{directory / 'config.json'}: expected a JSON object")
    disk = read_state_dict(weights)
    if fmt == "original":
        disk = fold_weight_norm(disk, weights)
    ratios = raw.get("ratios") or (raw.get("acoustic_model_config") or {}).get("downsampling_ratios") or ()
    rules = key_rules(fmt, len(ratios))
    ours = {to_ours(k, rules): v for k, v in disk.items() if not UNUSED.match(k)}
    return config_from(raw, fmt, ours, disk, weights, rules), ours, fmt, weights


def check_state_dict(model: HiggsAudioCodec, tensors: dict[str, torch.Tensor], weights: Path, fmt: str):
    """Strict key and shape check; the error names the file and the tensor by its on-disk name."""
    rules = key_rules(fmt, len(model.cfg.ratios))
    expected = model.state_dict()
    for key in expected.keys() - tensors.keys():
        raise HiggsLabError(f"{weights}: missing tensor '{to_disk(key, rules)}'")
    for key in tensors.keys() - expected.keys():
        raise HiggsLabError(f"{weights}: unexpected tensor '{to_disk(key, rules)}'")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise HiggsLabError(
                f"{weights}: tensor '{to_disk(key, rules)}' has shape {list(value.shape)}, "
                f"expected {list(expected[key].shape)}"
            )


# ------------------------------------------------------------------------------------------- writing


def split_weight_norm(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight -> (g, v) with g = ‖weight‖ over all dims but 0 (shape [out, 1, 1]) and v = weight."""
    return weight.norm(dim=list(range(1, weight.dim())), keepdim=True), weight.clone()


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
        "semantic_techer": "hubert_base_general" if cfg.semantic else None,
    }


def transformers_config_json(cfg: CodecConfig) -> dict:
    from transformers import HiggsAudioV2TokenizerConfig

    if not cfg.semantic:
        raise HiggsLabError(
            "the transformers tokenizer layout needs a semantic branch: write 'original' instead"
        )

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


def write_codec(
    model: HiggsAudioCodec,
    directory: str | Path,
    fmt: str = "original",
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` as a tokenizer checkpoint in `fmt`, plus `extra` tensors under their on-disk names (e.g.
    stand-ins for the training-only ones a real checkpoint carries). Files go to temporaries, then are renamed;
    the config is checked before anything is written."""
    if fmt not in LAYOUTS:
        raise HiggsLabError(f"unknown tokenizer format {fmt!r}: use 'original' or 'transformers'")
    cfg = model.cfg
    config = original_config_json(cfg) if fmt == "original" else transformers_config_json(cfg)
    rules = key_rules(fmt, len(cfg.ratios))
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        disk = to_disk(key, rules)
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
    tensors.update(extra or {})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    if fmt == "original":
        atomic_write(directory / LAYOUTS[fmt], lambda p: torch.save(tensors, p))
    else:
        from safetensors.torch import save_file

        atomic_write(directory / LAYOUTS[fmt], lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    return directory
