"""`DecodeSession`: step-wise audio decoding over a static KV cache, as moshi's `LMGen` keeps its LM apart.

The session owns what a decode needs between steps: the cache, each row's last column, delay state
(`delay.force`), RAS history, random generator and emitted columns. It knows nothing of text, prompts'
meaning or audio; `Generator` (one-shot, streaming, batches) and `batching.ContinuousBatcher` (a server's
requests joining and leaving) drive it.

    session = DecodeSession(model)
    rows = session.prefill([Request(ids, codes, settings, seed=1, max_new_tokens=500)])
    while not session.idle:
        columns = session.step()            # [rows, n_q]: the column each row emitted
        for row in session.ended():         # done, or out of steps: its result, and the row is free
            result = session.finish(row)

Two ways in:
- a fresh session (no `capacity`/`length`) prefills the prompts of its one `prefill` together, left-padded,
  into a cache sized for them; when they share their settings and generator, every step is one fixed-shape
  function that can be compiled (`compile`) or captured as a CUDA graph: `Generator`'s path;
- a continuous session (`capacity` rows of `length` slots) takes each `prefill`'s requests into free rows
  while others run: a request's prompt (and its text-free twin, in the row beside it) is prefilled as a
  run alone prefills it, into the slots just before the write cursor. The cursor is shared (a step writes
  every row at one slot), so the other rows see masked empty slots there. Steps attend from the oldest
  running prompt's first slot on; when the cursor reaches the cache's end, or when the slots before that
  one are half of the written slots, those are dropped (`_tidy`). Steps run eagerly over the rows up to
  the last in use (`compact` moves the last requests down into rows freed under them), each group of rows
  with equal settings sampled together, each row drawing its random numbers from its own seed's generator.
A row is sampled as it would be alone: the same draws from its seed, the same sampling ops on its own
logits. Only the logits' last bits can differ, where attention runs over a window widened by other rows'
slots (masked) and matrix products take several rows (see `batching.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from higgslab import delay
from higgslab.errors import HiggsLabError
from higgslab.generate import sampling
from higgslab.generate.result import GenerationResult, GenerationStats
from higgslab.generate.sampling import SamplingSettings
from higgslab.model.cache import StaticKVCache

CACHE_BUCKET = 256  # compiled decode steps: cache lengths are multiples of this
MAX_RAS_WINDOW = 64  # rows joining a running session keep this many columns of history at most


@dataclass
class Request:
    """One prompt to decode: ids `[T]`, the codes `[n_q, F]` of its audio placeholders, and how to sample.

    `unconditional`: the ids without the text to speak, when `settings.cfg_scale` != 1 (they take a row of
    their own). `rng`: a generator to draw from instead of one seeded with `seed` (a batch shares one)."""

    ids: torch.Tensor
    codes: torch.Tensor | None = None
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int = 0
    max_new_tokens: int = 2048
    unconditional: torch.Tensor | None = None
    rng: torch.Generator | None = None

    @property
    def guided(self) -> bool:
        return self.settings.cfg_scale != 1


@dataclass
class _Row:
    request: Request
    rng: torch.Generator
    pair: int | None  # the row of its unconditional prompt (guidance)
    t: int = 1  # columns emitted, the all-bos one included
    stats: GenerationStats = field(default_factory=GenerationStats)
    key: tuple = field(init=False)  # its settings as a tuple: rows with equal ones are sampled together

    def __post_init__(self):
        self.key = dataclasses.astuple(self.request.settings)


class DecodeSession:
    """Step-wise decoding of `model` (a `HiggsAudioModel`); see the module docstring."""

    def __init__(
        self,
        model,
        *,
        capacity: int | None = None,
        length: int | None = None,
        compile: bool | str = False,
        compile_from: int = 1,
        steps: dict | None = None,
    ):
        """`capacity` rows of `length` cache slots each: given both, the session is continuous (every
        `prefill` joins free rows; a prompt plus its `max_new_tokens` may take half the slots); else the
        first `prefill` sizes it for its prompts. `compile`: a compiled step (True or a torch.compile mode)
        from step `compile_from` on, for prompts prefilled together with one setting; `steps`: where
        compiled steps are kept between sessions (`Generator` keeps one)."""
        self.model, self.config = model, model.config
        self.capacity, self.length = capacity, length
        self.compile, self.compile_from = compile, compile_from
        self._steps = {} if steps is None else steps
        self.rows: list[_Row | _PairRow | None] = []
        self.cache: StaticKVCache | None = None
        self.t = 1  # steps of the session
        self._uniform: SamplingSettings | None = None  # prompts prefilled together with one setting
        self._step = None
        self.used = 0  # written slots (the write cursor)
        self._first: dict[int, int] = {}  # continuous: each row in use → the first slot of its prompt
        self.continuous = capacity is not None and length is not None
        if self.continuous:
            self.cache = model.new_cache(capacity, length)
            self._allocate(capacity, MAX_RAS_WINDOW, length)

    # ---- rows in --------------------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._cond_rows()

    def _cond_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is not None and not _is_pair(r)]

    @torch.inference_mode()
    def prefill(self, requests: Sequence[Request]) -> list[int]:
        """Prefill `requests`; returns the row each decodes in. Into a fresh session they go together
        (left-padded); into a running one, each into a free row (raises when there is none)."""
        for r in requests:
            r.settings.check()
            if r.max_new_tokens < 1:
                raise HiggsLabError(f"max_new_tokens must be >= 1, got {r.max_new_tokens}")
            if r.guided and r.unconditional is None:
                raise HiggsLabError(
                    f"cfg_scale={r.settings.cfg_scale} needs unconditional ids for every prompt"
                )
        if self.cache is None:
            return self._prefill_together(list(requests))
        return [self._join(r) for r in requests]

    def free_rows(self) -> int:
        """Rows not in use."""
        n = 0 if self.capacity is None else self.capacity - len(self.rows)
        return n + sum(r is None for r in self.rows)

    def _prefill_together(self, requests: list[Request]) -> list[int]:
        c, dev, B = self.config, self.model.device, len(requests)
        guided = requests[0].guided
        if any(r.guided != guided for r in requests):
            raise HiggsLabError("prompts prefilled together must all use guidance or none")
        prompts = [r.ids for r in requests] + ([r.unconditional for r in requests] if guided else [])
        codes = [r.codes for r in requests] * (2 if guided else 1)
        ids, mask, codes = _pad(prompts, codes, c, dev)
        T, longest = ids.shape[1], max(r.max_new_tokens for r in requests)
        length = self.length or T + longest
        if self.compile:  # a compiled step is specialised to the cache's shape: round it, to reuse the code
            length = -(-length // CACHE_BUCKET) * CACHE_BUCKET
        check_context(T, longest, c.max_position_embeddings)
        n_rows = len(prompts)
        self.capacity = max(self.capacity or 0, n_rows)
        self.length = length
        self.cache = self.model.new_cache(self.capacity, length)
        self.model(ids, codes, mask, cache=self._view(range(n_rows)), logits="none")
        self.used = T
        shared = requests[0].rng
        for i, r in enumerate(requests):
            rng = r.rng if r.rng is not None else sampling.seeded_generator(r.seed, dev)
            self.rows.append(_Row(r, rng, B + i if guided else None, stats=_stats(T, dev)))
        if guided:
            self.rows += [_PairRow(i) for i in range(B)]
        # one step function for all rows: one setting, and one generator drawing the batch's noise
        first, shared = requests[0].settings, requests[0].rng
        one_rng = B == 1 or (shared is not None and all(r.rng is shared for r in requests))
        if one_rng and all(r.settings == first for r in requests):
            self._uniform = first
        if self._uniform is not None:  # the cond rows only: the step feeds the text-free rows their column
            self._allocate(B, first.ras_window, longest)
        else:
            self._allocate(n_rows, MAX_RAS_WINDOW, longest)
        self._init_state(list(range(n_rows)))
        return list(range(B))

    def _allocate(self, n: int, ras_window: int, columns: int) -> None:
        """The decode state of `n` rows: RAS history of `ras_window` columns, room for `columns` columns."""
        c, dev = self.config, self.model.device
        n_q = c.num_codebooks
        self.column = torch.full((n, n_q), c.stream_bos_id, dtype=torch.long, device=dev)
        state = delay.init_state(n, device=dev)
        self.state = state._replace(done=torch.ones_like(state.done))  # free rows count as done
        self.history = torch.full((n, max(ras_window, 1), n_q), -1, dtype=torch.long, device=dev)
        self.columns = torch.empty(n, columns, n_q, dtype=torch.long, device=dev)

    def _init_state(self, rows: list[int]) -> None:
        """Reset the decode state of `rows` to the all-bos column."""
        c, dev = self.config, self.model.device
        rows = [r for r in rows if r < self.column.shape[0]]
        index = torch.tensor(rows, device=dev)
        fresh = delay.init_state(len(rows), device=dev)
        for name, values in zip(delay.DelayState._fields, fresh, strict=True):
            getattr(self.state, name)[index] = values
        self.column[index] = c.stream_bos_id
        self.history[index] = -1
        self.history[index, -1] = c.stream_bos_id
        self.columns[index, 0] = c.stream_bos_id

    def _join(self, request: Request) -> int:
        """Prefill `request` into free rows of the running cache; its row."""
        if not self.continuous:
            raise HiggsLabError("this session decodes one batch together: make it with capacity= and length=")
        if request.settings.ras_window > MAX_RAS_WINDOW:
            raise HiggsLabError(
                f"ras_window must be <= {MAX_RAS_WINDOW} here, got {request.settings.ras_window}"
            )
        prompts = [request.ids] + ([request.unconditional] if request.guided else [])
        rows = self._take_rows(len(prompts))
        if rows is None:
            raise HiggsLabError(
                f"no {len(prompts)} free row(s) side by side: {self.capacity - self.free_rows()} of "
                f"{self.capacity} rows are decoding"
            )
        longest = max(len(p) for p in prompts)
        check_context(longest, request.max_new_tokens, self.config.max_position_embeddings)
        if longest + request.max_new_tokens > self.length // 2:
            raise HiggsLabError(
                f"prompt ({longest} tokens) + max_new_tokens ({request.max_new_tokens}) exceeds half of this "
                f"session's cache ({self.length} slots)"
            )
        self._tidy()  # when no row runs: back to slot 0
        self._prefill_rows(rows, prompts, request.codes)
        dev = self.model.device
        rng = request.rng if request.rng is not None else sampling.seeded_generator(request.seed, dev)
        pair = rows[1] if request.guided else None
        self.rows[rows[0]] = _Row(request, rng, pair, stats=_stats(len(request.ids), dev))
        if pair is not None:
            self.rows[pair] = _PairRow(rows[0])
        self._init_state(rows)
        return rows[0]

    def can_take(self, request: Request) -> bool:
        """Whether `request` can join now: the rows it takes (two with guidance) are free side by side."""
        return self._free_run(2 if request.guided else 1) is not None

    def _free_run(self, k: int) -> int | None:
        """The first of `k` free rows side by side, or None."""
        free = [r is None for r in self.rows] + [True] * (self.capacity - len(self.rows))
        return next((i for i in range(len(free) - k + 1) if all(free[i : i + k])), None)

    def _take_rows(self, k: int) -> list[int] | None:
        """`k` free rows side by side (a prompt and its text-free twin are prefilled together, as a run
        alone prefills them), or None."""
        i = self._free_run(k)
        if i is None:
            return None
        self.rows += [None] * max(0, i + k - len(self.rows))
        return list(range(i, i + k))

    def _prefill_rows(self, rows: list[int], prompts: list, codes: torch.Tensor | None) -> None:
        """`prompts` into `rows` (side by side), left-padded together, in the slots that end at the write
        cursor (moved on if it is too short for them)."""
        cache = self.cache
        ids, mask, codes = _pad(prompts, [codes] * len(prompts), self.config, self.model.device)
        P = ids.shape[1]
        if P > self.used:  # the other rows get empty (masked) slots up to the prompt's length
            self.used = P
            cache.length.fill_(P)
        for row in rows:
            cache.valid[row] = False
            cache.is_audio[row] = False
            cache.seen[row] = 0
            self._first[row] = self.used - P
        cache.padded = True
        self.model(ids, codes, mask, cache=self._view(rows, start=self.used - P, written=0), logits="none")

    def _tidy(self) -> None:
        """Drop the slots before the oldest running prompt (every row's keys move left by as many) when the
        cache is full, or when they are half of those written. Steps skip them anyway (`_step_rows`); this
        keeps the write cursor of a server under steady load from the cache's end, one copy now and then."""
        if not self.continuous:
            return
        oldest = min(self._first.values(), default=self.used)
        if oldest == 0 or (self.used < self.length and 2 * oldest < self.used):
            return
        cache, n = self.cache, self.used - oldest
        for t in (*cache.keys, *cache.values):
            t[:, :, :n] = t[:, :, oldest : self.used].clone()
        for t in (cache.valid, cache.is_audio):
            t[:, :n] = t[:, oldest : self.used].clone()
            t[:, n:] = False
        self.used = n
        cache.length.fill_(n)
        self._first = {row: first - oldest for row, first in self._first.items()}

    def _view(self, rows, start: int = 0, written: int | None = None) -> StaticKVCache:
        """The cache seen through `rows` (a range, or one row) from slot `start` on, sharing its tensors, with
        `written` slots of it used (default: up to the write cursor)."""
        written = self.used - start if written is None else written
        c = self.cache
        sel = slice(rows[0], rows[-1] + 1)
        if start == 0 and written == self.used and sel == slice(0, c.valid.shape[0]):
            c.used = self.used
            c.length.fill_(self.used)
            return c
        v = object.__new__(StaticKVCache)
        v.keys = [k[sel, :, start:] for k in c.keys]
        v.values = [x[sel, :, start:] for x in c.values]
        v.valid, v.is_audio, v.seen = c.valid[sel, start:], c.is_audio[sel, start:], c.seen[sel]
        v.length = torch.full((), written, dtype=torch.long, device=c.seen.device)
        v.write_pos, v.max_len = c.write_pos, c.max_len - start
        v.used, v.static, v.window, v.padded = written, False, None, c.padded
        v._slots = c._slots
        return v

    # ---- steps ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """One decode step for every row in use → the columns they emitted, `[rows, n_q]` (on the device; a
        row that has ended emits all-eos columns until it is finished)."""
        if self.cache is None:
            raise HiggsLabError("prefill the session before stepping it")
        if self._uniform is not None:
            return self._step_together()
        return self._step_rows()

    def _step_together(self) -> torch.Tensor:
        cache, t = self.cache, self.t
        if self.compile and t == self.compile_from:
            cache.static = True  # compiled steps see fixed shapes: the whole cache, masked
            self._step = None
        if self._step is None:
            self._step = step_function(
                self.model, self._uniform, self.compile if cache.static else False, self._steps
            )
        graphs = isinstance(self.compile, str)  # a torch.compile mode: "reduce-overhead" records CUDA graphs
        if cache.static:
            # compiled steps attend to a window that grows with the written slots: exactly those on the CPU;
            # in buckets under CUDA/NPU graphs, which record one graph for every window. It stays shorter
            # than the cache: a whole-cache slice is contiguous, and torch.compile would specialise on that.
            window = CACHE_BUCKET if graphs else 1
            span = min(-(-(self.used + 1) // window) * window, self.length - 1)
            if t == self.compile_from or span != cache.span:
                cache.attend_to(span)
        B = self.column.shape[0]
        settings, n_q = self._uniform, self.config.num_codebooks
        ras = settings.ras_window > 0 and settings.temperature > 0
        noise = sampling.uniform_noise(
            (B, n_q), sampling.draws(settings.temperature, ras), self.rows[0].rng, self.model.device
        )
        history = self.history if ras else None
        column, history, state = self._step(self.column, history, self.state, cache, noise)
        if graphs:  # a CUDA/NPU graph's outputs live in its own buffers, which its next replay overwrites
            column, state = column.clone(), delay.DelayState(*(x.clone() for x in state))
            history = None if history is None else history.clone()
        if t == self.compile_from and cache.static and self.compile_skips_guards:
            # the first compiled step has passed its guards; the others see the same objects with the same
            # shapes, and re-checking them costs a CPU step measurably
            self._step = _skipping_guards(self._step)
        self.column, self.state = column, state
        if history is not None:
            self.history = history
        self.columns[:, t] = column
        self.t += 1
        self.used += 1
        for r in self.rows[:B]:
            r.t += 1
        return column

    compile_skips_guards = True  # False while a caller may change the model between steps (streaming)

    def _set(self, rows, column, history, state) -> None:
        self.column[rows] = column
        if history is not None:
            self.history[rows] = history
        for mine, new in zip(self.state, state, strict=True):
            mine[rows] = new

    def _step_rows(self) -> torch.Tensor:
        """The general step: the rows in use, eagerly; each group of equal settings sampled together."""
        n = len(self.rows)
        c, dev = self.config, self.model.device
        self._tidy()
        live = [i for i, r in enumerate(self.rows) if isinstance(r, _Row)]
        groups: dict[tuple, list[int]] = {}
        for i in live:
            groups.setdefault(self.rows[i].key, []).append(i)
        guided = [i for i in live if self.rows[i].pair is not None]
        cond, twin = _index(guided, dev), _index([self.rows[i].pair for i in guided], dev)
        self.column[twin] = self.column[cond]  # a guided row's text-free twin is fed the same column
        noises = self._draws(list(groups.values()))  # every row from its own seed's stream, as alone
        # from the oldest running prompt's first slot on: the slots before it are no running row's, and
        # reading them is what a batched step's attention costs (its keys are read for every row)
        start = min(self._first.values(), default=0)
        logits = self.model.decode_audio_step(self.column[:n], self._view(range(n), start))
        self.used += 1
        sampled = torch.full((n, c.num_codebooks), c.stream_eos_id, dtype=torch.long, device=dev)
        host = dev.type == "cpu"  # eager on the CPU: sampling may read values back (`sampling.sample`)
        for rows, noise in zip(groups.values(), noises, strict=True):
            s = self.rows[rows[0]].request.settings
            index = _index(rows, dev)
            lg = logits[index]
            if s.cfg_scale != 1:
                pairs = _index([self.rows[i].pair for i in rows], dev)
                lg = sampling.guide(lg, logits[pairs], s.cfg_scale, c.codebook_size)
            ras = s.ras_window > 0 and s.temperature > 0
            history = self.history[index, MAX_RAS_WINDOW - s.ras_window :] if ras else None
            sampled[index] = sampling.sample(
                lg,
                s.temperature,
                s.top_k,
                s.top_p,
                history=history,
                ras_max_repeat=s.ras_max_repeat,
                noise=noise,
                host=host,
            )
        sampled[twin] = sampled[cond]
        state = delay.DelayState(*(x[:n] for x in self.state))
        column, state = delay.force(sampled, state, c.stream_ids)
        history = torch.cat([self.history[:n, 1:], column[:, None]], dim=1)
        self._set(slice(0, n), column, history, state)
        rows = torch.tensor(live, device=dev)
        self.columns[rows, torch.tensor([self.rows[i].t for i in live], device=dev)] = column[rows]
        for i in live:
            self.rows[i].t += 1
        self.t += 1
        return column

    def _draws(self, groups: list[list[int]]) -> list[tuple[torch.Tensor, ...]]:
        """Each group's step draws: every row's from its own generator, stacked `[rows, n_q]`."""
        c, out = self.config, []
        for rows in groups:
            s = self.rows[rows[0]].request.settings
            k = sampling.draws(s.temperature, ras=s.ras_window > 0 and s.temperature > 0)
            shape, dev = (1, c.num_codebooks), self.model.device
            draws = [sampling.uniform_noise(shape, k, self.rows[i].rng, dev) for i in rows]
            out.append(tuple(torch.cat(d) for d in zip(*draws, strict=True)) if k else ())
        return out

    # ---- rows out -------------------------------------------------------------------------------------------
    def newest_frames(self, rows: list[int]) -> torch.Tensor:
        """For each of `rows`, on the host `[len(rows), 1 + n_q + 1]`: whether its last column completed a
        frame it keeps, that frame's codes (frame f takes codebook k from column f + k; clipped to codes),
        and its done flag. A step completes one frame a row; those kept (1 <= f, and f < `end_frame` once
        the closing started, as `delay.finished_frames` keeps them) are `finish(row).codes`, in order."""
        n_q, dev = self.config.num_codebooks, self.column.device
        index = torch.tensor(rows, device=dev)
        frame = torch.tensor([self.rows[r].t - n_q for r in rows], device=dev)
        end = self.state.end_frame[index]
        kept = (frame >= 1) & ((end < 0) | (frame < end))
        k = torch.arange(n_q, device=dev)
        codes = self.columns[index[:, None], (frame[:, None] + k).clamp(min=0), k]
        codes = codes.clamp(0, self.config.codebook_size - 1)
        return torch.cat([kept[:, None].long(), codes, self.state.done[index, None].long()], 1).cpu()

    def ended(self) -> list[int]:
        """Rows whose stream has closed, or that have emitted their `max_new_tokens` columns (a host sync)."""
        live = self._cond_rows()
        if not live:
            return []
        done = self.state.done[live].tolist()
        return [
            i
            for i, d in zip(live, done, strict=True)
            if d or self.rows[i].t >= self.rows[i].request.max_new_tokens
        ]

    def all_done(self) -> bool:
        """Every row's stream has closed (a host sync)."""
        live = self._cond_rows()
        return bool(self.state.done[live].all())

    @torch.inference_mode()
    def finish(self, row: int, steps: int | None = None) -> GenerationResult:
        """Row `row`'s result (its first `steps` columns; default all it emitted); the row is free after."""
        r = self.rows[row]
        steps = r.t if steps is None else steps
        cols = self.columns[row, :steps].cpu().T
        done, end_frame = bool(self.state.done[row]), int(self.state.end_frame[row])
        frames = delay.finished_frames(cols, self.config.stream_ids, end_frame=end_frame)
        stats = dataclasses.replace(r.stats, steps=steps, frames=frames.shape[1])
        self.rows[row] = None
        if r.pair is not None:
            self.rows[r.pair] = None
        self.state.done[row] = True
        if self.continuous:
            for freed in (row, r.pair):
                if freed is not None:
                    self.cache.valid[freed] = False
                    self._first.pop(freed)
            while self.rows and self.rows[-1] is None:  # steps run over the rows up to the last in use
                self.rows.pop()
        return GenerationResult(
            codes=frames,
            columns=cols,
            finished=done,
            stream_ids=self.config.stream_ids,
            seed=r.request.seed,
            stats=stats,
        )

    @torch.inference_mode()
    def compact(self) -> dict[int, int]:
        """Move the last rows in use down into free rows, so that steps (over the rows up to the last in
        use) compute no freed row; {row it was: row it is} of each request moved. A continuous session only;
        call it between steps, and follow the moves (a request's row changes)."""
        moved: dict[int, int] = {}
        while self.continuous and self.rows:
            last = len(self.rows) - 1
            cond = self.rows[last].of if _is_pair(self.rows[last]) else last
            unit = list(range(cond, last + 1))  # a request's row, and its text-free twin's
            free = self._free_run(len(unit))
            if free is None or free >= cond:
                break
            self._move(unit, list(range(free, free + len(unit))))
            origin = next((k for k, v in moved.items() if v == cond), cond)
            moved[origin] = free
            while self.rows and self.rows[-1] is None:
                self.rows.pop()
        return moved

    def _move(self, src: list[int], dst: list[int]) -> None:
        """A request's rows `src` (its own, then its twin's) to the free rows `dst`: cache and decode state."""
        c, r = self.cache, self.rows[src[0]]
        s, d = (torch.tensor(x, device=c.seen.device) for x in (src, dst))
        for t in (*c.keys, *c.values):
            t[d, :, : self.used] = t[s, :, : self.used]
        for t in (c.valid, c.is_audio, c.seen, self.column, self.history, *self.state):
            t[d] = t[s]
        self.columns[d, : r.t] = self.columns[s, : r.t]
        c.valid[s] = False
        self.state.done[s] = True  # free rows count as done
        for a, b in zip(src, dst, strict=True):
            self._first[b] = self._first.pop(a)
            self.rows[a] = None
        r.pair = dst[1] if r.pair is not None else None
        self.rows[dst[0]] = r
        if r.pair is not None:
            self.rows[dst[1]] = _PairRow(dst[0])


class _PairRow:
    """A row holding a guided request's prompt without its text (or a row being filled)."""

    def __init__(self, of: int):
        self.of = of


def _is_pair(r) -> bool:
    return isinstance(r, _PairRow)


def _index(rows: list[int], dev: torch.device) -> slice | torch.Tensor:
    """`rows` as a slice when they are evenly spaced (the usual case: requests side by side, each with its
    text-free twin; a view of the logits, not a copy of them), else as an index tensor."""
    step = rows[1] - rows[0] if len(rows) > 1 else 1
    if rows and step > 0 and rows == list(range(rows[0], rows[-1] + 1, step)):
        return slice(rows[0], rows[-1] + 1, step)
    return torch.tensor(rows, dtype=torch.long, device=dev)


def _stats(prompt_tokens: int, dev: torch.device) -> GenerationStats:
    return GenerationStats(prompt_tokens=prompt_tokens, device=str(dev))


def check_context(prompt: int, max_new_tokens: int, context: int) -> None:
    if prompt + max_new_tokens > context:
        raise HiggsLabError(
            f"prompt ({prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of {context} positions"
        )


def _pad(prompts, prompt_codes, c, dev):
    """Left-pad prompts to `[B, T]` with a mask; stack their audio codes to `[B, n_q, F]`."""
    prompts = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), c.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = p
        mask[b, T - len(p) :] = 1
    frames = [x.shape[-1] for x in prompt_codes if x is not None]
    codes = None
    if frames:
        codes = torch.zeros(len(prompts), c.num_codebooks, max(frames), dtype=torch.long)
        for b, x in enumerate(prompt_codes):
            if x is not None:
                codes[b, :, : x.shape[-1]] = x
        codes = codes.to(dev)
    return ids.to(dev), (None if mask.all() else mask.to(dev)), codes


def step_function(model, settings: SamplingSettings, compile: bool | str, cache: dict) -> Callable:
    """The decode step of rows that share `settings`: logits → sampled column → delay forcing; pure device
    work, fixed shapes.

    `history` `[B, W, n_q]` holds the last W emitted columns for repetition-aware sampling (slots not yet
    filled hold -1, which matches no code); it is None when RAS is off. `noise`: the step's uniform draws
    (`sampling.uniform_noise`). Compiled (`compile`: True or a torch.compile mode) once per sampling
    setting and kept in `cache`."""
    scale = settings.cfg_scale
    key = (settings.temperature, settings.top_k, settings.top_p, settings.ras_max_repeat, scale, compile)
    if key in cache:
        return cache[key]
    stream_ids = model.config.stream_ids

    def step(column, history, state, kv, noise):
        if scale == 1:
            logits = model.decode_audio_step(column, kv)
        else:  # rows B.. of the cache are the prompts without their text, fed the same columns
            cond, uncond = model.decode_audio_step(torch.cat([column, column]), kv).chunk(2)
            logits = sampling.guide(cond, uncond, scale, model.config.codebook_size)
        sampled = sampling.sample(
            logits,  # sample() works in float32
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            history=history,
            ras_max_repeat=settings.ras_max_repeat,
            noise=noise,
        )
        column, state = delay.force(sampled, state, stream_ids)
        if history is not None:
            history = torch.cat([history[:, 1:], column[:, None]], dim=1)
        return column, history, state

    if compile:
        # True: torch.compile's default mode; a string is a torch.compile mode ("reduce-overhead" = CUDA graphs)
        mode = compile if isinstance(compile, str) else None
        # on the CPU a C++ wrapper calls the step's kernels without Python in between (bench/RESULTS.md);
        # torch.compile takes options or a mode, not both
        cpu = mode is None and model.device.type == "cpu"
        step = torch.compile(step, dynamic=False, mode=mode, options={"cpp_wrapper": True} if cpu else None)
    cache[key] = step
    return step


def _skipping_guards(step: Callable) -> Callable:
    """`step` run with torch.compile checking only the guards that tell its compiled variants apart."""

    def run(*args):
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return step(*args)

    return run
