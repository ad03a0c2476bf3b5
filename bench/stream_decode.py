"""What decoding a stream chunk by chunk costs against decoding it at once, on the CPU.

    python bench/stream_decode.py [--frames 100] [--repeats 5] [--threads 1] [--real] [--streams 48]

Random codes, decoded by `tokenizer.decode` (one shot) and by a `StreamingDecoder` pushed in pieces: the
server's schedule (10, 20, 40, ... frames up to 50, the rest with `last`), 5 frames and 1 frame a push. The
two are alternated and each keeps its median (the CPU is shared); printed: milliseconds, the ratio to the
one-shot decode measured beside it, and the largest difference between the streamed and one-shot samples.
Then, as a server meets them, `--streams` sequences of as many lengths (random, 30-200 frames), each in the
server's schedule against the one-shot decode of each: the repeated sequence above lets oneDNN build each
convolution's kernel once, a server's traffic makes it build one for every new shape (`bucket` in
higgslab/tokenizer/streaming.py). The embedded mini's tokenizer by default; `--real`: the real geometry
(1024 decoder channels), random weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def schedule(name: str, frames: int) -> list[int]:
    """Push sizes that add up to `frames`."""
    if name == "server":
        sizes, size = [], 10
        while sum(sizes) + size < frames:
            sizes, size = sizes + [size], min(2 * size, 50)
        return sizes + [frames - sum(sizes)]
    step = int(name)
    return [step] * (frames // step) + ([frames % step] if frames % step else [])


def streamed(tok, codes: torch.Tensor, sizes: list[int]) -> np.ndarray:
    decoder, parts, at = tok.streaming_decoder(), [], 0
    for i, n in enumerate(sizes):
        parts.append(decoder.push(codes[:, at : at + n], last=i == len(sizes) - 1))
        at += n
    return np.concatenate(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--real", action="store_true", help="the real geometry with random weights")
    p.add_argument("--streams", type=int, default=48, help="of as many lengths (0: none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.real:
        from higgslab.tokenizer.codec import AudioTokenizer
        from higgslab.tokenizer.model import CodecConfig, HiggsAudioCodec

        tok = AudioTokenizer(HiggsAudioCodec(CodecConfig(hubert=None)))
    else:
        import higgslab
        from higgslab.embedded import resolve_paths

        tok = higgslab.load_tokenizer(resolve_paths(None, None)[1])
    codes = torch.randint(
        0, tok.codebook_size, (tok.num_codebooks, args.frames), generator=torch.Generator().manual_seed(0)
    )
    print(f"{tok}; {args.frames} frames, torch threads {torch.get_num_threads()}")
    full = tok.decode(codes)
    for name in ("server", "5", "1"):
        sizes = schedule(name, args.frames)
        times: dict[str, list[float]] = {"one shot": [], "streamed": []}
        for _ in range(args.repeats):
            for label in times:
                t0 = time.perf_counter()
                out = tok.decode(codes) if label == "one shot" else streamed(tok, codes, sizes)
                times[label].append(time.perf_counter() - t0)
        one, chunked = (1e3 * np.median(times[k]) for k in ("one shot", "streamed"))
        label = "the server's" if name == "server" else f"{name} frame{'s' if name != '1' else ''} a push"
        print(f"{label:<18} ({len(sizes):>3} pushes): streamed {chunked:7.1f} ms, one shot {one:6.1f} ms, "
              f"{chunked / one:5.2f}x; max |streamed - one shot| {np.abs(out - full).max():.1e}")  # fmt: skip
    if args.streams:
        varied(tok, args.streams, args.repeats)


def varied(tok, n: int, repeats: int) -> None:
    """`n` random sequences of distinct random lengths: streamed in the server's schedule, and at once."""
    g = torch.Generator().manual_seed(1)
    lengths = (30 + torch.randperm(171, generator=g)[:n]).tolist()
    seqs = [torch.randint(0, tok.codebook_size, (tok.num_codebooks, k), generator=g) for k in lengths]
    times: dict[str, list[float]] = {"one shot": [], "streamed": []}
    for _ in range(max(1, repeats // 2)):
        for label in times:
            t0 = time.perf_counter()
            for c in seqs:
                tok.decode(c) if label == "one shot" else streamed(tok, c, schedule("server", c.shape[1]))
            times[label].append(time.perf_counter() - t0)
    one, chunked = (np.median(times[k]) for k in ("one shot", "streamed"))
    print(f"{n} sequences of {n} lengths ({sum(lengths)} frames), the server's schedule: streamed {chunked:.2f} s, "
          f"one shot {one:.2f} s, {chunked / one:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
