"""The /v1/chat/completions and /v1/completions request bodies, with OpenAI's field names and limits.

Fields OpenAI clients send that do not change a local answer (user, metadata, store, penalties
at 0) are accepted and ignored; ones that would need what this server does not do (tools,
n > 1, logprobs, JSON mode) are refused with 400 naming the field, rather than ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from phi3e2e.serve.errors import ApiError

MAX_STOPS = 4  # as OpenAI
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's: a 64-bit integer


def _encodable(text: str) -> str:
    """JSON may carry a lone surrogate (`"\\ud800"`), which no tokenizer can take: 400, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (a lone surrogate at character {e.start})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None

    @field_validator("content")
    @classmethod
    def _content_encodable(cls, content):
        return _encodable(content) if isinstance(content, str) else content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What /v1/chat/completions and /v1/completions share: the answer's length, sampling, stops, streaming."""

    model_config = ConfigDict(extra="allow")

    model: Optional[Text] = None  # the server's default run when left out
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1)
    min_tokens: int = Field(0, ge=0)  # vLLM's extension: the end of turn is held back until then

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop):
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        for text in [stop] if isinstance(stop, str) else stop or []:
            _encodable(text)
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def answer_limit(self) -> Optional[int]:
        return self.max_tokens

    def refuse_unsupported(self) -> None:
        extra = self.model_extra or {}
        if self.answer_limit() is not None and self.min_tokens > self.answer_limit():
            raise ApiError(400, f"min_tokens {self.min_tokens} is more than max_tokens {self.answer_limit()}",
                           param="min_tokens")
        if self.n != 1:
            raise ApiError(400, "n: only one choice per request is supported (n=1)", param="n")
        for name in ("tools", "functions", "logprobs", "top_logprobs"):
            if extra.get(name):
                raise ApiError(400, f"{name}: not supported by this server", param=name)
        if extra.get("tool_choice") not in (None, "none"):
            raise ApiError(400, "tool_choice: not supported by this server", param="tool_choice")
        response_format = extra.get("response_format") or {}
        if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
            raise ApiError(400, "response_format: only text answers are supported", param="response_format")
        for name in ("presence_penalty", "frequency_penalty"):
            if extra.get(name):
                raise ApiError(400, f"{name}: not supported by this server (leave it at 0)", param=name)


class ChatCompletionRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    def answer_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    def turns(self) -> list[tuple[str, str]]:
        return [(ROLES[message.role], message.text()) for message in self.messages]


class CompletionRequest(Sampling):
    """/v1/completions: a prompt in, its continuation out (no chat template). One prompt per request."""

    prompt: Union[Text, list[Text]]
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for this endpoint

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt: one prompt per request is supported (a string, or a list of one)",
                           param="prompt")
        return self.prompt[0]

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        extra = self.model_extra or {}
        for name in ("echo", "suffix", "best_of"):
            if extra.get(name) and not (name == "best_of" and extra[name] == 1):
                raise ApiError(400, f"{name}: not supported by this server", param=name)
