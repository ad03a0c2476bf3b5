"""`GET /metrics`: Prometheus text from the server's request counts and the batcher's `BatcherStats`."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

# a request's outcome by its HTTP status; "ok", "unfinished" (cut at max_new_tokens) and "disconnected" are
# counted where they happen
OUTCOMES = {400: "rejected", 401: "unauthorized", 404: "not_found", 405: "rejected", 429: "queue_full",
            500: "failed", 504: "timeout"}  # fmt: skip
SUMMARY_WINDOW = 1000  # quantiles over the last this many requests


class Metrics:
    """What the server counts itself: requests by outcome, time to the first audio bytes of a stream."""

    def __init__(self):
        self.requests: Counter[str] = Counter()
        self.first_audio_s: deque[float] = deque(maxlen=SUMMARY_WINDOW)

    def count_status(self, status: int) -> None:
        self.requests[OUTCOMES.get(status, "rejected" if status < 500 else "failed")] += 1

    def render(self, batcher) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        st = batcher.stats
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: dict[str, float]) -> None:
            lines.extend([f"# HELP higgslab_{name} {help}", f"# TYPE higgslab_{name} {kind}"])
            lines.extend(f"higgslab_{name}{labels} {value:g}" for labels, value in samples.items())

        def summary(name: str, help: str, values) -> None:
            values = np.asarray(list(values)[-SUMMARY_WINDOW:], dtype=float)
            quantiles = {f'{{quantile="{q}"}}': float(np.quantile(values, q)) if values.size else float("nan")
                         for q in (0.5, 0.95)}  # fmt: skip
            metric(name, "summary", help, {**quantiles, "_sum": values.sum(), "_count": values.size})

        outcomes = ("ok", "unfinished", "disconnected", *sorted(set(OUTCOMES.values())))
        metric("requests_total", "counter", "Requests by outcome.",
               {f'{{outcome="{o}"}}': self.requests[o] for o in outcomes})  # fmt: skip
        metric("queue_length", "gauge", "Requests waiting for rows.", {"": batcher.queued})
        metric("rows", "gauge", "Decode rows.", {"": batcher.rows})
        metric("busy_rows", "gauge", "Decode rows in use.", {"": batcher.busy_rows})
        jobs = {
            "submitted": st.submitted,
            "finished": st.finished,
            "cancelled": st.cancelled,
            "failed": st.failed,
        }
        metric(
            "jobs_total",
            "counter",
            "Batcher jobs by state.",
            {f'{{state="{k}"}}': v for k, v in jobs.items()},
        )
        metric("decode_steps_total", "counter", "Decode steps.", {"": st.steps})
        metric("requests_per_step", "gauge", "Mean requests decoding per step.",
               {"": st.row_steps / st.steps if st.steps else 0.0})  # fmt: skip
        metric("frames_total", "counter", "Audio frames decoded (25 per second of audio).", {"": st.frames})
        metric("decode_seconds_total", "counter", "Seconds spent in decode steps.", {"": st.decode_s})
        metric("frames_per_second", "gauge", "Frames per second of decoding, over the server's life.",
               {"": st.frames / st.decode_s if st.decode_s else 0.0})  # fmt: skip
        summary(
            "time_to_first_frame_seconds", "Submit to the request's first frame of codes.", st.first_audio_s
        )
        summary("time_to_first_audio_seconds", "Streamed requests: arrival to the first audio bytes.",
                self.first_audio_s)  # fmt: skip
        return "\n".join(lines) + "\n"
