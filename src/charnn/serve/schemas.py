"""The server's request and response bodies, error bodies, and the schemas of its event streams.

Pydantic models that FastAPI checks requests against and documents in /openapi.json. The two
request bodies carry the server's limits and the model's characters, so they are built per
app by `request_models(limits, characters)`.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from charnn.config import ServeLimits
from charnn.serve.engine import FinishReason

MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 50
MAX_SEED = 2**53 - 1  # the largest integer a JavaScript client can send exactly
DEFAULT_NEW_CHARS = 200  # /v1/generate; /v1/completions keeps OpenAI's default of 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
BAN_HELP = "characters never to draw, each one of the model's (not all of them)"
ALLOW_HELP = "the only characters to draw, each one of the model's; not with ban"
MAX_LOGPROBS = 5  # alternatives per character in /v1/completions' logprobs, as OpenAI's legacy API allowed
MAX_REQUIRED = 4  # phrases a request may require
MAX_PHRASE_CHARS = 50
REQUIRE_HELP = "phrases every sample holds (written where the model has not written them when they only just fit)"
WITHIN_HELP = "with require: the phrases appear within the first this many new characters (default: all)"
BEAM_HELP = ("beam search with this many continuations: the most likely text, the same every time (sampling "
             "options and seed do not apply); not with stream")  # fmt: skip
PENALTY_HELP = "with beam: rank continuations by log-probability / characters ** length_penalty (default 0, the sum)"

# The server limit (a ServeLimits field) each request field is checked against, named in its error.
LIMITS = {
    "prompt": "max_prompt_chars",
    "max_new_chars": "max_new_chars",
    "max_tokens": "max_new_chars",
    "num_samples": "max_num_samples",
    "n": "max_num_samples",
    "best_of": "max_num_samples",
    "beam": "max_num_samples",
    "within": "max_new_chars",
}

# OpenAI completions fields this server accepts only with their neutral values.
UNSUPPORTED = {
    "frequency_penalty": "leave it out or send 0",
    "presence_penalty": "leave it out or send 0",
    "suffix": "leave it out or send null",
}

# --- request and response bodies ---------------------------------------------------------


def _integral(value: Any) -> Any:
    # JSON Schema counts 41.0 as an integer; the models are otherwise strict (no "41", no true).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _integer(**constraints):
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]


Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stops = Stop | Annotated[list[Stop], Field(max_length=MAX_STOP_SEQUENCES)] | None
Seed = Annotated[_integer(ge=0, le=MAX_SEED) | None, Field(description="the same seed gives the same text")]


class ErrorDetail(BaseModel):
    field: str | None = Field(description="the request field at fault, when there is one")
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class CopySpan(BaseModel):
    start: int
    length: int
    training_offset: int


class CopyReportBody(BaseModel):
    """What a sample copied from the model's training text (`charnn.scoring.copies.CopyReport`)."""

    characters: int
    min_length: int
    longest: CopySpan | None = None  # none for an empty sample
    share: float = Field(description="of the sample's characters, those in copied spans of at least min_length")
    spans: list[tuple[int, int]] = Field(description="[start, end) of each copied stretch")


class GenerateResponse(BaseModel):
    samples: list[str] = Field(description="the new text of each sample, without the prompt")
    finish_reason: FinishReason = Field(description='"length" if any sample reached max_new_chars, else "stop"')
    finish_reasons: list[FinishReason]
    seed: int | None = Field(None, description="the seed the samples were drawn with (none with beam)")
    model: str
    copies: list[CopyReportBody] | None = Field(None, description="each sample's copy report, when asked for")
    logprobs: list[float] | None = Field(
        None, description="with beam: each text's log-probability, nats, with the stop string that ended it"
    )
    scores: list[float] | None = Field(None, description="with beam: what ranks them (see length_penalty)")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs object, one token per character; natural logs under the model at temperature 1."""

    tokens: list[str] = Field(description="the choice's characters, one each")
    token_logprobs: list[float | None] = Field(description="of each character; null for a text's first character")
    top_logprobs: list[dict[str, float] | None] = Field(description="the model's `logprobs` likeliest characters")
    text_offset: list[int] = Field(description="each character's offset in the prompt followed by the completion")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


def _pattern(characters) -> str:
    """A regular expression (valid in JSON Schema and in Python) for text made of `characters`."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    parts = []
    for c in characters:
        if c in named:
            parts.append(named[c])
        elif c in "\\]^-[":
            parts.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            parts.append(f"\\u{ord(c):04x}")
        else:
            parts.append(c)
    return f"^[{''.join(parts)}]+$"


def _constraint_types(characters) -> tuple:
    """The types of `ban`, `allow`, and `logit_bias`'s keys and values: they name the model's own
    characters and indices, so the schema says exactly what is valid."""
    size = len(characters)
    character = Literal.__getitem__(tuple(characters))
    banned = Annotated[list[character], Field(min_length=1, max_length=max(1, size - 1))]  # never all of them
    allowed = Annotated[list[character], Field(min_length=1, max_length=size)]
    index = Annotated[str, Field(pattern=_index_pattern(size))]
    bias = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]
    return banned, allowed, index, bias


def request_models(limits: ServeLimits, characters) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two request bodies, with the server's limits and the model's characters in their schema."""
    # The pattern documents which characters a prompt may hold; the server checks them itself,
    # so that a mistake gets a 400 that names the unknown characters.
    Prompt = Annotated[
        str,
        Field(min_length=1, max_length=limits.max_prompt_chars, json_schema_extra={"pattern": _pattern(characters)}),
    ]
    Temperature = Annotated[float, Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)]
    TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    TopK = _integer(ge=1)
    Zero = Annotated[float, Field(ge=0, le=0)]
    Banned, Allowed, Index, Bias = _constraint_types(characters)
    # Keys that match no index are invalid: the schema says so, as the server does.
    Biases = Annotated[dict[Index, Bias], Field(json_schema_extra={"additionalProperties": False})]
    Phrase = Annotated[
        str, Field(min_length=1, max_length=MAX_PHRASE_CHARS, json_schema_extra={"pattern": _pattern(characters)})
    ]
    Phrases = Annotated[list[Phrase], Field(min_length=1, max_length=MAX_REQUIRED)]
    Within = _integer(ge=1, le=limits.max_new_chars)
    Beam = _integer(ge=1, le=limits.max_num_samples)
    Penalty = Annotated[float, Field(ge=0, allow_inf_nan=False)]

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_rules("num_samples", limits))
        prompt: Prompt = Field(description="text to continue: characters the model knows")
        max_new_chars: _integer(ge=0, le=limits.max_new_chars) = min(DEFAULT_NEW_CHARS, limits.max_new_chars)
        temperature: Temperature = Field(0.8, description="0 is greedy; higher is more random")
        top_k: TopK | None = None
        top_p: TopP | None = None
        seed: Seed = None
        num_samples: _integer(ge=1, le=limits.max_num_samples) = 1
        stop: Stops = Field(None, description="end a sample before the first of these strings")
        stream: bool = Field(False, description="server-sent events as characters are produced")
        copies: bool = Field(False, description="also report what each sample copied from the training text")
        ban: Banned | None = Field(None, description=BAN_HELP)
        allow: Allowed | None = Field(None, description=ALLOW_HELP)
        require: Phrases | None = Field(None, description=REQUIRE_HELP + "; not with stop or beam")
        within: Within | None = Field(None, description=WITHIN_HELP)
        beam: Beam | None = Field(None, description=BEAM_HELP + "; at least num_samples")
        length_penalty: Penalty | None = Field(None, description=PENALTY_HELP)

    class CompletionRequest(BaseModel):
        """OpenAI's completions request; tokens are characters."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_rules("n", limits, openai=True))
        model: str | None = Field(None, description="accepted and ignored: this server serves one model")
        prompt: Prompt
        max_tokens: _integer(ge=0, le=limits.max_new_chars) | None = COMPLETIONS_DEFAULT_MAX_TOKENS
        temperature: Temperature | None = 1.0
        top_p: TopP | None = 1.0
        top_k: TopK | None = Field(None, description="an extension to OpenAI's API")
        n: _integer(ge=1, le=limits.max_num_samples) | None = 1
        stop: Stops = None
        seed: Seed = None
        stream: bool | None = False
        stream_options: StreamOptions | None = None
        echo: bool | None = Field(
            False, description="put the prompt before each choice's text (with logprobs: the prompt scored too)"
        )
        user: str | None = Field(None, description="accepted and ignored")
        # Sent by some clients with their neutral values; anything else is not supported.
        frequency_penalty: Zero | None = Field(None, description="only 0 is supported")
        presence_penalty: Zero | None = Field(None, description="only 0 is supported")
        logit_bias: Biases | None = Field(
            None,
            description="added to the logits of these characters (keys: vocabulary indices, as /v1/model lists "
            "the vocabulary); -100 bans a character",
        )
        ban: Banned | None = Field(None, description=BAN_HELP + " (an extension to OpenAI's API)")
        allow: Allowed | None = Field(None, description=ALLOW_HELP + " (an extension to OpenAI's API)")
        require: Phrases | None = Field(None, description=REQUIRE_HELP + "; not with stop or beam (an extension)")
        within: Within | None = Field(None, description=WITHIN_HELP + " (an extension)")
        beam: Beam | None = Field(None, description=BEAM_HELP + ", best_of or logit_bias; at least n (an extension)")
        length_penalty: Penalty | None = Field(None, description=PENALTY_HELP + " (an extension)")
        logprobs: _integer(ge=0, le=MAX_LOGPROBS) | None = Field(
            None, description="log-probabilities of each character, with this many alternatives"
        )
        best_of: _integer(ge=1, le=limits.max_num_samples) | None = Field(
            None, description="draw this many (at least n) and return the n likeliest; not with stream"
        )
        suffix: None = Field(None, description="not supported")

    return GenerateRequest, CompletionRequest


def _index_pattern(size: int) -> str:
    """A regular expression for the decimal numbers 0 to size - 1: the model's vocabulary indices."""
    last = str(size - 1)
    if len(last) == 1:
        return f"^[0-{last}]$"
    parts = ["[0-9]", *(f"[1-9][0-9]{{{length - 1}}}" for length in range(2, len(last)))]  # shorter numbers
    for i, digit in enumerate(last):  # as long as `last`: its first i digits, then a smaller one, then any
        low = 1 if i == 0 else 0
        if int(digit) > low:
            parts.append(f"{last[:i]}[{low}-{int(digit) - 1}]" + "[0-9]" * (len(last) - i - 1))
    parts.append(last)
    return "^(?:" + "|".join(parts) + ")$"


def _given(*names: str) -> dict:
    """The condition that each of these fields is sent, and not as null."""
    return {"properties": {name: {"not": {"type": "null"}} for name in names}, "required": list(names)}


def _at_least(fields: tuple[str, ...], count: str, size: int) -> dict:
    """Each of `fields` (null, or an integer) at least `count` (an integer from 1 to `size`): one branch per
    value of `count` (a branch, not a condition, per value: a generator explores them one by one)."""
    at_least = lambda n: {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": n}]}  # noqa: E731
    one = {"properties": {count: {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": 1}]}}}
    branches = [
        {"properties": {count: {"type": "integer", "minimum": n, "maximum": n}} | {f: at_least(n) for f in fields}}
        for n in range(2, size + 1)
    ]
    return {"anyOf": [one, *branches]}


def _rules(count: str, limits: ServeLimits, *, openai: bool = False) -> dict:
    """What JSON Schema can say of fields together, as the server checks it (each a 422 naming the field:
    `Service.sampling`, `charnn.generation.check_options`, and stop, which could end a sample before its
    required phrases): beam not with stream or require, and at least `count` (the samples asked for);
    length_penalty only with beam; within only with require; ban or allow. With `openai`, best_of's too:
    at least n, not above 1 with stream, and not with beam.

    Each condition doubles the branches a generator (schemathesis) explores, so they are the fewest,
    one per field that sets them off; and completions' schema leaves ban-or-allow out, the one too many
    (tests/schemathesis_hooks.py says it instead). At max_num_samples of 8 and more, completions' is
    already past what schemathesis explores.
    """
    null = {"type": "null"}
    streamed = {"properties": {"stream": {"const": True}}, "required": ["stream"]}
    on_stream = {"beam": null} | ({"best_of": {"anyOf": [null, {"const": 1}]}} if openai else {})
    with_beam = {"require": null} | ({"best_of": null} if openai else {})
    rules = [
        {"if": streamed, "then": {"properties": on_stream}},
        {"if": _given("beam"), "then": {"properties": with_beam}},
        {"if": _given("require"), "then": {"properties": {"stop": null}}},
        # "if not sent (or null), then neither is the other": a condition that requires no field is cheaper.
        {"if": {"properties": {"beam": null}}, "then": {"properties": {"length_penalty": null}}},
        {"if": {"properties": {"require": null}}, "then": {"properties": {"within": null}}},
        _at_least(("beam", "best_of") if openai else ("beam",), count, limits.max_num_samples),
    ]
    if not openai:  # one condition too many for completions' schema to stay explorable; the server checks it
        rules.append({"if": _given("ban"), "then": {"properties": {"allow": null}}})
    return {"allOf": rules}


# --- in the OpenAPI document: error responses and event streams ----------------------------

ERRORS = {
    400: {"model": ErrorBody, "description": "characters the model does not know"},
    422: {
        "model": ErrorBody,
        "description": "a field that is missing, of the wrong type or out of range; fields that do not go together "
        "(best_of below n or with stream, beam with stream, require with stop); a required phrase that cannot appear",
    },
    429: {"model": ErrorBody, "description": "too many generation requests in flight (the server's max_streams limit)"},
}


def _events_schema(*data: dict) -> dict:
    """A text/event-stream response: each event's data is one of these JSON objects, or [DONE]."""
    json_data = {"contentMediaType": "application/json", "contentSchema": {"anyOf": list(data)}}
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": {"anyOf": [{"const": "[DONE]"}, json_data]}},
    }
    return {"text/event-stream": {"itemSchema": event}}


_REASON = {"enum": ["stop", "length"]}
_ERROR_EVENT = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}
GENERATE_EVENTS = _events_schema(
    {
        "type": "object",
        "description": "new characters of one sample; its last event has finish_reason",
        "required": ["text", "sample"],
        "properties": {
            "text": {"type": "string"},
            "sample": {"type": "integer", "minimum": 0},
            "finish_reason": _REASON,
        },
    },
    {
        "type": "object",
        "description": "the last event before [DONE]",
        "required": ["finish_reason", "finish_reasons", "seed", "model"],
        "properties": {
            "finish_reason": _REASON,
            "finish_reasons": {"type": "array", "items": _REASON},
            "seed": {"type": "integer"},
            "model": {"type": "string"},
            "copies": {"type": "array", "description": "each sample's copy report, when asked for"},
        },
    },
    _ERROR_EVENT,
)
_CHOICE = {
    "type": "object",
    "required": ["text", "index", "finish_reason"],
    "properties": {
        "text": {"type": "string"},
        "index": {"type": "integer", "minimum": 0},
        "logprobs": {"anyOf": [{"type": "null"}, CompletionLogprobs.model_json_schema()]},
        "finish_reason": {"anyOf": [_REASON, {"type": "null"}]},
    },
}
COMPLETION_EVENTS = _events_schema(
    {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _CHOICE},
            "usage": {"type": "object"},
        },
    },
    _ERROR_EVENT,
)
