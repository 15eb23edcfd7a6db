"""Request and response bodies of the OpenAI-compatible API: validation in, plain dicts out. No I/O.

Requests are pydantic models that accept (and ignore) fields this worker does not know, as most
OpenAI-compatible servers do, but refuse with a 400 naming the parameter every known one it cannot
honour (``n`` > 1, tools, logprobs, penalties, non-text content, ...) instead of silently answering
something else. Defaults are OpenAI's: ``temperature`` 1, ``top_p`` 1; ``max_tokens`` defaults to
256 for chat (the worker's default answer length) and 16 for completions, as in OpenAI's API.

Responses carry GearKV's per-turn figures in an extension field ``"gearkv"`` (and, in OpenAI's own
field, ``usage.prompt_tokens_details.cached_tokens`` = tokens whose KV was reused).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from gearkv.worker.engine import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, MAX_STOPS, SamplingParams
from gearkv.worker.openai_api.errors import ApiError
from gearkv.worker.sessions import TurnStats
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "finish_reason",
    "gearkv_figures",
    "parse_request",
    "usage",
]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TextPart(_Body):
    type: str
    text: str | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            raise ApiError.bad_request(
                f"messages[{index}].content is required (tool calls are not supported)",
                f"messages[{index}].content",
            )
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise ApiError.bad_request(
                    f"messages[{index}].content[{j}]: only text parts are supported, not {part.type!r}",
                    f"messages[{index}].content[{j}].type",
                )
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """What both endpoints share."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def _unsupported(self) -> None:
        if self.n not in (None, 1):
            raise ApiError.bad_request("only n=1 is supported", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ApiError.bad_request(f"{name} is not supported (only 0)", name)
        if self.logit_bias:
            raise ApiError.bad_request("logit_bias is not supported", "logit_bias")

    def sampling(self, max_new_tokens: int) -> SamplingParams:
        """The engine's parameters (OpenAI's defaults where the request says nothing).

        Raises:
            ApiError: 400 naming the parameter out of range.
        """
        self._unsupported()
        if max_new_tokens > MAX_NEW_TOKENS:
            raise ApiError.bad_request(f"max_tokens must be at most {MAX_NEW_TOKENS}", "max_tokens")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOPS:
            raise ApiError.bad_request(f"stop allows at most {MAX_STOPS} strings", "stop")
        # The engine seeds from its ``seed`` (0 = a random one): any integer maps to a fixed nonzero one.
        seed = 0 if self.seed is None else self.seed % (2**64 - 1) + 1
        try:
            return SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=1.0 if self.temperature is None else float(self.temperature),
                top_p=1.0 if self.top_p is None else float(self.top_p),
                stop=stop,
                seed=seed,
            )
        except ValueError as exc:  # e.g. an empty stop string
            raise ApiError.bad_request(str(exc).removeprefix("params."), "stop") from exc

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def params(self) -> SamplingParams:
        if self.logprobs or self.top_logprobs:
            raise ApiError.bad_request("logprobs are not supported", "logprobs")
        if self.tools:
            raise ApiError.bad_request("tools are not supported", "tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ApiError.bad_request("only response_format type 'text' is supported", "response_format")
        limit = self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS
        return self.sampling(limit)

    def chat_messages(self) -> list[dict[str, str]]:
        """``[{role, content}]`` for the chat template (``developer`` is a system message)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
            for i, m in enumerate(self.messages)
        ]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    def params(self) -> SamplingParams:
        if self.echo:
            raise ApiError.bad_request("echo is not supported", "echo")
        if self.suffix:
            raise ApiError.bad_request("suffix is not supported", "suffix")
        if self.logprobs:
            raise ApiError.bad_request("logprobs are not supported", "logprobs")
        if self.best_of not in (None, 1):
            raise ApiError.bad_request("only best_of=1 is supported", "best_of")
        return self.sampling(self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)

    def single_prompt(self) -> str | list[int]:
        """The one prompt: text or token ids (a list of one is accepted; batches are not)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise ApiError.bad_request("only one prompt per request is supported", "prompt")
            p = p[0]
        if not p:
            raise ApiError.bad_request("prompt must not be empty", "prompt")
        return p  # type: ignore[return-value]


def parse_request(model: type[_Sampling], data: Any) -> Any:
    """Validate a decoded JSON body; a 400 naming the first bad field otherwise."""
    if not isinstance(data, dict):
        raise ApiError.bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = _param(tuple(err.get("loc", ())))
        raise ApiError.bad_request(f"{where or 'body'}: {err.get('msg', 'invalid')}", where or None) from None


def _param(loc: tuple[Any, ...]) -> str:
    """``messages[2].content`` from pydantic's error location (its union-branch tags dropped)."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not any(mark in str(p) for mark in ("[", "function-", "-")) and str(p) not in _TYPE_TAGS:
            out += f".{p}" if out else str(p)
    return out


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


# -- responses --------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(engine_reason: str) -> str:
    """OpenAI's finish_reason for the engine's (eos and stop strings are both "stop")."""
    return _FINISH.get(engine_reason, "stop")


def gearkv_figures(stats: TurnStats | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``"gearkv"`` extension: where the prompt's KV came from and what it cost."""
    s = stats or TurnStats()
    figures: dict[str, Any] = {
        "tokens_reused": s.tokens_reused,
        "tokens_prefilled": s.tokens_prefilled,
        "prompt_tokens": s.prompt_tokens,
        "outcome": s.outcome,
        "reason": s.reason,
        "source": s.source,
        "ttft_s": round(s.ttft_s, 6),
        "pull_s": round(s.pull_s, 6),
        "prefill_s": round(s.prefill_s, 6),
        "bytes_pulled": s.bytes_pulled,
        "codec": s.codec,
    }
    figures.update(extra or {})
    return figures


def usage(stats: TurnStats | None) -> dict[str, Any]:
    s = stats or TurnStats()
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.tokens_generated,
        "total_tokens": s.prompt_tokens + s.tokens_generated,
        "prompt_tokens_details": {"cached_tokens": s.tokens_reused},
    }


def chat_completion(
    rid: str, model: str, text: str, reason: str, stats: TurnStats | None, figures: dict[str, Any], fp: str
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fp,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason(reason),
            }
        ],
        "usage": usage(stats),
        "gearkv": figures,
    }


def chat_chunk(
    rid: str, model: str, created: int, fp: str, delta: dict[str, Any], reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fp,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }


def completion(
    rid: str, model: str, text: str, reason: str, stats: TurnStats | None, figures: dict[str, Any], fp: str
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fp,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}],
        "usage": usage(stats),
        "gearkv": figures,
    }


def completion_chunk(
    rid: str, model: str, created: int, fp: str, text: str, reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fp,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
    }
