"""The delay pattern of Higgs Audio V2: codebook k lags codebook 0 by k frames (FORMATS.md §6).

Codes are `[n_q, T]` (or batched `[B, n_q, T]`): row k is codebook k, column t is frame t. Delayed, a
column holds codebook k of frame t - k, so the model emits one column per step and every codebook
conditions on the lower codebooks of the same frame. Stream tokens pad the staircase: stream-bos before a
codebook has started, stream-eos after it has ended. Their ids are the checkpoint's (`StreamIds`, from
`HiggsConfig.stream_ids`; 1024 and 1025 in the real one): every function that writes or reads them takes
the ids, none assumes them.

Generation (a column per step, `force` after sampling):
    column 0         all stream-bos, emitted at the `<|audio_out_bos|>` position without sampling
    column 1 + s     sampled step s: codebooks 0..s are open, codebooks > s are forced to stream-bos
    closing          the lowest codebook j that emitted stream-eos closes 0..j at once; the rest follow one
                     codebook per column, one column late, and codebook n_q-1 is never forced (see `force`)

Output: revert the delay and keep every complete frame (`finished_frames`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from higgslab.config import StreamIds


# ---- whole sequences --------------------------------------------------------------------------------------
def apply(codes: torch.Tensor, ids: StreamIds) -> torch.Tensor:
    """Delay `[..., n_q, T]` codes → `[..., n_q, T + n_q - 1]`: row k shifted right by k, bos before, eos after."""
    n_q, T = codes.shape[-2:]
    k = torch.arange(n_q, device=codes.device)[:, None]
    t = torch.arange(T + n_q - 1, device=codes.device)[None, :]
    src = t - k  # frame that column t holds for codebook k
    index = src.clamp(0, max(T - 1, 0)).expand(*codes.shape[:-1], -1)
    if T == 0:
        picked = torch.empty(index.shape, dtype=codes.dtype, device=codes.device)
    else:
        picked = codes.gather(-1, index)
    out = torch.where(src < 0, ids.bos, picked)
    return torch.where(src >= T, ids.eos, out)


def revert(delayed: torch.Tensor) -> torch.Tensor:
    """Undo `apply`: `[..., n_q, S]` → `[..., n_q, S - n_q + 1]`, frame f taking codebook k from column f + k."""
    n_q, S = delayed.shape[-2:]
    if S < n_q - 1:
        raise ValueError(f"delayed codes need at least n_q - 1 = {n_q - 1} columns, got {S}")
    k = torch.arange(n_q, device=delayed.device)[:, None]
    f = torch.arange(S - n_q + 1, device=delayed.device)[None, :]
    return delayed.gather(-1, (f + k).expand(*delayed.shape[:-1], -1))


def encode_segment(codes: torch.Tensor, ids: StreamIds) -> torch.Tensor:
    """One stored audio segment, as the original writes a reference: `[..., n_q, N]` → `[..., n_q, N + n_q + 1]`.

    A stream-bos frame, the N frames and a stream-eos frame, delayed (N + 9 columns for n_q = 8); one
    `<|AUDIO_OUT|>` placeholder per column in the prompt.
    """
    pad = codes.new_full((*codes.shape[:-1], 1), 0)
    framed = torch.cat([pad + ids.bos, codes, pad + ids.eos], dim=-1)
    return apply(framed, ids)


# ---- step-wise forcing during generation (device tensors only, capture-friendly) ----------------------------
class DelayState(NamedTuple):
    """Per-row generation state, all `[B]` on the decode device.

    steps:     sampled columns so far (0 before the first sampled column; the all-bos column is not counted)
    countdown: r, the closing columns still to come; -1 when no closing is under way
    done:      the row has closed every codebook; its text stream would take `<|audio_eos|>`
    end_frame: the partial frame c - j once the closing started in column c (column 0 = all-bos) at lowest
               codebook j, else -1; frames 1..end_frame-1 are the output (`finished_frames(..., end_frame)`)
    """

    steps: torch.Tensor
    countdown: torch.Tensor
    done: torch.Tensor
    end_frame: torch.Tensor


def init_state(batch: int, device: torch.device | str | None = None) -> DelayState:
    """The state before the first sampled column (`force` reads n_q from the column)."""
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    no = torch.zeros(batch, dtype=torch.bool, device=device)
    return DelayState(steps=zeros, countdown=zeros - 1, done=no, end_frame=zeros - 1)


def force(column: torch.Tensor, state: DelayState, ids: StreamIds) -> tuple[torch.Tensor, DelayState]:
    """Apply the delay rules to one sampled column `[B, n_q]` → (column to emit and feed back, next state).

    Order within a step, as the original `_sample_audio_tokens` (after sampling and RAS):
      1. opening: at step s codebooks > s are forced to stream-bos, so a stream-eos sampled by a codebook
         that is not open yet is overwritten and never seen;
      2. closing under way (r > 0): codebooks 0..n_q-1-r are forced to eos, r -= 1; no new detection;
      3. otherwise, if some codebook holds eos after step 1, the LOWEST such j starts the closing: codebooks
         0..j-1 are forced to eos and r = n_q-1-j. The next column repeats the closed set 0..j, each further
         column closes one more, the last forces 0..n_q-2 and never codebook n_q-1. Codebook 0 emitting eos
         at step 0 is legal: zero frames come out. Eos from an open codebook while later codebooks are still
         bos-forced is legal too (the eos-forced set never reaches a codebook that is still bos-forced);
      4. when r reaches 0 (at once if j = n_q-1) the row is done.
    Done rows emit all-eos columns so batch shapes stay static. The rules count steps, never prompt tokens.
    Pure tensor ops: no host sync, no data-dependent shapes.
    """
    n_q = column.shape[-1]
    k = torch.arange(n_q, device=column.device)[None, :]
    steps, r, done = state.steps[:, None], state.countdown[:, None], state.done[:, None]

    column = torch.where(k > steps, ids.bos, column)  # 1. not open yet

    closing = r > 0  # 2. countdown under way
    column = torch.where(closing & (k <= n_q - 1 - r), ids.eos, column)
    r = torch.where(closing, r - 1, r)

    is_eos = column == ids.eos  # 3. detection
    j = torch.where(is_eos, k, n_q).amin(dim=-1, keepdim=True)
    start = ~closing & ~done & (j < n_q)
    column = torch.where(start & (k < j), ids.eos, column)
    r = torch.where(start, n_q - 1 - j, r)

    finished = (closing | start) & (r == 0)  # 4.
    column = torch.where(done, ids.eos, column)
    next_state = DelayState(
        steps=state.steps + 1,
        countdown=torch.where(finished, -1, r)[:, 0],
        done=(done | finished)[:, 0],
        end_frame=torch.where(start, steps + 1 - j, state.end_frame[:, None])[:, 0],
    )
    return column, next_state


# ---- output ------------------------------------------------------------------------------------------------
def inferred_end_frame(columns: torch.Tensor, ids: StreamIds) -> torch.Tensor:
    """The partial frame `[...]` read off generated columns `[..., n_q, S]` alone; -1 while no eos was emitted.

    The first column c holding an eos is the closing column; there codebooks 0..j are eos, j being the
    lowest codebook that sampled it, so j = (leading run of eos) - 1 and the partial frame is c - j. This
    equals `DelayState.end_frame` unless codebook j + 1 also sampled eos in that same column; then it is
    lower by the run's excess, dropping frames that hold that sampled eos.
    """
    n_q, S = columns.shape[-2:]
    is_eos = columns == ids.eos
    col = torch.arange(S, device=columns.device)
    first = torch.where(is_eos.any(dim=-2), col, S).amin(dim=-1)  # [...]
    at_first = is_eos.gather(-1, first.clamp(max=S - 1)[..., None, None].expand(*columns.shape[:-1], 1))
    run = at_first[..., 0].long().cumprod(dim=-1).sum(dim=-1)  # leading eos codebooks
    return torch.where(first < S, first - (run - 1), -1)


def num_finished_frames(
    columns: torch.Tensor, ids: StreamIds, end_frame: torch.Tensor | int | None = None
) -> torch.Tensor:
    """How many complete frames `[...]` the generated columns `[..., n_q, S]` hold (column 0 = the all-bos one).

    Reverted frame g (g = 0 is the bos frame) takes codebook k from column g + k. Without eos, frame g is
    complete once column g + n_q - 1 exists: S - n_q frames (N sampled steps → N - (n_q - 1)). Once the
    closing started, frames from `end_frame` (the partial one) on are dropped: on a finished row that is
    exactly the original's `[:, 1:-1]`, and columns after the row finished are ignored. `end_frame`
    (`DelayState.end_frame`, -1 = none) defaults to `inferred_end_frame(columns, ids)`.
    """
    n_q, S = columns.shape[-2:]
    if end_frame is None:
        end_frame = inferred_end_frame(columns, ids)
    end_frame = torch.as_tensor(end_frame, device=columns.device)
    at_max_length = torch.full_like(end_frame, S - n_q)
    count = torch.where(end_frame >= 0, torch.minimum(end_frame - 1, at_max_length), at_max_length)
    return count.clamp(min=0)


def finished_frames(
    columns: torch.Tensor, ids: StreamIds, end_frame: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Generated columns `[n_q, S]` (column 0 = the all-bos one) → complete frames `[n_q, F]` in [0, codebook_size).

    Give the row's `DelayState.end_frame` for exact parity with the original; without it the end is read
    off the columns. Stream tokens inside kept frames (a codebook may sample bos/eos) are clipped to
    codebook_size - 1, as the original does.
    """
    count = int(num_finished_frames(columns, ids, end_frame))
    if count == 0:
        return columns.new_zeros((columns.shape[0], 0))
    return revert(columns)[:, 1 : 1 + count].clamp(0, ids.codebook_size - 1)


class DelayScheduler:
    """Host-side streaming view of one row: push columns as they come, get each frame once it is complete.

    The first column pushed is the all-bos one. Frame f (f = 1.. after the bos frame) is complete when
    column f + n_q - 1 has arrived; frames from the partial one on (see `num_finished_frames`) never come.
    Concatenating every push's output gives exactly `finished_frames` of all columns pushed.
    """

    def __init__(self, n_q: int, ids: StreamIds):
        self.n_q, self.ids = n_q, ids
        self.columns: list[torch.Tensor] = []
        self.closed = torch.zeros(n_q, dtype=torch.bool)  # codebooks that have emitted eos
        self.end_frame: int | None = None  # the partial frame, once the closing has started
        self.next_frame = 1  # the next frame to hand out

    @property
    def opened(self) -> torch.Tensor:
        """`[n_q]` bool: codebooks that have started (codebook k opens at column k + 1)."""
        return torch.arange(self.n_q) < len(self.columns) - 1

    @property
    def open(self) -> torch.Tensor:
        """`[n_q]` bool: codebooks started and not ended."""
        return self.opened & ~self.closed

    @property
    def finished(self) -> bool:
        """Every codebook's closing column has arrived (codebook n_q-1 closes at column end_frame + n_q - 1)."""
        return self.end_frame is not None and len(self.columns) >= self.end_frame + self.n_q

    def push(self, column: torch.Tensor, end_frame: int | None = None) -> torch.Tensor:
        """Add column `[n_q]`; return the frames it completed, `[n_q, k]` (k may be 0), clipped to real codes.

        `end_frame`: the row's `DelayState.end_frame` after this column, for exact parity (else inferred).
        """
        column = column.detach().to("cpu", torch.long)
        self.columns.append(column)
        is_eos = column == self.ids.eos
        if end_frame is not None and end_frame >= 0:
            self.end_frame = int(end_frame)
        elif self.end_frame is None and bool(is_eos.any()):
            # this column as if it were column 0, shifted to its place
            self.end_frame = int(inferred_end_frame(column[:, None], self.ids)) + len(self.columns) - 1
        self.closed |= is_eos
        c = len(self.columns) - 1
        last = c - self.n_q + 1  # the frame this column completes
        if self.end_frame is not None:
            last = min(last, self.end_frame - 1)
        if last < self.next_frame:
            return torch.zeros(self.n_q, 0, dtype=torch.long)
        window = torch.stack(self.columns[self.next_frame : last + self.n_q], dim=1)
        frames = revert(window).clamp(0, self.ids.codebook_size - 1)
        self.next_frame = last + 1
        return frames
