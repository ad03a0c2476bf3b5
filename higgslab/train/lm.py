"""Stage 2 of higgslab-mini: train a small DualFFN LM on (text, delayed codes) pairs in the real prompt format.

    python -m higgslab.train.lm                                 # experiment=mini
    python -m higgslab.train.lm experiment=mini_no_dualffn      # the ablation: no audio FFN in any layer

Needs stage 1's tokenizer (`<run_dir>/tokenizer/tokenizer`). Encodes the corpus once (cached), trains a
byte-level BPE on the training sentences, and trains `HiggsAudioModel` on one example per clip:

    build_prompt(text)  …<|audio_out_bos|>  <|AUDIO_OUT|> × S        S = N + n_q + 1 delayed columns
                                            column 0 (all stream-bos) is fed, as the generator does;
                                            audio_logits at audio position j predict column j + 1

The loss is the cross-entropy of every codebook (`lm.codebook_weights` can weight them) plus guided
attention (`lm.guide`, `train/align.py`): chosen heads are rewarded for reading the sentence at the pace of
the speech. Every `eval_every` steps the history logs the held-out audio and guided-attention
losses, and `text_gain`: how much lower codebook 0's held-out loss is with the clip's own sentence than with
the next clip's (≈ 0 for a model that ignores the text).

Writes into `<run_dir>/<lm.name>/`: last.pt, loss.png, and `model/` (original layout + text tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from higgslab import delay
from higgslab.config import HiggsConfig
from higgslab.errors import HiggsLabError
from higgslab.train.align import GuidedAttention, diagonal_prior
from higgslab.train.data import Clip, build_corpus, load_audio, read_manifest

IGNORE = -100


def encode_corpus(tokenizer_dir: str | Path, clips: list[Clip], cache: Path) -> dict[str, torch.Tensor]:
    """clip id -> codes `[n_q, N]` (int16), through the stock `load_tokenizer` path; cached in `cache`."""
    from tqdm import tqdm

    from higgslab.io.atomic import atomic_write
    from higgslab.io.load import load_tokenizer

    codes = torch.load(cache, weights_only=True) if cache.is_file() else {}
    missing = [c for c in clips if c.id not in codes]
    if missing:
        tok = load_tokenizer(tokenizer_dir)
        for clip in tqdm(missing, desc="encode corpus", unit="clip"):
            codes[clip.id] = tok.encode(load_audio(clip)).to(torch.int16)
        # renamed into place, so a run started beside this one never reads a half-written file
        atomic_write(cache, lambda tmp: torch.save(codes, tmp))
    return {c.id: codes[c.id].long() for c in clips}


def lm_config(
    text_ids: dict[str, int], sizes: DictConfig, dual_ffn: bool, n_q: int, bins: int
) -> HiggsConfig:
    """A small Llama with the text tokenizer's vocabulary and special ids; DualFFN in every layer or none."""
    return HiggsConfig(
        **text_ids,
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_layers=sizes.layers,
        num_heads=sizes.heads,
        num_kv_heads=sizes.kv_heads,
        head_dim=sizes.hidden // sizes.heads,
        max_position_embeddings=sizes.max_positions,
        rope={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        adapter_type="dual_ffn",
        dual_ffn_layers=tuple(range(sizes.layers)) if dual_ffn else (),
        num_codebooks=n_q,
        codebook_size=bins,
        stream_bos_id=bins,
        stream_eos_id=bins + 1,
    )


@dataclass
class Example:
    input_ids: torch.Tensor  # [T] prompt ids then one <|AUDIO_OUT|> per column
    columns: torch.Tensor  # [n_q, S] the delayed segment
    first_audio: int  # index of the first <|AUDIO_OUT|> position
    text_span: tuple[int, int]  # positions [start, end) of the sentence's tokens in the user turn

    @property
    def span(self) -> tuple[int, int, int, int]:
        """(text start, text end, first audio position, frames): what `align.diagonal_prior` needs."""
        return (*self.text_span, self.first_audio, self.columns.shape[1] - self.columns.shape[0] - 1)

    def without_text(self) -> Example:
        """The same example with its sentence cut out of the prompt (`Prompt.without_text`): the
        unconditional example that classifier-free guidance needs the model to have seen."""
        from higgslab.generate.prompt import without_span

        start, end = self.text_span
        ids = without_span(self.input_ids, self.text_span)
        return Example(ids, self.columns, self.first_audio - (end - start), (start, start))


def make_example(text_tokenizer, config: HiggsConfig, text: str, codes: torch.Tensor) -> Example:
    from higgslab.generate.prompt import build_prompt

    prompt = build_prompt(text_tokenizer, text, n_q=config.num_codebooks, stream_ids=config.stream_ids)
    columns = delay.encode_segment(codes, config.stream_ids)
    audio = torch.full((columns.shape[1],), config.audio_out_token_id, dtype=torch.long)
    return Example(torch.cat([prompt.input_ids, audio]), columns, len(prompt.input_ids), prompt.text_span)


def collate(examples: list[Example], config: HiggsConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded batch: input_ids `[B, T]`, audio_codes `[B, n_q, S]`, targets `[B, T, n_q]` (IGNORE
    except at audio positions j < S - 1, whose target is column j + 1). Right padding needs no attention
    mask: causal attention never lets a real position see the padding after it."""
    B, n_q = len(examples), config.num_codebooks
    T, S = max(len(e.input_ids) for e in examples), max(e.columns.shape[1] for e in examples)
    ids = torch.full((B, T), config.pad_token_id, dtype=torch.long)
    codes = torch.full((B, n_q, S), config.stream_eos_id, dtype=torch.long)
    targets = torch.full((B, T, n_q), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        s = e.columns.shape[1]
        ids[b, : len(e.input_ids)] = e.input_ids
        codes[b, :, :s] = e.columns
        targets[b, e.first_audio : e.first_audio + s - 1] = e.columns[:, 1:].T
    return ids, codes, targets


def codebook_losses(model, ids: torch.Tensor, codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next delayed column per codebook `[n_q]`, over the audio targets. The
    audio head (the widest matrix of a mini LM) runs only on the positions that have a target."""
    hidden = model(ids, codes, logits="none").last_hidden_state  # [B, T, D]
    has_target = (targets != IGNORE).any(-1)  # [B, T]
    logits = model.audio_logits(hidden[has_target])  # [N, n_q, codebook_size + 2]
    wanted = targets[has_target]  # [N, n_q]
    loss = F.cross_entropy(logits.float().transpose(1, 2), wanted, ignore_index=IGNORE, reduction="none")
    return loss.sum(0) / (wanted != IGNORE).sum(0).clamp(min=1)


@torch.no_grad()
def text_gain(
    model, text_tokenizer, texts: list[str], codes: list[torch.Tensor], batch_size: int = 8
) -> float:
    """What the right sentence is worth, in nats: codebook 0's teacher-forced cross-entropy on clips
    (`codes`, each `[n_q, N]`) paired with the next clip's sentence, minus paired with their own. A model
    that ignores its text scores ≈ 0. Means over batches of `batch_size` clips, as the training eval does."""

    def codebook0(sentences: list[str]) -> float:
        examples = [
            make_example(text_tokenizer, model.config, t, c) for t, c in zip(sentences, codes, strict=True)
        ]
        batches = [examples[j : j + batch_size] for j in range(0, len(examples), batch_size)]
        return float(
            torch.stack([codebook_losses(model, *collate(b, model.config))[0] for b in batches]).mean()
        )

    return codebook0(texts[1:] + texts[:1]) - codebook0(texts)


# Generator.long_form of the exported model: trained on one sentence per prompt (`make_example`), it has
# never seen earlier chunks as context nor [SPEAKERn] tags (bench/RESULTS.md, "Long-form")
LONG_FORM = {"context_chunks": 0, "speaker_tags": False}


def export_model(
    model, text_dir: Path, out: Path, dtype: torch.dtype = torch.float32, generation: dict | None = None
) -> Path:
    """Write the LM in the ORIGINAL layout (`write_checkpoint`) with the text tokenizer files beside it,
    and `generation` (e.g. `{"guidance_scale": 2.0, "higgslab_long_form": LONG_FORM}`) as its
    `generation_config.json`."""
    import json
    import shutil

    from higgslab.io.lm_format import write_checkpoint
    from higgslab.train.text import TEXT_FILES

    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    write_checkpoint(out, model.config, tensors, fmt="original")
    for name in TEXT_FILES:
        shutil.copy2(text_dir / name, out / name)
    if generation:
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def train_lm(cfg: DictConfig) -> Path:
    """Run stage 2 as configured; returns the exported model directory."""
    from transformers import AutoTokenizer

    from higgslab.io.load import load_tokenizer
    from higgslab.model.lm import HiggsAudioModel
    from higgslab.train.loop import TrainSettings, run_training
    from higgslab.train.text import write_text_tokenizer

    torch.set_num_threads(cfg.threads)
    m = cfg.lm
    manifest = build_corpus(cfg.data.dir, cfg.data.sentences, cfg.data.seed, cfg.data.valid_every)
    train, valid = read_manifest(manifest, "train"), read_manifest(manifest, "valid")[: m.eval_clips]
    audio_tok = Path(m.audio_tokenizer or Path(cfg.run_dir) / "tokenizer" / "tokenizer")
    run_dir = Path(cfg.run_dir) / m.name
    run_dir.mkdir(parents=True, exist_ok=True)
    codes = encode_corpus(audio_tok, train + valid, Path(cfg.run_dir) / "codes.pt")
    tokenizer = load_tokenizer(audio_tok)  # the LM's codebooks are its tokenizer's: no setting of their own
    n_q, bins = tokenizer.num_codebooks, tokenizer.codebook_size

    text_dir = run_dir / "text"
    text_ids = write_text_tokenizer(text_dir, [c.text for c in train], m.bpe_merges)
    text_tok = AutoTokenizer.from_pretrained(str(text_dir))
    config = lm_config(text_ids, m.sizes, m.dual_ffn, n_q, bins)
    with torch.random.fork_rng(devices=[], device_type="cpu"):
        torch.manual_seed(cfg.seed)
        model = HiggsAudioModel(config, text_head=False)
    examples = [make_example(text_tok, config, c.text, codes[c.id]) for c in train]
    held_out = [make_example(text_tok, config, c.text, codes[c.id]) for c in valid]

    guide = GuidedAttention(model, list(m.guide.layers), list(m.guide.heads))
    weights = torch.tensor(m.codebook_weights or [1.0] * n_q, dtype=torch.float32)
    if weights.shape != (n_q,) or (weights < 0).any() or weights.sum() <= 0:
        raise HiggsLabError(
            f"lm.codebook_weights must be {n_q} non-negative numbers, not all 0: got {list(m.codebook_weights)}"
        )

    def losses(batch: list[Example]) -> dict[str, torch.Tensor]:
        per_codebook = codebook_losses(model, *collate(batch, config))
        ids_len = max(len(e.input_ids) for e in batch)
        aligned = guide.loss(*diagonal_prior([e.span for e in batch], ids_len, m.guide.width))
        audio = (weights * per_codebook).sum() / weights.sum()
        return {"loss": audio + m.guide.weight * aligned, "audio_loss": per_codebook.mean(), "guide": aligned,
                "codebook0": per_codebook[0]}  # fmt: skip

    def step(i: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        pick = torch.randint(len(examples), (m.batch_size,), generator=generator).tolist()
        drop = [False] * len(pick)
        if m.text_dropout:  # drawn only when on, so runs without it keep their random stream
            drop = (torch.rand(len(pick), generator=generator) < m.text_dropout).tolist()
        batch = [examples[j] for j in pick]
        return losses([e.without_text() if d else e for e, d in zip(batch, drop, strict=True)])

    @torch.no_grad()
    def eval_fn(i: int) -> dict[str, float]:
        rows = [losses(held_out[j : j + 8]) for j in range(0, len(held_out), 8)]
        gain = text_gain(model, text_tok, [c.text for c in valid], [codes[c.id] for c in valid])
        mean = {k: float(torch.stack([r[k] for r in rows]).mean()) for k in ("audio_loss", "guide")}
        return {"valid_loss": mean["audio_loss"], "valid_guide": mean["guide"], "text_gain": gain}

    settings = TrainSettings(steps=m.steps, lr=m.lr, warmup=m.warmup, seed=cfg.seed, grad_clip=m.grad_clip,
                             weight_decay=m.weight_decay, checkpoint_every=m.checkpoint_every,
                             eval_every=m.eval_every, title=f"mini LM ({m.name})")  # fmt: skip
    run_training(model, model.parameters(), step, run_dir, settings, eval_fn)
    # the scale the model was measured best with (train/listen.py); 1 = no guidance
    generation = {"guidance_scale": float(m.guidance_scale)} if m.guidance_scale != 1 else {}
    generation["higgslab_long_form"] = LONG_FORM
    return export_model(model, text_dir, run_dir / "model", generation=generation)


def cli(cfg: DictConfig) -> None:
    print(f"wrote {train_lm(cfg)}")


def main() -> None:
    from higgslab.conf import command

    command("train/lm", cli)()


if __name__ == "__main__":
    main()
