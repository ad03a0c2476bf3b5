"""The speech server under load: continuous batching against serving requests one by one, one run.

    python bench/serve_load.py [--clients 1 4 16] [--requests 48] [--max-new-tokens 200] [--rows 32]
                               [--repeats 3]

First the same `--requests` requests (distinct texts and seeds) without a server: `Generator.generate` one by
one (decode steps and audio decoding timed apart; the audio is each request's "alone" result), and their
decode steps all at once through a `ContinuousBatcher`. Then `python -m higgslab.serve` on 127.0.0.1 around
the embedded mini, twice, side by side, each in a process of its own: with `--rows` decode rows (continuous
batching; a request with the mini's guidance takes two) and with two rows (one request at a time). Each
phase sends the requests from N client threads (httpx), each sending its next request when its last has
answered: 48 requests keep 16 clients busy for three rounds, so requests keep joining rows that others
free, as under sustained load (`--requests 16` is one burst: the last requests decode with rows empty
around them). Streamed WAV goes to the batching server for the smaller N of `--clients`, then for the
largest N, `--repeats` times, streamed and whole files to each server in turn. Each phase prints
throughput (seconds of audio per wall second) and p50/p95 time to the first audio bytes (after a streamed
WAV's header; a whole file: to the response); the speed-up of batching over one by one is the median and
the least of the pairs' ratios. Every response must be a complete WAV equal to the
request served alone (16-bit samples; a stream to one step: it is decoded chunk by chunk); a mismatch is
printed, with the time where it parts from its alone run, and the exit code is 1. Batched logits can differ
from alone ones in their last bits (`higgslab.generate.batching`), so a draw from a near tie can fall the
other way: bench/RESULTS.md says how often. Bounded: each phase stops at `--phase-limit` seconds (requests
not sent by then are reported).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import soundfile as sf
import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "We will meet at the station at half past nine tomorrow morning.",
    "Rain is expected in the afternoon, so take an umbrella with you.",
    "She sells sea shells by the sea shore.",
    "The museum opens its new gallery to the public next week.",
    "A journey of a thousand miles begins with a single step.",
]


def bodies(n: int, max_new_tokens: int, stream: bool) -> list[dict]:
    return [{"input": TEXTS[i % len(TEXTS)], "voice": "alloy", "seed": 100 + i, "max_new_tokens": max_new_tokens,
             "response_format": "wav", "stream": stream} for i in range(n)]  # fmt: skip


def one_request(http: httpx.Client, url: str, body: dict, timeout: float) -> tuple[bytes, float | None]:
    """The WAV and the seconds to its first audio bytes (after a streamed WAV's header)."""
    t0 = time.perf_counter()
    first, pieces, size = None, [], 0
    with http.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=timeout) as r:
        r.raise_for_status()
        for piece in r.iter_bytes():
            pieces.append(piece)
            size += len(piece)
            if first is None and (size > 44 or not body["stream"]):
                first = time.perf_counter() - t0
    return b"".join(pieces), first


def phase(url: str, requests: list[dict], clients: int, limit_s: float) -> dict:
    """`requests` sent by `clients` threads, each taking the next one when its last has answered."""
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(requests)):
        todo.put(i)
    out: dict[int, tuple[bytes, float | None] | str] = {}
    deadline = time.perf_counter() + limit_s

    def client() -> None:
        # one connection kept alive per client, as a load generator holds it: a new httpx.Client per request
        # builds an SSL context (~25 ms of CPU), which on two cores the server under test would pay for
        with httpx.Client() as http:
            while time.perf_counter() < deadline:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    timeout = max(1.0, deadline - time.perf_counter())
                    out[i] = one_request(http, url, requests[i], timeout)
                except Exception as e:  # noqa: BLE001 - reported with the results
                    out[i] = f"{type(e).__name__}: {e}"

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - t0, "out": out}


def check(result: dict, alone: list[np.ndarray]) -> tuple[float, list[float], list[str]]:
    """(seconds of audio, times to first audio, problems) of a phase."""
    audio_s, firsts, problems = 0.0, [], []
    for i in range(len(alone)):
        got = result["out"].get(i, "not sent within the phase limit")
        if isinstance(got, str):
            problems.append(f"request {i}: {got}")
            continue
        data, first = got
        samples, rate = sf.read(io.BytesIO(data), dtype="int16")
        n = min(samples.shape[0], alone[i].shape[0])
        apart = np.flatnonzero(np.abs(samples[:n].astype(int) - alone[i][:n]) > 1)
        if rate != 24000:
            problems.append(f"request {i}: {rate} Hz")
        elif apart.size or samples.shape != alone[i].shape:
            # a whole WAV that parts from the alone run: another draw from a near tie (module docstring)
            at = (apart[0] if apart.size else n) / 24000
            problems.append(f"request {i}: a complete WAV of {samples.shape[0] / 24000:.2f} s that parts from "
                            f"its alone run ({alone[i].shape[0] / 24000:.2f} s) at {at:.2f} s")  # fmt: skip
        audio_s += samples.shape[0] / 24000
        firsts.append(first)
    return audio_s, firsts, problems


@contextlib.contextmanager
def server_process(overrides: list[str]) -> Iterator[str]:
    """`python -m higgslab.serve` on 127.0.0.1 and a free port, in a process of its own (the clients' threads
    here do not share its interpreter lock); yields its URL once /health answers, stops it at the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "higgslab.serve", f"port={port}", "log_level=warning", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} did not answer within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=48, help="in every phase, from N clients")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--rows", type=int, default=32, help="of the batching server (guidance: 2 per request)")
    p.add_argument("--chunk-frames", type=int, default=10)
    p.add_argument("--phase-limit", type=float, default=180.0, help="seconds per phase at most")
    p.add_argument("--repeats", type=int, default=3, help="alternating pairs of N = max(--clients) phases")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir

    from higgslab.conf import CONF_DIR
    from higgslab.generate.batching import ContinuousBatcher
    from higgslab.generate.generator import Generator
    from higgslab.serve.audio import pcm16
    from higgslab.serve.settings import settings_from, step_threads

    def settings(rows: int):
        """The server's settings, as `python -m higgslab.serve rows=.. max_new_tokens=.. chunk_frames=..`."""
        overrides = [
            f"rows={rows}",
            f"max_new_tokens={args.max_new_tokens}",
            f"chunk_frames={args.chunk_frames}",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return settings_from(compose("serve", overrides=overrides))

    # the runs here take the servers' thread count for decode steps: their codes are comparable to the bit
    torch.set_num_threads(step_threads(settings(args.rows)))
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    print(f"CPU: {cpu.split(':', 1)[-1].strip() or platform.processor()}; "
          f"torch threads {torch.get_num_threads()} (the servers' decode steps')")  # fmt: skip
    gen = Generator.from_pretrained()
    print(f"model: {gen.label}")
    streamed, whole = (bodies(args.requests, args.max_new_tokens, stream) for stream in (True, False))
    requests = streamed
    lm_s = audio_decode_s = 0.0  # the same requests without a server: decode steps, then audio, one by one
    alone = []
    for b in streamed:
        t0 = time.perf_counter()
        result = gen.generate(
            text=b["input"], seed=b["seed"], max_new_tokens=b["max_new_tokens"], decode_audio=False
        )
        t1 = time.perf_counter()
        alone.append(np.frombuffer(pcm16(gen._decode(result.codes)), "<i2"))
        lm_s, audio_decode_s = lm_s + t1 - t0, audio_decode_s + time.perf_counter() - t1
    total = sum(a.size for a in alone) / 24000
    print(f"{len(requests)} requests, {total:.1f} s of audio; without a server, one by one: decode steps {lm_s:.1f} s, "
          f"audio decoding {audio_decode_s:.1f} s: {total / (lm_s + audio_decode_s):.2f} s of audio per s")  # fmt: skip
    batcher = ContinuousBatcher(gen.model, args.rows, settings(args.rows).max_tokens, max_queue=len(whole))
    t0 = time.perf_counter()
    jobs = [
        batcher.submit(gen.request(b["input"], seed=b["seed"], max_new_tokens=b["max_new_tokens"]))
        for b in whole
    ]
    batcher.run_until_idle()
    batched_lm_s = time.perf_counter() - t0
    same = all(
        np.array_equal(np.frombuffer(pcm16(gen._decode(j.result.codes)), "<i2"), a)
        for j, a in zip(jobs, alone, strict=True)
    )
    print(f"the same decode steps all at once through a ContinuousBatcher ({args.rows} rows, no server, no audio): "
          f"{batched_lm_s:.1f} s, {lm_s / batched_lm_s:.2f}x the steps one by one; same audio: {same}")  # fmt: skip

    problems = 0

    def run_phase(url: str, name: str, clients: int, stream: bool) -> float:
        """One phase against the server at `url`; its throughput (seconds of audio per wall second)."""
        nonlocal problems
        result = phase(url, streamed if stream else whole, clients, args.phase_limit)
        audio_s, firsts, wrong = check(result, alone)
        rate = audio_s / result["wall_s"]
        ttfa = np.percentile(firsts, [50, 95]) if firsts else [float("nan")] * 2
        print(f"{name:<22} {'streamed' if stream else 'whole   '} N={clients:<2}: {result['wall_s']:6.1f} s, "
              f"{rate:5.2f} s of audio per s, first audio p50 {ttfa[0]:.2f} s p95 {ttfa[1]:.2f} s, "
              f"{len(firsts) - len(wrong)}/{len(requests)} complete and equal to alone")  # fmt: skip
        for line in wrong:
            print(f"  {line}")
        problems += len(wrong)
        return rate

    def overrides(rows: int) -> list[str]:
        return [f"rows={rows}", f"max_new_tokens={args.max_new_tokens}", f"chunk_frames={args.chunk_frames}"]

    n = max(args.clients)
    batching, one_by_one = f"batching ({args.rows} rows)", "one by one (2 rows)"
    with server_process(overrides(args.rows)) as fast, server_process(overrides(2)) as slow:
        for clients in sorted(set(args.clients) - {n}):
            run_phase(fast, batching, clients, True)
        # the N = n phases alternate between the two servers, so that a ratio compares phases measured
        # seconds apart: on a shared machine the speed drifts by tens of percent within minutes
        ratios: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for stream in (True, False):
                ratios[stream].append(
                    run_phase(fast, batching, n, stream) / run_phase(slow, one_by_one, n, stream)
                )
    for stream in (True, False):
        kind = "streamed" if stream else "whole files"
        each = ", ".join(f"{r:.2f}" for r in ratios[stream])
        print(f"speed-up of continuous batching over one by one, {kind}, N={n}: median "
              f"{np.median(ratios[stream]):.2f}x, min {min(ratios[stream]):.2f}x (each pair: {each})")  # fmt: skip
    if problems:
        print(f"{problems} responses incomplete or not equal to the request served alone")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
