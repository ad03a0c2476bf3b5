"""Delay pattern: round trips, the opening and closing rules of FORMATS.md §6, output frames, streaming."""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from higgslab import delay

IDS = delay.StreamIds.after_codes(1024)  # the real checkpoint's
B, E = IDS.bos, IDS.eos


def picture(rows: list[str]) -> torch.Tensor:
    """Columns written as strings, one char per codebook: B = bos, E = eos, a digit = that code → `[S, n_q]`."""
    table = {"B": B, "E": E}
    return torch.tensor([[table[ch] if ch in table else int(ch) for ch in row] for row in rows])


# ---- apply / revert ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_q,T", list(itertools.product(range(1, 6), range(0, 7))))
def test_round_trip_every_small_size(n_q, T):
    codes = torch.randint(0, 1024, (n_q, T))
    delayed = delay.apply(codes, IDS)
    assert delayed.shape == (n_q, T + n_q - 1)
    assert torch.equal(delay.revert(delayed), codes)
    for k in range(n_q):  # staircase: k bos before, n_q-1-k eos after
        assert delayed[k, :k].eq(B).all() and delayed[k, k + T :].eq(E).all()
        assert torch.equal(delayed[k, k : k + T], codes[k])


def test_apply_matches_the_documented_picture():
    codes = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    assert delay.apply(codes, IDS).tolist() == [
        [1, 2, E, E, E],
        [B, 3, 4, E, E],
        [B, B, 5, 6, E],
        [B, B, B, 7, 8],
    ]


def test_batched_apply_and_revert_equal_per_row():
    codes = torch.randint(0, 1024, (3, 8, 5))
    delayed = delay.apply(codes, IDS)
    assert torch.equal(delayed, torch.stack([delay.apply(c, IDS) for c in codes]))
    assert torch.equal(delay.revert(delayed), codes)


def test_encode_segment_is_bos_frame_codes_eos_frame_delayed():
    codes = torch.randint(0, 1024, (8, 4))
    seg = delay.encode_segment(codes, IDS)
    assert seg.shape == (8, 4 + 9)
    assert torch.equal(delay.revert(seg), torch.cat([torch.full((8, 1), B), codes, torch.full((8, 1), E)], 1))
    assert seg[:, 0].eq(B).all() and seg[:, -1].eq(E).all()


# ---- force: opening -----------------------------------------------------------------------------------------
def run(sampled: torch.Tensor):
    """Feed sampled columns `[S, B, n_q]` through `force` → emitted columns `[S, B, n_q]` and the states."""
    state = delay.init_state(sampled.shape[1])
    out, states = [], []
    for column in sampled:
        column, state = delay.force(column, state, IDS)
        out.append(column)
        states.append(state)
    return torch.stack(out), states


def test_codebook_k_opens_k_steps_after_codebook_0_from_step_0():
    out, states = run(torch.full((10, 2, 8), 7))
    for s in range(10):
        for k in range(8):
            assert out[s, :, k].eq(7 if k <= s else B).all(), (s, k)
    assert not states[-1].done.any() and states[-1].countdown.eq(-1).all()


def test_eos_from_a_codebook_not_open_yet_is_overwritten_and_ignored():
    sampled = torch.full((3, 1, 8), 7)
    sampled[1, 0, 5] = E  # step 1: only codebooks 0..1 are open
    out, states = run(sampled)
    assert out[1, 0].tolist() == [7, 7, B, B, B, B, B, B]
    assert states[1].countdown.item() == -1


# ---- force: closing, every j ------------------------------------------------------------------------------
# After 8 steps of 5s (all codebooks open), codebook j alone samples eos; then the columns that follow.
CLOSING = {
    0: ["E5555555", "E5555555", "EE555555", "EEE55555", "EEEE5555", "EEEEE555", "EEEEEE55", "EEEEEEE5"],
    1: ["EE555555", "EE555555", "EEE55555", "EEEE5555", "EEEEE555", "EEEEEE55", "EEEEEEE5"],
    2: ["EEE55555", "EEE55555", "EEEE5555", "EEEEE555", "EEEEEE55", "EEEEEEE5"],
    3: ["EEEE5555", "EEEE5555", "EEEEE555", "EEEEEE55", "EEEEEEE5"],
    4: ["EEEEE555", "EEEEE555", "EEEEEE55", "EEEEEEE5"],
    5: ["EEEEEE55", "EEEEEE55", "EEEEEEE5"],
    6: ["EEEEEEE5", "EEEEEEE5"],
    7: ["EEEEEEEE"],
}


@pytest.mark.parametrize("j", range(8))
def test_closing_sequence_for_every_j(j):
    expected = picture(CLOSING[j])
    sampled = torch.full((8 + len(expected) + 2, 1, 8), 5)
    sampled[8, 0, j] = E
    out, states = run(sampled)
    assert out[8 : 8 + len(expected), 0].tolist() == expected.tolist()
    last = 8 + len(expected) - 1
    assert [bool(st.done) for st in states[last - 1 : last + 1]] == [False, True]
    assert states[8].countdown.item() == (7 - j if j < 7 else -1)
    assert out[last + 1 :, 0].eq(E).all()  # finished rows keep emitting eos columns


def test_lowest_eos_codebook_wins_and_no_detection_during_countdown():
    sampled = torch.full((12, 1, 8), 5)
    sampled[8, 0, 2] = sampled[8, 0, 6] = E
    sampled[9, 0, 7] = E  # sampled during the countdown: kept, not a new closing
    out, states = run(sampled)
    assert out[8, 0].tolist() == picture(["EEE555E5"])[0].tolist()
    assert out[9, 0].tolist() == picture(["EEE5555E"])[0].tolist()
    assert states[9].countdown.item() == 4


def test_codebook_0_eos_at_the_very_first_step_gives_zero_frames():
    sampled = torch.full((10, 1, 8), 5)
    sampled[0, 0, 0] = E
    out, states = run(sampled)
    assert (
        out[:8, 0].tolist()
        == picture(
            ["EBBBBBBB", "E5BBBBBB", "EE5BBBBB", "EEE5BBBB", "EEEE5BBB", "EEEEE5BB", "EEEEEE5B", "EEEEEEE5"]
        ).tolist()
    )
    assert bool(states[7].done) and not bool(states[6].done)
    columns = torch.cat([torch.full((1, 8), B), out[:8, 0]]).T
    assert delay.finished_frames(columns, IDS).shape == (8, 0)


def test_rows_of_a_batch_close_independently():
    sampled = torch.full((20, 2, 8), 5)
    sampled[8, 0, 3] = E
    out, states = run(sampled)
    assert bool(states[12].done[0]) and not bool(states[12].done[1])
    assert out[:, 1].ne(E).all()


def reference_force(sampled: list[list[int]], n_q: int) -> list[list[int]]:
    """The original's per-step rules transcribed with Python ints (one row), for a differential test."""
    out, num_delay, remaining, finished = [], 0, None, False
    for column in sampled:
        column = list(column)
        if finished:
            out.append([E] * n_q)
            continue
        if num_delay + 1 < n_q:
            column[num_delay + 1 :] = [B] * (n_q - num_delay - 1)
            num_delay += 1
        if remaining is not None:
            column[: n_q - remaining] = [E] * (n_q - remaining)
            remaining -= 1
        elif E in column:
            j = column.index(E)
            column[:j] = [E] * j
            remaining = n_q - j - 1
        if remaining is not None and remaining <= 0:
            finished = True
        out.append(column)
    return out


@pytest.mark.parametrize("n_q", [1, 2, 3, 8])
def test_force_matches_a_transcription_of_the_original_on_random_streams(n_q):
    gen = torch.Generator().manual_seed(n_q)
    sampled = torch.randint(1020, 1026, (30, 16, n_q), generator=gen)  # bos/eos drawn often
    out, _ = run(sampled)
    for b in range(16):
        assert out[:, b].tolist() == reference_force(sampled[:, b].tolist(), n_q), b


SYNCING_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "is_nonzero",
    "index_put_",
    "masked_scatter",
}


def host_sync_ops(fn, *args) -> set[str]:
    """The aten ops `fn(*args)` runs that read device data on the host or give data-dependent shapes."""
    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Record():
        fn(*args)
    bool_index = any(n == "index" for n in seen)  # x[mask] dispatches aten.index with a bool index → nonzero
    return (seen & SYNCING_OPS) | ({"index"} if bool_index else set())


def test_force_is_capturable_without_host_sync():
    state = delay.init_state(2)
    column = torch.full((2, 8), E)
    for _ in range(9):  # through opening, closing and done
        assert host_sync_ops(delay.force, column, state, IDS) == set()
        column, state = delay.force(column, state, IDS)
    assert bool(state.done.all())

    def syncs(column, state):  # the check can fail
        return column[column == E].sum().item()

    assert host_sync_ops(syncs, column, state) >= {"_local_scalar_dense"}


# ---- output ---------------------------------------------------------------------------------------------
def generate(sampled: torch.Tensor, with_end: bool = False):
    """All-bos column + forced sampled columns, one row → `[n_q, S]` as the generator stores them."""
    out, states = run(sampled[:, None])
    columns = torch.cat([torch.full((1, sampled.shape[-1]), B), out[:, 0]]).T
    return (columns, int(states[-1].end_frame[0])) if with_end else columns


def test_max_length_keeps_every_complete_frame():
    codes = torch.randint(0, 1024, (8, 40))
    sampled = delay.apply(codes, IDS)[:, 1:].T  # the model reproducing `codes` exactly, no eos
    for steps in (7, 8, 9, 20):
        columns = generate(sampled[:steps])
        frames = delay.finished_frames(columns, IDS)
        assert frames.shape == (8, max(steps - 7, 0))  # N steps after bos → N - (n_q - 1)
        assert torch.equal(frames, codes[:, 1 : 1 + frames.shape[1]])


@pytest.mark.parametrize("j", range(8))
def test_at_eos_the_partial_frame_is_dropped_as_the_original_does(j):
    sampled = torch.randint(0, 1024, (30, 8))
    sampled[12, j] = E
    sampled[14:, 7] = E  # codebook 7 sampling eos during the countdown changes nothing
    columns, end = generate(sampled, with_end=True)
    assert end == 13 - j  # closing column 13 (12 sampled + the bos column), lowest codebook j
    stop = 13 + 7 - j + 1  # columns up to the row's last one; the rest are all-eos
    original = delay.revert(columns[:, :stop])[:, 1:-1].clamp(0, 1023)
    assert torch.equal(delay.finished_frames(columns, IDS, end_frame=end), original)
    assert torch.equal(delay.finished_frames(columns, IDS), original)  # inferred from the columns alone
    assert original.shape[1] == 12 - j


def test_adjacent_eos_in_the_closing_column_only_inference_drops_more():
    sampled = torch.randint(0, 1024, (30, 8))
    sampled[12, 2] = sampled[12, 3] = E  # j = 2, and codebook 3 sampled eos as well
    columns, end = generate(sampled, with_end=True)
    assert end == 11 and delay.inferred_end_frame(columns, IDS) == 10
    assert delay.finished_frames(columns, IDS, end_frame=end).shape[1] == 10  # the original's [1:-1]
    assert delay.finished_frames(columns, IDS).shape[1] == 9  # frame 10 holds codebook 3's eos
    assert delay.num_finished_frames(
        torch.stack([columns, columns]), IDS, torch.tensor([end, -1])
    ).tolist() == [
        10,
        23,
    ]


def test_stream_tokens_inside_kept_frames_are_clipped():
    columns = generate(torch.full((12, 8), 5))
    columns[2, 4] = B  # an open codebook may sample bos: codebook 2 of frame 2
    frames = delay.finished_frames(columns, IDS)
    assert frames.shape == (8, 5) and frames[2, 1] == 1023
    assert frames.sum() == 5 * (8 * 5 - 1) + 1023


# ---- streaming -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eos_at", [None, 0, 5, 9, 14])
def test_scheduler_yields_exactly_the_finished_frames(eos_at):
    gen = torch.Generator().manual_seed(3)
    sampled = torch.randint(0, 1024, (25, 8), generator=gen)
    if eos_at is not None:
        sampled[eos_at, eos_at % 8] = E
    columns = generate(sampled)
    scheduler = delay.DelayScheduler(8, IDS)
    pieces = []
    for c in range(columns.shape[1]):
        frames = scheduler.push(columns[:, c])
        pieces.append(frames)
        # a frame comes out exactly when its last codebook (column f + n_q - 1) has arrived
        assert frames.shape[1] <= 1
    assert torch.equal(torch.cat(pieces, 1), delay.finished_frames(columns, IDS))
    assert scheduler.finished == (eos_at is not None)


def test_scheduler_reports_open_and_closed_codebooks():
    scheduler = delay.DelayScheduler(8, IDS)
    scheduler.push(torch.full((8,), B))
    assert not scheduler.open.any()
    for column in picture(["5BBBBBBB", "55BBBBBB", "555BBBBB", "E55BBBBB"]):
        scheduler.push(column)
    assert scheduler.open.tolist() == [False, True, True, True] + [False] * 4
    assert scheduler.closed.tolist() == [True] + [False] * 7
