"""Sampling: greedy, seeded draws by the inverted cumulative distribution, top-k/top-p as transformers, RAS as the original."""

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from higgslab.errors import HiggsLabError
from higgslab.generate import sampling
from tests.test_delay import host_sync_ops

V = 1026


def peaked(values: list[float], rows: int = 1, n_q: int = 1, vocab: int = 16) -> torch.Tensor:
    """Logits `[rows, n_q, vocab]`: the given values on tokens 0.., the rest far below (small vocab: fast)."""
    logits = torch.full((vocab,), -30.0)
    logits[: len(values)] = torch.tensor(values)
    return logits.expand(rows, n_q, vocab).clone()


def frequencies(tokens: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(tokens.flatten(), minlength=V)[:n].float() / tokens.numel()


def test_greedy_is_argmax_and_ignores_the_seed():
    logits = torch.randn(3, 8, V)
    a = sampling.sample(logits, temperature=0, generator=sampling.seeded_generator(1))
    b = sampling.sample(logits, temperature=0, generator=sampling.seeded_generator(2), top_k=5, top_p=0.5)
    assert torch.equal(a, logits.argmax(-1)) and torch.equal(a, b)


def test_same_seed_same_codes_other_seed_other_codes():
    logits = torch.randn(4, 8, V)

    def draw(seed):
        return sampling.sample(logits, temperature=1.0, generator=sampling.seeded_generator(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_noise_drawn_beforehand_gives_the_same_codes(temperature):
    """A compiled step gets its draws as `uniform_noise`: the same numbers, in the order `sample` uses."""
    logits, history = torch.randn(2, 8, V), torch.randint(0, 4, (2, 7, 8))
    history[..., 0] = logits[:, 0].argmax(-1)[:, None]  # codebook 0 repeats under greedy: RAS redraws it
    kw = dict(temperature=temperature, top_k=50, top_p=0.9, history=history)
    n = sampling.draws(temperature, ras=True)
    assert n == (2 if temperature else 1)
    noise = sampling.uniform_noise(tuple(logits.shape[:2]), n, sampling.seeded_generator(3))
    drawn = sampling.sample(logits, generator=sampling.seeded_generator(3), **kw)
    assert torch.equal(sampling.sample(logits, noise=noise, **kw), drawn)
    other = sampling.uniform_noise(tuple(logits.shape[:2]), n, sampling.seeded_generator(4))
    assert not torch.equal(sampling.sample(logits, noise=other, **kw), drawn)


def test_inversion_never_draws_a_token_of_probability_zero():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.0, 0.75, 0.0])
    u = torch.tensor([0.0, 0.2499, 0.25, 1 - 2**-24])  # the ends of U[0, 1), and either side of a step
    tokens = sampling.invert(probs.expand(4, -1), u=u)
    assert tokens.tolist() == [1, 1, 4, 4]
    weights = torch.tensor([0.0, 3.0, 0.0])  # unnormalised; u = 1, past U[0, 1), still finds the token
    assert sampling.invert(weights[None], u=torch.tensor([1.0])).tolist() == [1]


def test_draws_follow_the_tempered_distribution():
    logits = peaked([2.0, 1.0, 0.0, -1.0], rows=20000)
    tokens = sampling.sample(logits, temperature=0.7, generator=sampling.seeded_generator(0))
    expected = (logits[0, 0, :4] / 0.7).softmax(-1)
    assert (frequencies(tokens, 4) - expected).abs().max() < 0.015


def test_top_k_and_top_p_draw_only_from_the_kept_set():
    logits = peaked([3.0, 2.9, 2.8, 2.7, 2.6], rows=5000)
    assert (
        sampling.sample(logits, temperature=1.0, top_k=2, generator=sampling.seeded_generator(0)).max() == 1
    )
    probs = logits[0, 0].softmax(-1)  # ~0.24, 0.22, 0.20, 0.18, 0.16: 0.5 needs three tokens
    assert probs[:2].sum() < 0.5 < probs[:3].sum()
    tokens = sampling.sample(logits, temperature=1.0, top_p=0.5, generator=sampling.seeded_generator(0))
    assert tokens.max() == 2
    assert (frequencies(tokens, 3) - probs[:3] / probs[:3].sum()).abs().max() < 0.03


def transformers_kept(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The tokens transformers' warpers keep, `[..., V]` bool."""
    scores = logits.reshape(-1, V) / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return ~scores.isinf().view(logits.shape)


@pytest.mark.parametrize(
    "top_k,top_p", [(1, 1.0), (50, 1.0), (0, 0.95), (0, 0.3), (50, 0.95), (3, 0.01), (200, 0.99), (5, 1e-9)]
)
def test_masks_match_transformers_warpers(top_k, top_p):
    # top-p inside the top k is found among those k, not by a sort of all V: the same tokens, to the last
    # bit of the cumulative sums (200 / 0.99: many tokens near the boundary)
    torch.manual_seed(top_k)
    logits = torch.randn(40, 8, V) * 3
    logits[0, 0, :4] = 5.0  # ties at the top-k boundary are kept by both
    ours = ~sampling.filter_logits(logits, 0.8, top_k, top_p).isinf()
    assert torch.equal(ours, transformers_kept(logits, 0.8, top_k, top_p))
    assert ours.sum(-1).min() >= 1


def test_top_p_keeps_every_token_tied_with_the_last_it_keeps():
    # bf16 logits tie often; transformers keeps whichever tied tokens its unstable sort puts last
    torch.manual_seed(0)
    logits = (torch.randn(64, 8, V) * 3).bfloat16().float()
    ours = ~sampling.filter_logits(logits, 0.3, 50, 0.95).isinf()
    theirs = transformers_kept(logits, 0.3, 50, 0.95)
    assert not (theirs & ~ours).any()  # never fewer tokens
    extra = ours & ~theirs
    assert extra.any()  # the inputs do tie at the boundary
    floor = logits.masked_fill(~theirs, float("inf")).amin(-1, keepdim=True)  # the least token they keep
    assert (logits[extra] == floor.expand_as(logits)[extra]).all()  # the extra ones tie with it


def test_ras_redraws_from_the_raw_distribution_when_the_code_repeats():
    logits = peaked([1.0, 0.0], rows=20000)
    history = torch.tensor([0, 5, 0, 9])[None, :, None].expand(20000, 4, 1)  # token 0 twice in the window
    tokens = sampling.sample(
        logits, temperature=0.1, top_k=1, generator=sampling.seeded_generator(0), history=history
    )
    raw = logits[0, 0, :2].softmax(-1)  # untempered, top-k not applied: token 1 comes back ~27% of the time
    assert (frequencies(tokens, 2) - raw).abs().max() < 0.015


def test_ras_does_not_trigger_below_max_repeat_or_outside_the_window():
    logits = peaked([1.0, 0.0], rows=2000)
    once = torch.tensor([0, 5, 6, 9])[None, :, None].expand(2000, 4, 1)
    gen = sampling.seeded_generator(0)
    assert sampling.sample(logits, temperature=0, generator=gen, history=once).eq(0).all()
    old = torch.tensor([0, 0, 6, 9])[None, :, None].expand(2000, 4, 1)  # the repeats are 3-4 columns back
    assert sampling.sample(logits, temperature=0, generator=gen, history=old, ras_window=2).eq(0).all()
    assert sampling.sample(logits, temperature=0, generator=gen, history=old, ras_window=0).eq(0).all()
    assert not sampling.sample(logits, temperature=0, generator=gen, history=old).eq(0).all()
    assert sampling.sample(logits, temperature=0, generator=gen, history=old, ras_max_repeat=3).eq(0).all()


def test_ras_counts_stream_tokens_per_codebook():
    logits = torch.zeros(3000, 2, V)
    logits[:, :, 1024] = 5.0  # both codebooks want stream-bos
    history = torch.tensor([[1024, 7], [1024, 7]]).expand(3000, 2, 2)  # only codebook 0 saw bos twice
    tokens = sampling.sample(logits, temperature=0, generator=sampling.seeded_generator(0), history=history)
    assert tokens[:, 1].eq(1024).all()
    redrawn_bos = logits[0, 0].softmax(-1)[1024]  # ~0.13: redrawn from the raw distribution
    assert (tokens[:, 0].eq(1024).float().mean() - redrawn_bos).abs() < 0.02


@pytest.mark.parametrize(
    "kw",
    [dict(temperature=0), dict(temperature=0.3, top_k=50, top_p=0.95), dict(temperature=1.0, top_k=4),
     dict(temperature=0.8, top_p=0.7), dict(temperature=0.5, top_k=50, ras_max_repeat=1)],
)  # fmt: skip
def test_host_path_draws_the_same_tokens(kw):
    """`host=True` (a batched eager step: NumPy's top-k, the RAS redraw only where it triggers) draws what
    the static path draws, from the generator or from noise drawn beforehand; ties at the top-k boundary
    included, and RAS triggering on most codebooks (ras_max_repeat=1)."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(16, 8, V, generator=gen) * 3
    logits[0, 0, :60] = 4.0  # 60 tokens tie at the top: top-k keeps them all
    history = torch.randint(0, 8, (16, 7, 8), generator=gen)
    history[:, -2:] = logits.argmax(-1)[:, None]  # the likeliest tokens repeat: RAS redraws them
    n = sampling.draws(kw["temperature"], ras=True)
    noise = sampling.uniform_noise((16, 8), n, sampling.seeded_generator(9))
    for draws in (lambda: dict(noise=noise), lambda: dict(generator=sampling.seeded_generator(9))):
        static = sampling.sample(logits, history=history, **kw, **draws())
        assert torch.equal(sampling.sample(logits, history=history, host=True, **kw, **draws()), static)
    redrawn = sampling.sample(logits, history=history, **kw, noise=noise)
    assert not torch.equal(
        redrawn, sampling.sample(logits, history=None, **kw, noise=noise[:1] if n > 1 else ())
    )


def test_sample_has_no_host_sync():
    logits = torch.randn(2, 8, V)
    history = torch.randint(0, V, (2, 7, 8))
    gen = sampling.seeded_generator(0)
    assert host_sync_ops(sampling.sample, logits, 0.7, 50, 0.95, gen, history) == set()


@pytest.mark.parametrize(
    "kw,word",
    [({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")]
    + [({"top_k": -1}, "top_k"), ({"ras_max_repeat": 0}, "ras_max_repeat")],
)
def test_bad_settings_raise_one_line(kw, word):
    with pytest.raises(HiggsLabError, match=word) as e:
        sampling.sample(torch.randn(1, 8, V), **kw)
    assert "\n" not in str(e.value)


def test_guidance_extrapolates_the_codes_and_keeps_the_stream_tokens_conditional():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 8, 1026, generator=g) * 3, torch.randn(2, 8, 1026, generator=g) * 3
    out = sampling.guide(cond, uncond, 2.5, n_codes=1024)
    p, p_cond = out.exp(), cond.softmax(-1)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 8))
    torch.testing.assert_close(p[..., 1024:], p_cond[..., 1024:])  # bos / eos: the conditional model's
    extrapolated = (uncond + 2.5 * (cond - uncond))[..., :1024].softmax(-1)
    torch.testing.assert_close(p[..., :1024] / p[..., :1024].sum(-1, keepdim=True), extrapolated)
    torch.testing.assert_close(
        sampling.guide(cond, uncond, 1.0, 1024), cond.log_softmax(-1)
    )  # scale 1: no guidance
