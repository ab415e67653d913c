"""The request bodies `aigc serve` accepts, and its errors in OpenAI's shape.

Bodies are validated strictly (a string where a number belongs is an error, not a number), fields
the OpenAI API has and aigc does not implement are refused unless they hold their neutral value
(so a client that sends `presence_penalty: 0` works and one that asks for 0.5 learns it is not
applied), and fields this API does not know are ignored, as OpenAI-compatible servers do.
No torch here: the app validates a request before the model sees it.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed takes
MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """A request that gets an error response: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: Optional[bool] = None


class _Sampled(_Body):
    """What both endpoints take."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    seed: Optional[int] = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: Union[str, list[str], None] = None
    n: Optional[int] = Field(None, ge=1)
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ApiError(400, f"'stop' holds {len(stops)} strings; at most {MAX_STOP_STRINGS} are accepted", "stop", "invalid_value")
        return tuple(s for s in stops if s)

    def refuse_unsupported(self) -> None:
        """400 for an OpenAI option that would change the output and that aigc does not apply."""
        if self.n not in (None, 1):
            raise ApiError(400, f"n={self.n} is not supported: one choice per request; send {self.n} requests "
                                "(concurrent requests are decoded together in one batch)", "n", "unsupported_value")
        for key, value in (self.model_extra or {}).items():
            if key in UNSUPPORTED and value not in UNSUPPORTED[key]:
                raise ApiError(400, f"'{key}' is not supported by aigc serve (got {json.dumps(value)[:60]}); leave it out", key, "unsupported_parameter")


# OpenAI parameters aigc does not implement, with the values that mean "off".
_OFF = (None, False, 0, [], {})
UNSUPPORTED: dict[str, tuple] = {
    "presence_penalty": _OFF, "frequency_penalty": _OFF, "logit_bias": _OFF, "logprobs": _OFF, "top_logprobs": _OFF,
    "echo": _OFF, "best_of": (*_OFF, 1), "suffix": (*_OFF, ""), "tools": _OFF, "functions": _OFF,
    "tool_choice": (*_OFF, "none"), "function_call": (*_OFF, "none"), "response_format": (*_OFF, {"type": "text"}),
}


class CompletionRequest(_Sampled):
    prompt: Union[str, list[str]]

    def the_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, f"'prompt' holds {len(self.prompt)} prompts; send one prompt per request "
                                "(concurrent requests are decoded together in one batch)", "prompt", "unsupported_value")
        return self.prompt[0]


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def as_dict(self) -> dict:
        """{role, content} as chat templates read it; OpenAI's newer `developer` role is the system role."""
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)  # the newer name of max_tokens


def validation_error(errors: list[dict]) -> ApiError:
    """pydantic's errors as the one 400 OpenAI would send: the first field wrong,
    with every reason given for it (a union field lists each alternative)."""
    first = errors[0]
    path = _field_path(first.get("loc", ()))
    if not path:
        return ApiError(400, "the request body must be a JSON object with the request's fields")
    if first.get("type") == "missing":
        return ApiError(400, f"missing required parameter: '{path}'", path, "missing_required_parameter")
    reasons = list(dict.fromkeys(e["msg"] for e in errors if _field_path(e.get("loc", ())) == path))
    code = "invalid_type" if first.get("type", "").endswith(("_type", "_parsing")) else "invalid_value"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {json.dumps(got, ensure_ascii=False)[:60]})"
    return ApiError(400, f"invalid value for '{path}'{shown}: {' or '.join(reasons).lower()}", path, code)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_path(loc: Any) -> str:
    """'messages.0.content' from pydantic's ('messages', 0, 'content', 'str'): the union branch
    names pydantic adds are not part of the field's name."""
    names = []
    for part in loc:
        if isinstance(part, str) and (part.split("[")[0] in _TYPE_TAGS or not part.isidentifier()):
            break
        names.append(str(part))
    return ".".join(names)
