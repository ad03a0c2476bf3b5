"""LM stage pieces: special ids from the tokenizer, training targets, overfit, resume, export round trip."""

import torch
from transformers import AutoTokenizer

from higgslab.io.load import load_model
from higgslab.model.lm import HiggsAudioModel
from higgslab.train.align import GuidedAttention, diagonal_prior
from higgslab.train.lm import IGNORE, codebook_losses, collate, export_model, lm_config, make_example
from higgslab.train.loop import TrainSettings, run_training
from higgslab.train.text import write_text_tokenizer

from .conftest import compose

TEXTS = ["Anna found the key.", "Where is the red lamp?", "The dog was sleeping by the river."]


def setup(tmp_path, dual_ffn=True):
    ids = write_text_tokenizer(tmp_path / "text", TEXTS, merges=50)
    sizes = compose("train/lm", []).lm.sizes.copy()
    sizes.update(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1)
    config = lm_config(ids, sizes, dual_ffn, n_q=8, bins=1024)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "text"))
    g = torch.Generator().manual_seed(0)
    examples = [
        make_example(tok, config, t, torch.randint(0, 1024, (8, 5 + 2 * i), generator=g))
        for i, t in enumerate(TEXTS)
    ]
    return config, tok, examples


def test_special_ids_come_from_the_small_vocabulary(tmp_path):
    config, tok, _ = setup(tmp_path)
    assert config.vocab_size == len(tok) < 2000
    assert tok.convert_ids_to_tokens(config.audio_out_token_id) == "<|AUDIO_OUT|>"
    assert tok.convert_ids_to_tokens(config.audio_out_bos_token_id) == "<|audio_out_bos|>"
    assert config.audio_out_token_id - config.bos_token_id == 16  # Llama-3's order kept


def test_targets_are_the_next_delayed_column(tmp_path):
    config, _, examples = setup(tmp_path)
    ids, codes, targets = collate(examples, config)
    e = examples[1]
    assert ids[1, e.first_audio - 1] == config.audio_out_bos_token_id
    assert torch.equal(targets[1, e.first_audio], e.columns[:, 1])  # the bos column predicts column 1
    last = e.first_audio + e.columns.shape[1] - 2
    assert (targets[1, last] == config.stream_eos_id).all()  # the closing all-eos column is a target
    assert (targets[1, last + 1 :] == IGNORE).all() and (targets[1, : e.first_audio] == IGNORE).all()


def test_text_span_is_the_sentence_and_frames_the_clip(tmp_path):
    config, tok, examples = setup(tmp_path)
    for text, e in zip(TEXTS, examples, strict=True):
        start, end, first_audio, frames = e.span
        assert tok.decode(e.input_ids[start:end]).strip() == text
        assert first_audio == e.first_audio and e.columns.shape[1] == frames + config.num_codebooks + 1


def test_unconditional_example_is_the_same_without_its_sentence(tmp_path):
    config, tok, examples = setup(tmp_path)
    codes = examples[2].columns[:, 1 : 1 + 9]  # any [n_q, N]
    kept = make_example(tok, config, TEXTS[2], codes)
    dropped = kept.without_text()
    start, end = kept.text_span
    assert torch.equal(dropped.input_ids, torch.cat([kept.input_ids[:start], kept.input_ids[end:]]))
    assert dropped.text_span == (start, start) and dropped.first_audio == kept.first_audio - (end - start)
    assert torch.equal(dropped.columns, kept.columns)
    # guided attention leaves it out: no counted queries, and a batch of only such examples costs 0
    T = len(kept.input_ids)
    prior, queries = diagonal_prior([kept.span, dropped.span], T, 0.2)
    assert queries[0].any() and not queries[1].any() and prior[1].abs().sum() == 0
    torch.manual_seed(0)
    model = HiggsAudioModel(config, text_head=False)
    guide = GuidedAttention(model, layers=[0], heads=[0])
    model(*collate([dropped], config)[:2])
    assert guide.loss(*diagonal_prior([dropped.span], len(dropped.input_ids), 0.2)) == 0


def test_weight_decay_shrinks_matrices_only(tmp_path):
    """Decoupled decay on a parameter whose gradient is 0: matrices shrink by (1 - lr·wd) per step, the
    norm-like vector does not."""
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def step(i, g):
        return {"loss": (model.weight * 0).sum() + (model.bias * 0).sum()}

    lr = 0.1
    run_training(
        model, model.parameters(), step, tmp_path, TrainSettings(steps=1, lr=lr, warmup=1, weight_decay=0.5)
    )
    assert torch.allclose(model.weight, before["weight"] * (1 - lr * 0.5))
    assert torch.equal(model.bias, before["bias"])


def test_codebook_losses_average_to_the_mean_cross_entropy(tmp_path):
    config, _, examples = setup(tmp_path)
    ids, codes, targets = collate(examples, config)
    torch.manual_seed(0)
    model = HiggsAudioModel(config, text_head=False)
    with torch.no_grad():
        per_codebook = codebook_losses(model, ids, codes, targets)
        logits = model(ids, codes).audio_logits  # [B, T, n_q, bins + 2]
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=IGNORE)
    assert per_codebook.shape == (8,) and torch.allclose(per_codebook.mean(), plain, atol=1e-5)


def test_overfit_resume_and_export_round_trip(tmp_path):
    config, _, examples = setup(tmp_path)
    batch = collate(examples, config)

    def train(run_dir, steps):
        torch.manual_seed(0)
        model = HiggsAudioModel(config, text_head=False)
        settings = TrainSettings(steps=steps, lr=3e-3, warmup=2, checkpoint_every=3)
        history = run_training(model, model.parameters(), lambda i, g: {"loss": codebook_losses(model, *batch).mean()},
                               run_dir, settings)  # fmt: skip
        return model, history

    straight, history = train(tmp_path / "a", 6)
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    train(tmp_path / "b", 3)
    resumed, _ = train(tmp_path / "b", 6)  # continues from last.pt at step 3
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k

    out = export_model(straight, tmp_path / "text", tmp_path / "model")
    loaded = load_model(out)
    assert loaded.config.audio_out_token_id == config.audio_out_token_id
    assert loaded.config.dual_ffn_layers == config.dual_ffn_layers
    with torch.no_grad():
        assert torch.allclose(loaded(*batch[:2]).audio_logits, straight(*batch[:2]).audio_logits, atol=1e-5)


def test_ablation_experiment_differs_only_in_dualffn():
    mini, ablation = compose("train/lm", []), compose("train/lm", ["experiment=mini_no_dualffn"])
    assert mini.lm.dual_ffn and not ablation.lm.dual_ffn and ablation.lm.name != mini.lm.name
    same = ("steps", "batch_size", "lr", "weight_decay", "sizes", "guide", "codebook_weights", "text_dropout")
    for key in same:
        assert ablation.lm[key] == mini.lm[key]
    assert ablation.data == mini.data and ablation.tokenizer == mini.tokenizer
