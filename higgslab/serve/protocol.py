"""OpenAI's speech request shape, plus higgslab's extras, and OpenAI's error shape for every refusal.

    POST /v1/audio/speech {"model": "tts-1", "input": "Hello.", "voice": "alloy", "response_format": "wav"}
    4xx/5xx {"error": {"message": "...", "type": "invalid_request_error", "param": "voice", "code": null}}

Unknown fields (OpenAI's `instructions`, and whatever a newer client sends) are accepted and ignored; known
ones are validated. Every error message is one line; a traceback stays in the server's log.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from higgslab.errors import HiggsLabError

log = logging.getLogger("higgslab.serve")

FORMATS = ("wav", "pcm", "flac")  # what a response can be; OpenAI's mp3, opus, aac are refused


class VoiceId(BaseModel):
    """OpenAI's custom-voice form `{"id": "name"}`."""

    id: str


class SpeechRequest(BaseModel):
    """The body of `POST /v1/audio/speech`. None: the server's default (serve.yaml)."""

    model_config = ConfigDict(extra="ignore")

    input: str
    model: str | None = None  # any name: this server serves one model
    voice: str | VoiceId = "default"
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    stream_format: Literal["audio", "sse"] | None = None
    # higgslab's extras
    seed: int | None = Field(None, ge=0, lt=2**63)
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = None
    scene: str | None = None
    max_new_tokens: int | None = None

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class APIError(Exception):
    """A refusal with its HTTP status, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_response(e: APIError) -> JSONResponse:
    message = (e.message.strip().splitlines() or ["error"])[0]
    body = {"error": {"message": message, "type": e.type, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


def validation_error(e: RequestValidationError) -> APIError:
    """pydantic's first complaint about a body, as one line naming the field."""
    first = e.errors()[0]
    if first["type"] == "json_invalid":
        return APIError(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
    param = ".".join(str(x) for x in first["loc"] if x != "body") or None
    return APIError(400, f"{param or 'request body'}: {first['msg']}", param=param)


def install_error_handlers(app: FastAPI, count) -> None:
    """Every failure answers in OpenAI's shape; `count(status)` records each refusal."""

    async def api_error(request: Request, e: APIError) -> JSONResponse:
        count(e.status)
        return error_response(e)

    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return await api_error(request, validation_error(e))

    async def bad_input(request: Request, e: HiggsLabError) -> JSONResponse:
        named = str(e).split(" ", 1)[0].split("=", 1)[0]  # "temperature must be >= 0, got -1"
        param = named if named in SpeechRequest.model_fields else None
        return await api_error(request, APIError(400, str(e), param=param))

    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return await api_error(request, APIError(e.status_code, str(e.detail)))

    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return await api_error(request, APIError(500, f"internal error: {type(e).__name__}", "server_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HiggsLabError, bad_input)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal)
