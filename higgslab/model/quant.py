"""Weight-only int8 / int4 linear layers for the LM's decoder layers.

A decode step reads every weight once per token, so its speed on a CPU (and its memory anywhere) is the
bytes of the weights: int8 halves them, int4 quarters them. Everything else stays in the compute dtype.

    int8  per output channel, symmetric: w ≈ q · scale,                q ∈ [-127, 127], scale [N]
    int4  per group of `group_size` inputs, asymmetric (tinygemm's):   w ≈ (q - 8) · scale + zero,
          q ∈ [0, 15], scale and zero [K / group_size, N]

These are the layouts of torchao's int8 weight-only and int4 "tinygemm" formats. The products run in torch's own fused
kernels, picked by what the device has (`kernels`): on the CPU `aten._weight_int8pack_mm` and
`aten._weight_int4pack_mm_for_cpu`; on CUDA `aten._weight_int4pack_mm`. torchao's own tensor subclasses
are not used: eagerly its int8 runs 15× slower than bf16 on the CPU, and its int4 has no CPU layout
(issue 21). A device without an int8 kernel multiplies by the int8 weight cast on the fly (memory saved,
not time); int4 without a kernel is refused. The kernels take bfloat16 (or float16) activations: torch's CPU
kernels are vectorised for those and not for float32 (bench/RESULTS.md), so a float32 model's quantized
products round their inputs to bfloat16 and cast the outputs back; scales and zeros are stored in that
`kernel_dtype` and the integers are chosen against exactly those scales.

On disk and in `state_dict()` a quantized Linear is its portable tensors: int8 `qweight` int8 `[N, K]` +
`scale` `[N]`; int4 `qweight` uint8 `[N, K / 2]` (even input in the high nibble) + `scales_and_zeros`
`[K / group_size, N, 2]`. In memory, int4 weights live in the device kernel's own packed layout.
Embeddings and the audio/text heads are not quantized: they are read a row at a time or once per step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from higgslab.errors import HiggsLabError

METHODS = ("none", "int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)  # what the int4 kernels take
CONFIG_FILE = "quantization.json"  # beside config.json in a quantized checkpoint
FORMAT = "higgslab-weight-only-v1"


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize to: `method` none | int8 | int4, and int4's `group_size` (inputs per scale)."""

    method: str = "none"
    group_size: int = 128

    def __post_init__(self):
        if self.method not in METHODS:
            raise HiggsLabError(f"quantize={self.method!r}: use one of {', '.join(METHODS)}")
        if self.method == "int4" and self.group_size not in GROUP_SIZES:
            raise HiggsLabError(
                f"quantize group_size={self.group_size!r}: int4 takes {', '.join(map(str, GROUP_SIZES))}"
            )

    @classmethod
    def parse(cls, quantize: str | QuantSpec | None, group_size: int | None = None) -> QuantSpec | None:
        """`"int8"`, `"int4"`, `"none"`, a `QuantSpec`, or None (as the checkpoint is) -> spec or None."""
        if quantize is None or isinstance(quantize, QuantSpec):
            return quantize
        return cls(str(quantize), 128 if group_size is None else group_size)

    @property
    def active(self) -> bool:
        return self.method != "none"

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def read(cls, directory: Path) -> QuantSpec | None:
        """The spec saved in a checkpoint directory, or None for an unquantized one."""
        f = Path(directory) / CONFIG_FILE
        if not f.is_file():
            return None
        try:
            d = json.loads(f.read_text())
            if d.pop("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            return cls(**d)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise HiggsLabError(f"{f}: not a higgslab quantization config ({e})") from None

    def check_shapes(self, in_features: list[int], where: str) -> None:
        """int4 needs every input width to be whole groups (and even): one line before anything loads."""
        if self.method == "int4":
            bad = sorted({k for k in in_features if k % self.group_size})
            if bad:
                raise HiggsLabError(
                    f"{where}: int4 group_size {self.group_size} does not divide input width {bad[0]}"
                )


# ---- the kernels a device has --------------------------------------------------------------------------
def _has_kernel(op: str, device: torch.device) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", key)


def kernels(method: str, device: torch.device) -> str | None:
    """The fused kernel family `method` runs with on `device`: "cpu", "cuda", or None (int8: the cast
    fallback; int4: not supported)."""
    if method == "int8":
        return device.type if _has_kernel("_weight_int8pack_mm", device) else None
    if device.type == "cpu" and _has_kernel("_weight_int4pack_mm_for_cpu", device):
        return "cpu"
    if device.type == "cuda" and _has_kernel("_weight_int4pack_mm", device):
        return "cuda"
    return None


def check_device(spec: QuantSpec | None, device: torch.device) -> None:
    """Refuse int4 where torch has no int4 kernel, before anything is read."""
    if spec is not None and spec.method == "int4" and kernels("int4", device) is None:
        raise HiggsLabError(f"quantize=int4: torch has no int4 kernel for {device.type}; use int8 or none")


def kernel_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a quantized product's activations, scales and zeros: float16 for float16 models,
    else bfloat16."""
    return torch.float16 if compute_dtype == torch.float16 else torch.bfloat16


# ---- quantizing ------------------------------------------------------------------------------------------
def quantize_int8(w: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """`w` `[N, K]` -> `qweight` int8 `[N, K]`, `scale` `[N]` in `dtype` (the values the kernel uses)."""
    w = w.float()
    # absmax / 127: the scale's rounding to `dtype` (2^-9 at most) cannot push a weight past ±127.5
    scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(dtype)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return {"qweight": q, "scale": scale}


def quantize_int4(
    w: torch.Tensor, group_size: int, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """`w` `[N, K]` -> `qweight` uint8 `[N, K / 2]`, `scales_and_zeros` `[K / group_size, N, 2]` in `dtype`."""
    N, K = w.shape
    g = w.float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-6).to(dtype)
    zero = (lo + scale.float() * 8).to(dtype)  # the value q = 8 stands for
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((g - (z - 8 * s)) / s).clamp(0, 15).to(torch.uint8).reshape(N, K)
    return {
        "qweight": (q[:, ::2] << 4) | q[:, 1::2],
        "scales_and_zeros": torch.stack([scale, zero], -1).transpose(0, 1).contiguous(),
    }


ROWS = 1024  # rows quantized at a time: the float32 temporaries stay small while a model loads


def quantize_weight(w: torch.Tensor, spec: QuantSpec, compute_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A float `[N, K]` weight as `spec`'s portable tensors for a model in `compute_dtype`."""
    dtype = kernel_dtype(compute_dtype)
    parts = [
        quantize_int8(rows, dtype) if spec.method == "int8" else quantize_int4(rows, spec.group_size, dtype)
        for rows in w.split(ROWS)
    ]
    return {k: torch.cat([p[k] for p in parts], dim=1 if k == "scales_and_zeros" else 0) for k in parts[0]}


def dequantize(method: str, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 `[N, K]` weight that the portable tensors `t` stand for (the reference numerics)."""
    if method == "int8":
        return t["qweight"].float() * t["scale"].float()[:, None]
    packed = t["qweight"]
    q = torch.stack([packed >> 4, packed & 15], -1).reshape(packed.shape[0], -1).float()  # [N, K]
    sz = t["scales_and_zeros"].float().transpose(0, 1)  # [N, K / g, 2]
    group = q.shape[1] // sz.shape[1]
    scale, zero = (sz[..., i].repeat_interleave(group, 1) for i in (0, 1))
    return (q - 8) * scale + zero


class QuantLinear(nn.Module):
    """A bias-free `nn.Linear` with weight-only int8 or int4 weights: `[..., K]` -> `[..., N]`."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, dtype: torch.dtype, device=None):
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        self.method, self.group_size = spec.method, spec.group_size
        self.kernel_dtype = kernel_dtype(dtype)
        # empty portable tensors (int4: the device kernel's packed layout once on a device with one)
        for name, shape in portable_shapes(in_features, out_features, spec).items():
            kind = (
                self.kernel_dtype
                if name != "qweight"
                else torch.int8
                if self.method == "int8"
                else torch.uint8
            )
            self.register_buffer(name, torch.empty(shape, dtype=kind, device=device))
        self._packed_for: str | None = None  # int4: the kernel family `qweight` is packed for
        self._int8_kernel = False  # int8: the weights' device has the fused kernel (not looked up in forward)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> QuantLinear:
        if linear.bias is not None:
            raise HiggsLabError("weight-only quantization takes bias-free Linear layers")
        q = cls(linear.in_features, linear.out_features, spec, linear.weight.dtype)
        q.set_weight(linear.weight.detach())
        return q

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float `[N, K]` weight into this layer (on the weight's device)."""
        self.set_portable(quantize_weight(weight, self.spec, self.kernel_dtype))

    def set_portable(self, t: dict[str, torch.Tensor]) -> None:
        """Take the portable tensors (`state_dict()`'s), packing int4 for their device's kernel."""
        for name, v in t.items():
            if name != "qweight":
                v = v.to(self.kernel_dtype)
            setattr(self, name, v)
        self._packed_for = None
        self._placed()

    def _placed(self) -> None:
        """After the tensors arrive on a device: pack int4 for its kernel, note int8's kernel."""
        if self.method == "int4":
            if self._packed_for is None:
                self._pack_int4()
        elif not self.qweight.is_meta:
            self._int8_kernel = kernels("int8", self.qweight.device) is not None

    def portable(self) -> dict[str, torch.Tensor]:
        """The portable tensors (as saved): int4 weights come back out of the kernel's layout exactly."""
        if self.method == "int8":
            return {"qweight": self.qweight, "scale": self.scale}
        return {"qweight": self._unpack_int4(), "scales_and_zeros": self.scales_and_zeros}

    # int4: the kernels want their own layout; `qweight` holds it once packed
    def _pack_int4(self) -> None:
        w = self.qweight
        kind = None if w.is_meta else kernels("int4", w.device)
        if kind is None:
            return  # packed when it gets to a device that has the kernel (forward refuses before that)
        if kind == "cpu":
            ints = torch.stack([w >> 4, w & 15], -1).reshape(w.shape[0], -1).int()
            self.qweight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(ints, 1)
        else:
            self.qweight = torch.ops.aten._convert_weight_to_int4pack(w.contiguous(), 8)
        self._packed_for = kind
        if kind != "cpu" and not torch.equal(self._unpack_int4(), w):  # a layout no test here has run
            raise HiggsLabError(f"quantize=int4: torch's {kind} int4 packing does not give the weights back")

    def _unpack_int4(self) -> torch.Tensor:
        """The uint8 `[N, K / 2]` weight back from the packed one: the kernel times the identity with
        scale 1 and zero 8 gives each q exactly (small integers are exact in any float dtype)."""
        if self._packed_for is None:
            return self.qweight
        K = self.in_features
        eye = torch.eye(K, dtype=self.kernel_dtype, device=self.qweight.device)
        unit = torch.zeros_like(self.scales_and_zeros)
        unit[..., 0], unit[..., 1] = 1, 8
        q = self._int4_mm(eye, unit).t().round().to(torch.uint8)  # [N, K]
        return (q[:, ::2] << 4) | q[:, 1::2]

    def _int4_mm(self, x: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
        if self._packed_for == "cpu":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                x, self.qweight, self.group_size, scales_and_zeros
            )
        return torch.ops.aten._weight_int4pack_mm(x, self.qweight, self.group_size, scales_and_zeros)

    def _apply(self, fn, recurse=True):
        # int4 to another device: back to the portable layout, moved, packed for that device's kernel
        if self._packed_for is not None:
            probe = self.qweight.new_empty(0)
            if fn(probe).device != probe.device:
                self.qweight, self._packed_for = self.portable()["qweight"], None
        super()._apply(fn, recurse)
        # a cast of the model (`.float()`, `.half()`) reaches the scales: their dtype now says which kernel
        # dtype the model wants (a move leaves them as they were)
        name = "scale" if self.method == "int8" else "scales_and_zeros"
        self.kernel_dtype = kernel_dtype(getattr(self, name).dtype)
        setattr(self, name, getattr(self, name).to(self.kernel_dtype))
        self._placed()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, self.in_features)
        if self.method == "int8" and not self._int8_kernel:  # no kernel: the int8 weight cast on the fly
            y = torch.mm(x, self.qweight.t().to(dtype)) * self.scale.to(dtype)
        elif self.method == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x.to(self.kernel_dtype), self.qweight, self.scale)
        elif self._packed_for is None:
            raise HiggsLabError(f"quantize=int4: torch has no int4 kernel for {x.device.type}")
        else:
            y = self._int4_mm(x.to(self.kernel_dtype), self.scales_and_zeros)
        return y.to(dtype).reshape(*shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, v in self.portable().items():
            destination[prefix + name] = v if keep_vars else v.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        names = ("qweight", "scale") if self.method == "int8" else ("qweight", "scales_and_zeros")
        found = {n: state_dict[prefix + n] for n in names if prefix + n in state_dict}
        missing.extend(prefix + n for n in names if n not in found)
        if len(found) == len(names):
            self.set_portable(found)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.method == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.method}{group}"


def portable_shapes(K: int, N: int, spec: QuantSpec) -> dict[str, tuple[int, ...]]:
    """The shapes of a `[N, K]` Linear's tensors once quantized by `spec` (what a quantized checkpoint holds)."""
    if spec.method == "int8":
        return {"qweight": (N, K), "scale": (N,)}
    return {"qweight": (N, K // 2), "scales_and_zeros": (K // spec.group_size, N, 2)}


def quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers weight-only quantization replaces: every one inside the decoder layers."""
    return {
        f"layers.{name}": m
        for name, m in model.layers.named_modules()
        if isinstance(m, nn.Linear | QuantLinear)
    }


def replace_linears(model: nn.Module, spec: QuantSpec, dtype: torch.dtype) -> None:
    """Swap the decoder layers' Linears for empty `QuantLinear`s (e.g. on the meta device, before loading)."""
    for name, lin in quantized_linears(model).items():
        parent, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent), child, QuantLinear(lin.in_features, lin.out_features, spec, dtype)
        )


def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Quantize a loaded model's decoder-layer Linears in place, one layer at a time."""
    for name, lin in quantized_linears(model).items():
        if isinstance(lin, QuantLinear):
            raise HiggsLabError(f"{name} is already quantized")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, QuantLinear.from_linear(lin, spec))
    for layer in model.layers:
        layer.packed = None  # the fused decode matrices belonged to the float weights
    return model


def spec_of(model: nn.Module) -> QuantSpec | None:
    """The model's quantization, or None when its layers are plain Linears."""
    return next((m.spec for m in model.modules() if isinstance(m, QuantLinear)), None)
