"""Per-codebook sampling of one audio column from logits `[B, n_q, V]` (V = 1026: codes + stream bos/eos).

Greedy at temperature 0; otherwise temperature → top-k → top-p (transformers' order and semantics), then a
draw that inverts the cumulative distribution at one uniform number per codebook, as `torch.multinomial`
does, but with static shapes and no host sync, from a seeded `torch.Generator` on the logits' device. So a
decode step can be captured in a CUDA/NPU graph and the same seed gives the same codes; one number per
draw (not one per token, as an exponential race takes) keeps the draws cheap beside a batch of rows.
torch.compile cannot trace a `torch.Generator`, so a compiled step takes its numbers drawn beforehand
(`uniform_noise`, the same draws in the same order): the step stays one graph.

Repetition-aware sampling (RAS), as the original `_sample_audio_tokens` does it: after the draw, a codebook
whose drawn token already appears >= `ras_max_repeat` times among its last `window` emitted tokens is
redrawn from softmax of the RAW logits (no temperature, no top-k/top-p). The window holds the columns as
emitted, stream bos/eos included, and RAS runs before the delay forcing (`delay.force`), so codebooks not
open yet spend draws too. As in the original, RAS also applies at temperature 0: greedy output is then
seed-dependent when a repetition triggers; turn RAS off (no history / window 0) for seed-free greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from higgslab.errors import HiggsLabError


def check_settings(temperature: float, top_k: int, top_p: float, ras_max_repeat: int = 2) -> None:
    """Raise a one-line `HiggsLabError` for settings outside their range."""
    if not temperature >= 0:
        raise HiggsLabError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise HiggsLabError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise HiggsLabError(f"top_p must be in (0, 1], got {top_p}")
    if ras_max_repeat < 1:
        raise HiggsLabError(f"ras_max_repeat must be >= 1, got {ras_max_repeat}")


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A `torch.Generator` on `device` seeded with `seed` (draws stay on the device)."""
    return torch.Generator(device=device).manual_seed(seed)


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, host: bool = False
) -> torch.Tensor:
    """Temperature, then top-k, then top-p on `[..., V]` logits; removed tokens become -inf.

    top-k keeps every token scoring at least the k-th best (ties kept, as transformers); top-p keeps the
    smallest set of most likely tokens whose probability sums to >= top_p, never fewer than one. Where
    tokens tie with the last one top-p keeps, all of them stay (transformers keeps whichever its unstable
    sort puts last); otherwise the two agree (tests/generate/test_sampling.py). `host`: see `sample`.
    """
    scores = logits / temperature
    if 0 < top_k < scores.shape[-1]:
        top = _top(scores, top_k, host)  # [..., k], most likely first
        floor = top[..., -1:]
        if top_p < 1.0:  # the nucleus lies inside the top k: found there, not by sorting all V
            floor = _nucleus_floor(scores, top, top_p)
        return scores.masked_fill(scores < floor, float("-inf"))
    if top_p < 1.0:
        ascending, order = scores.sort(dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[..., -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def _top(scores: torch.Tensor, k: int, host: bool) -> torch.Tensor:
    """The `k` largest of `scores` `[..., V]`, largest first `[..., k]`: NumPy's selection when `host` on
    the CPU (vectorised, about twice as fast as `torch.topk` over a batched step's rows), else torch's."""
    if not (host and scores.device.type == "cpu"):
        return scores.topk(k, dim=-1).values
    kept = np.partition(scores.numpy(), scores.shape[-1] - k, axis=-1)[..., -k:]
    return torch.from_numpy(-np.sort(-kept, axis=-1))


def _nucleus_floor(scores: torch.Tensor, top: torch.Tensor, top_p: float) -> torch.Tensor:
    """The lowest score top-p keeps `[..., 1]`, given the top-k scores `top` `[..., k]` (descending) of
    `scores` `[..., V]`. As transformers: over the tokens top-k kept, least likely first, a token goes
    while the cumulative probability up to it is <= 1 - top_p; the most likely always stays."""
    kth, k = top[..., -1:], top.shape[-1]
    tied = (scores >= kth).sum(-1, keepdim=True, dtype=torch.int32) - k  # tied with the k-th, not in `top`
    weight = (top - top[..., :1]).exp()
    probs = weight / (weight.sum(-1, keepdim=True) + tied * weight[..., -1:])
    cumulative = probs.flip(-1).cumsum(-1) + tied * probs[..., -1:]  # least likely first
    kept = (cumulative > 1 - top_p).sum(-1, keepdim=True).clamp(min=1)
    return top.gather(-1, kept - 1)


def draws(temperature: float, ras: bool) -> int:
    """How many tensors of draws `sample` uses: the main draw (not at temperature 0), then the RAS redraw."""
    return int(temperature > 0) + int(ras)


def uniform_noise(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """`n` float32 tensors of U[0, 1) numbers of `shape` (`[B, n_q]`), drawn from `generator` exactly as
    `sample` would draw them."""
    return tuple(
        torch.empty(shape, dtype=torch.float32, device=device).uniform_(generator=generator) for _ in range(n)
    )


def invert(probs: torch.Tensor, generator: torch.Generator | None = None, u: torch.Tensor | None = None
           ) -> torch.Tensor:  # fmt: skip
    """One index per row of `[..., V]` probabilities → `[...]`: the first whose cumulative probability
    exceeds u · total, u ~ U[0, 1) `[...]` (drawn from `generator` unless given). A token of probability 0
    is never drawn: the cumulative sum does not rise there."""
    if u is None:
        (u,) = uniform_noise(tuple(probs.shape[:-1]), 1, generator, probs.device)
    cumulative = probs.cumsum(dim=-1)
    total = cumulative[..., -1:]
    # below the total, where some token is always found, whatever rounding a compiled step does
    at = torch.minimum(u[..., None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, at, right=True)[..., 0]  # how many stay <= at: a binary search


def sample(
    logits: torch.Tensor,
    temperature: float = 0.3,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    history: torch.Tensor | None = None,
    ras_max_repeat: int = 2,
    ras_window: int | None = None,
    noise: tuple[torch.Tensor, ...] | None = None,
    host: bool = False,
) -> torch.Tensor:
    """One column `[B, n_q]` from logits `[B, n_q, V]`.

    history: `[B, W, n_q]`, the last emitted columns (stream tokens included) for RAS; None or W = 0 → off.
    ras_window: if given, only the last `ras_window` columns of `history` count (0 → off).
    Draws: the main draw (skipped at temperature 0), then, with RAS on, one redraw for every codebook
    (used only where it triggers), so the random stream advances the same way every step. `noise`: those
    draws made beforehand (`uniform_noise`, `[B, n_q]` each) instead of from `generator`. `host`: the
    caller runs eagerly and may wait on the device: the RAS redraw is then computed only for the codebooks
    it replaces (the same numbers; a batched step of many rows saves most of a pass over V), and top-k
    is selected with NumPy on the CPU (the same values, in half the time of `torch.topk`'s).
    """
    check_settings(temperature, top_k, top_p, ras_max_repeat)
    logits = logits.float()
    if ras_window is not None and history is not None:
        history = history[:, history.shape[1] - min(ras_window, history.shape[1]) :]
    ras = history is not None and history.shape[1] > 0
    given = iter(noise if noise is not None else [None] * draws(temperature, ras))
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
    else:
        probs = filter_logits(logits, temperature, top_k, top_p, host=host).softmax(dim=-1)
        tokens = invert(probs, generator, next(given))
    if not ras:
        return tokens
    repeats = (history == tokens[:, None, :]).sum(dim=1)
    if not host:
        redrawn = invert(logits.softmax(dim=-1), generator, next(given))
        return torch.where(repeats >= ras_max_repeat, redrawn, tokens)
    u = next(given)
    if u is None:  # drawn for every codebook, as the static path draws them
        (u,) = uniform_noise(tuple(tokens.shape), 1, generator, tokens.device)
    where = (repeats >= ras_max_repeat).nonzero(as_tuple=True)
    if len(where[0]):
        tokens = tokens.clone()
        tokens[where] = invert(logits[where].softmax(dim=-1), u=u[where])
    return tokens


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, n_codes: int) -> torch.Tensor:
    """Classifier-free guidance on logits `[..., V]`: uncond + scale · (cond − uncond) over the `n_codes`
    audio codes, while the stream tokens (ids >= n_codes: bos, eos) keep their conditional probability.
    Guidance sharpens what is said, not when it stops: extrapolated, eos would be pushed wherever the
    text-aware model expects it more than the text-blind one, which at scale 2 cut speech to half its
    length and ended some at once. Returns log-probabilities `[..., V]` (float32)."""
    cond, uncond = cond.float(), uncond.float()
    stream = cond.log_softmax(-1)[..., n_codes:]  # log p(bos), log p(eos) under the conditional model
    codes = (uncond + scale * (cond - uncond))[..., :n_codes].log_softmax(-1)
    rest = torch.log1p(-stream.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6))  # log p(a code)
    return torch.cat([codes + rest, stream], dim=-1)


@dataclass
class SamplingSettings:
    """The sampling knobs of one generation (the NPU port's defaults), checked before any work."""

    temperature: float = 0.3
    top_k: int = 50
    top_p: float = 0.95
    ras_window: int = 7
    ras_max_repeat: int = 2
    cfg_scale: float = 1.0  # classifier-free guidance (`guide`); 1 = off

    def check(self) -> None:
        check_settings(self.temperature, self.top_k, self.top_p, self.ras_max_repeat)
        if self.ras_window < 0:
            raise HiggsLabError(f"ras_window must be >= 0 (0 = off), got {self.ras_window}")
        if not self.cfg_scale >= 0:
            raise HiggsLabError(f"cfg_scale must be >= 0 (1 = off), got {self.cfg_scale}")
