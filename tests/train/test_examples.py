"""Fine-tuning examples: the §10 label grid, labels against the generator's forcing, the prepared folder,
and a model overfit on one example regenerating its codes greedily."""

import json

import pytest
import torch

from higgslab import delay
from higgslab.config import StreamIds
from higgslab.errors import HiggsLabError
from higgslab.train.examples import IGNORE, collate, label_grid, loss_sums, make_train_example, read_prepared

# FORMATS.md §10, verified against the original collator: 4 codebooks, F = 5, codebook k holds 100+5k … 104+5k
GRID_INPUT = [
    [1024, 100, 101, 102, 103, 104, 1025, 1025, 1025, 1025],
    [1024, 1024, 105, 106, 107, 108, 109, 1025, 1025, 1025],
    [1024, 1024, 1024, 110, 111, 112, 113, 114, 1025, 1025],
    [1024, 1024, 1024, 1024, 115, 116, 117, 118, 119, 1025],
]
GRID_LABELS = [
    [-100, 100, 101, 102, 103, 104, 1025, -100, -100, -100],
    [-100, -100, 105, 106, 107, 108, 109, 1025, -100, -100],
    [-100, -100, -100, 110, 111, 112, 113, 114, 1025, -100],
    [-100, -100, -100, -100, 115, 116, 117, 118, 119, 1025],
]


@pytest.fixture(scope="module")
def tiny(embedded_cache):
    """(model, text tokenizer) of the embedded tiny random checkpoint, float32."""
    from transformers import AutoTokenizer

    from higgslab.io.load import load_model

    _, model_dir, _ = embedded_cache
    return load_model(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(str(model_dir))


def test_label_grid_is_the_original_collators():
    ids = StreamIds.after_codes(1024)
    codes = torch.arange(100, 120).view(4, 5)
    assert delay.encode_segment(codes, ids).tolist() == GRID_INPUT
    assert label_grid(codes, ids).tolist() == GRID_LABELS


def test_labels_are_what_the_generator_forces_and_samples(tiny):
    """Feed the label of every position as the 'sampled' column (junk where the label is IGNORE): the
    generator's forcing turns it into exactly the next input column, IGNORE marks exactly the entries it
    overrides, the row closes on the last column and the frames out are the codes."""
    model, tok = tiny
    c = model.config
    codes = torch.randint(
        0, c.codebook_size, (c.num_codebooks, 7), generator=torch.Generator().manual_seed(1)
    )
    ex = make_train_example(tok, c, "hello there", codes)
    audio = (ex.input_ids == c.audio_out_token_id).nonzero()[:, 0]
    columns = ex.audio_codes[:, -len(audio) :]  # the target segment's input columns
    assert torch.equal(columns, delay.encode_segment(codes, c.stream_ids))
    first = int(audio[0])
    assert ex.labels[: first - 1].eq(IGNORE).all() and ex.labels[audio[-1] :].eq(IGNORE).all()

    state, fed = delay.init_state(1), [columns[:, 0]]
    junk = torch.Generator().manual_seed(2)
    for s in range(len(audio) - 1):
        label = ex.labels[first + s]  # target of the logits at input column s
        sampled = torch.where(
            label == IGNORE, torch.randint(0, c.codebook_size, label.shape, generator=junk), label
        )
        prev = state
        column, state = delay.force(sampled[None], state, c.stream_ids)
        assert torch.equal(column[0], columns[:, s + 1]), f"column {s + 1}"
        # the entries the forcing overrides: the same output whatever two different codes were sampled
        one = torch.randint(0, c.codebook_size, label.shape, generator=junk)
        a, b = (delay.force(x[None], prev, c.stream_ids)[0][0] for x in (one, (one + 1) % c.codebook_size))
        assert torch.equal(label == IGNORE, a == b), f"column {s + 1}"
        fed.append(column[0])
    assert bool(state.done[0])
    frames = delay.finished_frames(torch.stack(fed, 1), c.stream_ids, state.end_frame[0])
    assert torch.equal(frames, codes)
    # the text labels: <|audio_out_bos|> before the audio, <|audio_eos|> and <|eot_id|> after it
    names = ["<|audio_out_bos|>", "<|audio_eos|>", "<|eot_id|>"]
    wanted = [first - 2, int(audio[-1]), int(audio[-1]) + 1]
    assert ex.text_labels.ne(IGNORE).nonzero()[:, 0].tolist() == wanted
    assert ex.text_labels[wanted].tolist() == tok.convert_tokens_to_ids(names)


def write_prepared(directory, items: dict, n_q: int = 8, codebook_size: int = 1024, reference=None):
    """A prepared folder as `higgslab.prepare` wrote it in version 1 (one voice reference at most; still read):
    `items` id → (text, codes `[n_q, F]`); each example in `reference` (id → reference id) gets that example
    as its voice reference. Version 2 folders are made by prepare itself in tests/train/test_prepare.py."""
    from safetensors.torch import save_file

    (directory / "shards").mkdir(parents=True)
    save_file(
        {k: c.to(torch.int16).contiguous() for k, (_, c) in items.items()},
        directory / "shards/00000.safetensors",
    )
    lines = []
    for k, (text, c) in items.items():
        ref = (reference or {}).get(k)
        lines.append({"id": k, "text": text, "frames": c.shape[1], "shard": "shards/00000.safetensors",
                      "source": f"{k}.wav", "sha256": "0" * 64, "speaker": None, "scene": None,
                      "reference": None if ref is None else {"text": items[ref][0], "id": ref}})  # fmt: skip
    (directory / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    info = {"version": 1, "n_q": n_q, "codebook_size": codebook_size, "sample_rate": 24000, "frame_rate": 25.0,
            "tokenizer": "test", "examples": len(items), "frames": sum(c.shape[1] for _, c in items.values()),
            "skipped": []}  # fmt: skip
    (directory / "prepared.json").write_text(json.dumps(info))
    return directory


def random_codes(seed: int, frames: int, n_q: int = 8) -> torch.Tensor:
    return torch.randint(0, 1024, (n_q, frames), generator=torch.Generator().manual_seed(seed))


def test_read_prepared_builds_voice_cloning_examples_as_generation_does(tiny, tmp_path):
    from higgslab.generate.prompt import build_prompt

    model, tok = tiny
    c = model.config
    items = {"ref": ("a reference voice", random_codes(0, 4)), "b": ("the target", random_codes(1, 6))}
    data = read_prepared(write_prepared(tmp_path / "p", items, reference={"b": "ref"}))
    data.check(c)
    assert [e.id for e in data.entries] == ["ref", "b"]
    assert torch.equal(data.codes("b"), items["b"][1])
    ex = data.example(data.entries[1], tok, c)
    prompt = build_prompt(tok, "the target", references=[items["ref"]], n_q=8, stream_ids=c.stream_ids)
    assert torch.equal(ex.input_ids[: len(prompt.input_ids)], prompt.input_ids)
    assert torch.equal(ex.audio_codes[:, : prompt.audio_codes.shape[1]], prompt.audio_codes)
    assert ex.targets == int((label_grid(items["b"][1], c.stream_ids) != IGNORE).sum())  # the reference: none


def test_read_prepared_errors(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(HiggsLabError, match="not a prepared folder"):
        read_prepared(tmp_path)
    data = read_prepared(write_prepared(tmp_path / "p", {"a": ("x", random_codes(0, 3, n_q=4))}, n_q=4))
    with pytest.raises(HiggsLabError, match="prepared with 4 x 1024 codes, the model takes 8 x 1024"):
        data.check(model.config)
    info = json.loads((tmp_path / "p" / "prepared.json").read_text())
    (tmp_path / "p" / "prepared.json").write_text(json.dumps(info | {"version": 3}))
    with pytest.raises(HiggsLabError, match=r"prepared.json: version 3, this higgslab reads 1 and 2$"):
        read_prepared(tmp_path / "p")


def test_collate_pads_and_the_loss_counts_every_target_once(tiny):
    model, tok = tiny
    c = model.config
    examples = [
        make_train_example(tok, c, t, random_codes(i, f))
        for i, (t, f) in enumerate([("one", 3), ("two words", 6)])
    ]
    batch = collate(examples, c)
    assert batch["labels"].shape == (2, max(len(e.input_ids) for e in examples), 8)
    with torch.no_grad():
        alone = [loss_sums(model, collate([e], c)) for e in examples]
        both = loss_sums(model, batch)
    assert int(both["audio_targets"]) == sum(e.targets for e in examples)
    torch.testing.assert_close(both["audio"], alone[0]["audio"] + alone[1]["audio"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(both["text"], alone[0]["text"] + alone[1]["text"], rtol=1e-5, atol=1e-4)


def test_overfit_on_one_example_regenerates_its_codes_greedily(embedded_cache):
    from transformers import AutoTokenizer

    from higgslab.generate.generator import Generator
    from higgslab.io.load import load_model

    _, model_dir, _ = embedded_cache
    model, tok = load_model(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(str(model_dir))
    codes = random_codes(3, 6)
    batch = collate([make_train_example(tok, model.config, "say this", codes)], model.config)
    params = [p for n, p in model.named_parameters() if not n.startswith(("embed_tokens", "text_head"))]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(300):
        sums = loss_sums(model, batch)
        loss = sums["audio"] / sums["audio_targets"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss < 1e-3:
            break
    gen = Generator(model.eval(), None, tok, compile=False)
    result = gen.generate(text="say this", temperature=0, max_new_tokens=40, seed=0, decode_audio=False)
    assert torch.equal(result.codes.cpu(), codes), f"final training loss {float(loss):.4f}"
