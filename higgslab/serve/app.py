"""The speech server: `create_app(generator, batcher, settings)` → a FastAPI app (see `higgslab.serve`).

A request's life: its body is checked (`protocol.SpeechRequest`, then the limits here), `Generator.request`
builds what `Generator.generate` would decode (voices encoded once and cached), and the batcher's thread
decodes it beside the others, handing a stream's frames to its `FrameInbox`, which wakes the request's
coroutine once a chunk's worth waits (a whole file waits for the job to leave). Audio is decoded here, in
worker threads, so the batcher never waits on it: a whole file from all codes at once (`Generator._decode`,
the CLI's path), a stream chunk by chunk with a `StreamingDecoder`. Every job leaves the batcher:
finished, or cancelled when its client goes, its time runs out or its stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from higgslab.embedded import TINY_LABEL
from higgslab.generate.batching import ContinuousBatcher, Job, QueueFull
from higgslab.generate.prompt import check_user_text
from higgslab.serve import audio
from higgslab.serve.frames import FrameInbox
from higgslab.serve.metrics import Metrics
from higgslab.serve.protocol import FORMATS, APIError, SpeechRequest, install_error_handlers

log = logging.getLogger("higgslab.serve")

# OpenAI's built-in voice names: the model's own voice, so that unmodified OpenAI clients work
OPENAI_VOICES = frozenset(
    "alloy ash ballad coral echo fable nova onyx sage shimmer verse marin cedar".split()
)
POLL_S = 0.05  # how often a waiting request looks at its job's end, its deadline and its client


class Timeout(Exception):
    pass


class ClientGone(Exception):
    pass


class SpeechService:
    """One request at a time from the handler's side: check, build, submit, await frames, encode."""

    def __init__(self, generator, batcher: ContinuousBatcher, settings):
        self.gen, self.batcher, self.settings = generator, batcher, settings
        self.metrics = Metrics()
        self.rate = generator.audio_tokenizer.sample_rate
        self._voices: dict[str, list] = {}  # voice name → its encoded references
        # codes → audio in threads of their own, one intra-op thread each: the batcher's thread keeps the
        # other cores (`settings.step_threads`)
        self._audio = ThreadPoolExecutor(
            settings.decode_threads, "higgslab-audio", initializer=torch.set_num_threads, initargs=(1,)
        )
        self._voice_lock = asyncio.Lock()
        s = settings
        if s.model_name:
            self.model_id = s.model_name
        elif s.model_path is not None:
            self.model_id = s.model_path.rstrip("/").rsplit("/", 1)[-1]
        else:
            self.model_id = "higgslab-tiny-random" if generator.label == TINY_LABEL else "higgslab-mini"

    # ---- a request in -----------------------------------------------------------------------------------
    def check(self, body: SpeechRequest) -> None:
        """The limits a body must keep, each refusal one line naming its field."""
        check_user_text(body.input, "input")
        if len(body.input) > self.settings.max_input_chars:
            raise APIError(400, f"input has {len(body.input)} characters; this server takes at most "
                           f"{self.settings.max_input_chars}", param="input")  # fmt: skip
        if body.response_format not in FORMATS:
            raise APIError(400, f"response_format={body.response_format!r}: this server gives "
                           f"{', '.join(FORMATS)}", param="response_format")  # fmt: skip
        if body.speed != 1.0:
            raise APIError(400, f"speed={body.speed}: only 1.0 is supported", param="speed")
        if self.streamed(body) and body.response_format == "flac":
            raise APIError(400, "response_format='flac' cannot be streamed: ask for wav or pcm",
                           param="response_format")  # fmt: skip
        limit = self.settings.max_new_tokens
        if body.max_new_tokens is not None and not 1 <= body.max_new_tokens <= limit:
            raise APIError(400, f"max_new_tokens={body.max_new_tokens}: this server takes 1..{limit}",
                           param="max_new_tokens")  # fmt: skip
        if body.scene is not None:
            check_user_text(body.scene, "scene")

    async def decoding(self, fn, *args):
        """`fn(*args)` (audio decoding, encoding) in the audio threads."""
        return await asyncio.get_running_loop().run_in_executor(self._audio, fn, *args)

    @staticmethod
    def streamed(body: SpeechRequest) -> bool:
        return body.stream or body.stream_format is not None

    async def references(self, voice: str) -> list:
        """The references of `voice`: none for the model's own voice, else a clip of `voices_dir`
        (encoded on first use, then cached)."""
        if voice == "default" or voice in OPENAI_VOICES:
            return []
        async with self._voice_lock:  # one encoding per voice, however many ask at once
            if voice not in self._voices:
                try:
                    refs = await asyncio.to_thread(self.gen.references, voice, self.settings.voices_dir)
                except Exception as e:
                    raise APIError(400, str(e), param="voice") from None
                self._voices[voice] = refs
        return self._voices[voice]

    async def build(self, body: SpeechRequest):
        """The `Request` `Generator.generate` would decode for this body (server defaults where unset)."""
        s = self.settings
        references = await self.references(body.voice_name)

        def pick(value, default):
            return default if value is None else value

        return await asyncio.to_thread(
            self.gen.request,
            body.input,
            scene=body.scene,
            references=references,
            max_new_tokens=pick(body.max_new_tokens, s.max_new_tokens),
            seed=body.seed,
            cfg_scale=pick(body.cfg_scale, s.cfg_scale),
            temperature=pick(body.temperature, s.temperature),
            top_k=pick(body.top_k, s.top_k),
            top_p=pick(body.top_p, s.top_p),
            ras_window=s.ras_window,
            ras_max_repeat=s.ras_max_repeat,
        )

    async def speech(self, body: SpeechRequest, http: Request) -> Response:
        arrived = time.perf_counter()
        self.check(body)
        request = await self.build(body)
        inbox = FrameInbox(asyncio.get_running_loop())
        streamed = self.streamed(body)
        try:  # a whole file needs the codes at the end only: its frames are not handed out on the way
            job = self.batcher.submit(
                request, on_frames=inbox.put if streamed else None, on_leave=inbox.close
            )
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", code="queue_full") from None
        headers = {"x-higgslab-seed": str(request.seed)}
        deadline = arrived + self.settings.timeout_s
        if not streamed:
            return await self.whole(job, inbox, body.response_format, deadline, http, headers)
        sse = body.stream_format == "sse"
        outcome: list[str] = []  # the stream's end, said by `stream`; none: the client went first
        chunks = self.stream(job, inbox, body.response_format, sse, deadline, arrived, outcome)
        media = "text/event-stream" if sse else audio.MEDIA_TYPES[body.response_format]
        return JobStream(chunks, self, job, outcome, media_type=media, headers=headers)

    # ---- frames out -------------------------------------------------------------------------------------
    async def frames(self, inbox: FrameInbox, want: float, deadline: float, http: Request | None = None
                     ) -> tuple[torch.Tensor | None, bool]:  # fmt: skip
        """At least `want` of the job's frames `[n_q, k]`, or once it has left its last ones (or None), and
        whether it has; raises `Timeout` past `deadline`, `ClientGone` when `http`'s client has gone."""
        while True:
            if time.perf_counter() > deadline:
                raise Timeout
            frames, ended = await inbox.get(want, POLL_S)
            if frames is not None or ended:
                return frames, ended
            if http is not None and await http.is_disconnected():
                raise ClientGone

    def leave(self, job: Job, outcome: str) -> None:
        """Cancel `job` if it still runs; count the request's outcome."""
        if not job.done.is_set():
            self.batcher.cancel(job)
        self.metrics.requests[outcome] += 1

    def failure(self, job: Job) -> APIError | None:
        if job.error is not None:
            return APIError(500, f"decoding failed: {job.error}", "server_error")
        if job.result is None:
            return APIError(500, "the request was cancelled", "server_error")
        return None

    async def whole(self, job, inbox, fmt: str, deadline: float, http: Request, headers) -> Response:
        """Wait for all of the job's codes, decode them at once, answer the whole file."""
        try:
            await self.frames(inbox, float("inf"), deadline, http)  # returns when the job has left
        except Timeout:
            raise APIError(504, f"the request did not finish within timeout_s={self.settings.timeout_s}",
                           "timeout_error", code="timeout") from None  # fmt: skip
        except ClientGone:
            self.metrics.requests["disconnected"] += 1
            return Response(status_code=499)
        finally:  # whatever ended the wait (a timeout, the client, the server's shutdown), the job ends
            if not job.done.is_set():
                self.batcher.cancel(job)
        if (error := self.failure(job)) is not None:
            raise error
        body = await self.decoding(
            lambda: audio.whole_file(self.gen._decode(job.result.codes), self.rate, fmt)
        )
        self.metrics.requests[self.ended(job)] += 1
        headers = {**headers, "x-higgslab-finished": str(job.result.finished).lower()}
        return Response(body, media_type=audio.MEDIA_TYPES[fmt], headers=headers)

    def ended(self, job: Job) -> str:
        """The finished job's outcome: "ok", or "unfinished" (and a warning) when it was cut at max_new_tokens
        before its stream closed."""
        if job.result.finished:
            return "ok"
        log.warning("a request ran to max_new_tokens=%d before its stream closed: its audio is cut",
                    job.request.max_new_tokens)  # fmt: skip
        return "unfinished"

    async def stream(self, job, inbox, fmt: str, sse: bool, deadline: float, arrived: float, outcome: list
                     ) -> AsyncIterator[bytes]:  # fmt: skip
        """Audio bytes as frames decode: a WAV header first (wav), then 16-bit PCM after `chunk_frames`
        frames, then in chunks twice as long each time up to `max_chunk_frames` (each decode pays a fixed cost
        per decoder layer: longer chunks once the client has audio cost less); with `sse`, each piece as a
        `speech.audio.delta` event, then `speech.audio.done`. Appends the request's outcome to `outcome`
        when it ends (`JobStream` counts it)."""
        decoder = self.gen.audio_tokenizer.streaming_decoder()
        pack = audio.sse_delta if sse else (lambda data: data)
        if fmt == "wav":
            yield pack(audio.streaming_wav_header(self.rate))
        first, size = True, self.settings.chunk_frames
        try:
            while True:
                rest, ended = await self.frames(inbox, size, deadline)
                if ended:  # `rest`: the last frames (or None), decoded below with the decoder's tail
                    break
                wav = await self.decoding(decoder.push, rest)
                size = min(2 * size, self.settings.max_chunk_frames)
                if wav.size:
                    if first:
                        self.metrics.first_audio_s.append(time.perf_counter() - arrived)
                        first = False
                    yield pack(audio.pcm16(wav))
        except Timeout:
            error = APIError(504, f"the request did not finish within timeout_s={self.settings.timeout_s}",
                             "timeout_error", code="timeout")  # fmt: skip
        else:
            error = self.failure(job)
        if error is not None:
            outcome.append("timeout" if error.status == 504 else "failed")
            if sse:
                yield audio.sse_event(
                    {"type": "error", "error": {"message": error.message, "type": error.type}}
                )
                return
            # a raw stream ends without its last chunk: the client sees it cut, not complete
            raise StreamFailed(error.message)

        def finish() -> bytes:  # the last frames, and the ones the decoder held back for its lookahead
            return audio.pcm16(decoder.push(rest, last=True) if rest is not None else decoder.flush())

        tail = await self.decoding(finish)
        if tail:
            if first:
                self.metrics.first_audio_s.append(time.perf_counter() - arrived)
            yield pack(tail)
        if sse:
            n = job.result.codes.shape[1]
            yield audio.sse_event({"type": "speech.audio.done", "finished": job.result.finished,
                                   "usage": {"input_tokens": len(job.request.ids), "output_tokens": n,
                                             "total_tokens": len(job.request.ids) + n}})  # fmt: skip
        outcome.append(self.ended(job))


class StreamFailed(Exception):
    pass


class JobStream(StreamingResponse):
    """A streamed response whose job is cancelled the moment the response ends for any reason: the
    client gone (the server cancels the sending task), a failure, or the end of the stream."""

    def __init__(self, chunks, service: SpeechService, job: Job, outcome: list[str], **kw):
        super().__init__(chunks, **kw)
        self.service, self.job, self.outcome = service, job, outcome

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except StreamFailed as e:  # the response has started: drop the connection without its last chunk
            log.warning("stream ended early: %s", e)
        finally:
            self.service.leave(self.job, self.outcome[0] if self.outcome else "disconnected")
            await self.body_iterator.aclose()


def create_app(generator, batcher: ContinuousBatcher, settings) -> FastAPI:
    """The FastAPI app serving `generator`'s model through `batcher` (started by the caller) with
    `settings` (`ServeSettings`: limits, defaults, api_key)."""
    service = SpeechService(generator, batcher, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service._audio.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="higgslab speech server", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app, service.metrics.count_status)

    async def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                           code="invalid_api_key")  # fmt: skip

    @app.post("/v1/audio/speech", dependencies=[Depends(authorized)])
    async def speech(body: SpeechRequest, request: Request) -> Response:
        return await service.speech(body, request)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        card = {"id": service.model_id, "object": "model", "created": 0, "owned_by": "higgslab"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Response:
        thread = batcher._thread
        up = thread is not None and thread.is_alive()
        body = {"status": "ok" if up else "batcher stopped", "model": service.model_id, "rows": batcher.rows,
                "busy_rows": batcher.busy_rows, "queued": batcher.queued}  # fmt: skip
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(batcher), media_type="text/plain; version=0.0.4")

    return app


@contextlib.contextmanager
def running(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread (a test, a bench, a notebook) on `host` and `port` (0: a free
    one) until the block ends; yields the server's URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the server on {host}:{port} did not start")
            time.sleep(0.02)
        bound_host, bound_port = sock.getsockname()[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
