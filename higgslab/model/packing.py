"""Decode-step weight layout for CPUs: one matrix per fused projection, same parameters.

A decode step multiplies one row per sequence by every weight matrix, so on a CPU it is a chain of
matrix-vector products whose speed is the memory bandwidth. Two things make that chain faster (measured
on an Intel Xeon with AMX and an AMD EPYC with AVX2 only: bench/RESULTS.md, *Packed decode weights*; the
bench prints the packed chain's time as "the weights alone"):
- fewer, larger products: q/k/v as one `[D, q + k + v]` matrix and the audio FFN's gate/up as one
  `[D, 2 · I]` matrix;
- in float32 the `[in, out]` layout: MKL streams `x @ W` over a contiguous W faster than over the
  transposed view that `nn.Linear`'s `[out, in]` weight gives. bfloat16 keeps `[out, in]`
  (`prefers_in_out`).

`pack_for_decode(model)` stores those matrices and re-points every `nn.Linear` weight it covers at a view
of them (`param.data = view`): the same `Parameter` objects with the same values, state dict, hooks and
optimiser state, and no second copy in memory. Only the fused decode path (`DualFFNLayer.decode_audio`)
reads the fused matrices; everything else keeps using the modules, now over the new layout.
`Generator` packs on the CPU before every run, and casting or moving the model drops the packing.
The packed weights are views, not contiguous tensors: `higgslab.io.lm_format.write_checkpoint` copes, but
code that insists on contiguous tensors (safetensors' `save_file`) wants `unpack(model)` first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from higgslab.model.quant import QuantLinear


@dataclass
class PackedProjections:
    """A layer's fused decode matrices: `qkv` `[D, q + k + v]`, `gate_up` `[D, 2 · I]` (audio FFN)."""

    qkv: torch.Tensor
    gate_up: torch.Tensor
    q: int  # output widths, to split the fused products
    kv: int
    intermediate: int


def _fuse(linears: list[nn.Linear], in_out: bool) -> torch.Tensor:
    """Store the weights of `linears` in one contiguous matrix, `[in, sum(out)]` (`in_out`) or
    `[sum(out), in]`, and point each at its part. Returns it as an `[in, sum(out)]` tensor either way
    (a transposed view in the second case), so that the decode step is always `x @ fused`."""
    rows = torch.cat([lin.weight.detach() for lin in linears])  # [sum(out), in]
    fused = rows.t().contiguous() if in_out else rows.t()
    start = 0
    for lin in linears:
        out = lin.weight.shape[0]
        lin.weight.data = fused[:, start : start + out].t()
        start += out
    return fused


def _store(lin: nn.Linear, in_out: bool) -> None:
    """Same `[out, in]` weight, stored `[in, out]` (`x @ weight.t()` then reads a contiguous matrix) or
    back in its own contiguous layout."""
    w = lin.weight.detach()
    lin.weight.data = w.t().contiguous().t() if in_out else w.contiguous()


def _is_current(layer: nn.Module) -> bool:
    """Do the layer's Linear weights still live in its packed matrices (not replaced, cast or moved)?"""
    p = layer.packed
    attn, mlp = layer.self_attn, layer.audio_mlp
    return all(
        lin.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        for fused, lins in (
            (p.qkv, (attn.q_proj, attn.k_proj, attn.v_proj)),
            (p.gate_up, (mlp.gate_proj, mlp.up_proj)),
        )
        for lin in lins
    )


def packable(layer: nn.Module) -> bool:
    """DualFFN layers without biases (the Higgs layout), not quantized; others keep their modules' own layout."""
    if getattr(layer, "kind", None) != "dual_ffn":
        return False
    if any(isinstance(m, QuantLinear) for m in layer.modules()):
        return False  # quantized weights run in their own kernels
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    return all(lin.bias is None for lin in linears)


def prefers_in_out(dtype: torch.dtype) -> bool:
    """The layout a CPU reads faster for one row times a matrix: float32 (MKL) `[in, out]`, bfloat16
    (oneDNN) `[out, in]`, on every CPU measured, with AMX or AVX2 alone (bench/RESULTS.md, *Packed decode
    weights*)."""
    return dtype == torch.float32


def pack_for_decode(model: nn.Module) -> int:
    """Pack every packable layer of `model` (a `HiggsAudioModel`) and its audio head, in the layout that
    `prefers_in_out(model.dtype)` says; idempotent: layers whose packing is current are left alone.
    Returns how many layers were (re)packed. Safe inside `torch.inference_mode()` (the generator's):
    the new storage is made outside it, so the model can still be trained afterwards."""
    with torch.inference_mode(False), torch.no_grad():
        return _pack(model)


def _pack(model: nn.Module) -> int:
    in_out = prefers_in_out(model.dtype)
    repacked = 0
    for layer in model.layers:
        if not packable(layer) or (layer.packed is not None and _is_current(layer)):
            continue
        attn, mlp = layer.self_attn, layer.audio_mlp
        layer.packed = PackedProjections(
            qkv=_fuse([attn.q_proj, attn.k_proj, attn.v_proj], in_out),
            gate_up=_fuse([mlp.gate_proj, mlp.up_proj], in_out),
            q=attn.q_proj.weight.shape[0],
            kv=attn.k_proj.weight.shape[0],
            intermediate=mlp.gate_proj.weight.shape[0],
        )
        for lin in (attn.o_proj, mlp.down_proj):
            _store(lin, in_out)
        repacked += 1
    _store(model.audio_head, in_out)  # a no-op when already so
    return repacked


def unpack(model: nn.Module) -> None:
    """Back to `nn.Linear`'s own contiguous `[out, in]` weights, no fused matrices (same values)."""
    with torch.no_grad():
        for lin in model.modules():
            if isinstance(lin, nn.Linear) and not lin.weight.is_contiguous():
                lin.weight.data = lin.weight.detach().contiguous()
    for layer in model.layers:
        layer.packed = None
