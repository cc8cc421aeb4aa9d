"""The HTTP API's bodies: the request and response models (they make the OpenAPI schema and
validate every request, on the fast path and in FastAPI alike), and the answers' dicts."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from onnxpack.core.config import LONG_TEXT_MODES
from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.feed import Text

from ..service import Answer, Service
from ..v2 import OUTPUTS, TEXT_INPUT, V2, Call, Tensor, text_type, texts_type

PREDICT = "/predict"
EXPLAIN = "/explain"
INFER = "/v2/models/{name}/infer"
# Any value is taken here and checked by Service.long_text, so a wrong one gets the same line from every
# protocol (gRPC's parameters included); the schema lists the modes.
LongText = Annotated[Any, WithJsonSchema({"anyOf": [{"type": "string", "enum": list(LONG_TEXT_MODES)},
                                                    {"type": "null"}]})]
LONG_TEXT_HELP = ("how a text longer than the model's max_length tokens is read: truncate (its first max_length "
                  "tokens) or chunk (all of it, in windows whose logits are averaged; each answer then has "
                  "`windows`); default: the server's --long-text")


class ErrorBody(BaseModel):
    error: str


class PredictBody(BaseModel):
    """A /predict body; `predict_request` narrows its fields to the server's limits."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] | None = None
    pairs: list[tuple[str, str]] | None = None
    long_text: LongText = Field(None, description=LONG_TEXT_HELP)

    def call(self, service: Service) -> tuple[list[Text], str]:
        """(texts or pairs, long_text), checked against the model and the server's limits."""
        pairs = service.manifest.pairs
        texts = self.rows(pairs)
        long_text = service.long_text(self.long_text)
        service.check_chars(texts, long_text, "pairs" if pairs else "texts")
        return texts, long_text

    def rows(self, pair_model: bool) -> list[Text]:
        """The texts, or the pairs; OnnxpackError unless the body holds one of them, the kind the
        model reads. (The fields' types have checked every text already.)"""
        if (self.texts is None) == (self.pairs is None):
            raise OnnxpackError("send either 'texts' or 'pairs'")
        if pair_model and self.pairs is None:
            raise OnnxpackError("this model reads sentence pairs: send 'pairs', [[first, second], ...]")
        if not pair_model and self.texts is None:
            raise OnnxpackError("this model takes single texts, not pairs: send 'texts'")
        return self.pairs if pair_model else self.texts


def predict_request(service: Service) -> type[PredictBody]:
    """The /predict body under the service's limits: `texts` or `pairs`, and `long_text`."""
    config = service.config
    pairs_type = Annotated[list[tuple[text_type(service), text_type(service)]],
                           Field(min_length=1, max_length=config.max_texts)]
    return create_model(
        "PredictRequest", __base__=PredictBody,
        texts=(texts_type(service) | None,
               Field(None, description="texts to classify; each must contain a non-space character")),
        pairs=(pairs_type | None, Field(None, description="a pair model's (first, second) texts: [[a, b], ...]")))


class Prediction(BaseModel):
    text: str | tuple[str, str] = Field(description="the text, or the pair")
    label: str
    score: float
    scores: dict[str, float]
    labels: list[str] | None = Field(None, description="multi-label models: every label at or over its threshold")
    windows: int | None = Field(None, description="under long_text chunk: the windows of max_length tokens the "
                                                   "text was read in")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction] = Field(description="one per text, in order: what `onnxpack predict` prints")
    truncated: list[int] = Field(description="indices of texts cut to the package's max_length tokens")


class ExplainedWord(BaseModel):
    part: int | None = Field(None, description="pair models: 0 for a word of the first text, 1 of the second")
    word: str = Field(description="a run of characters between spaces")
    start: int = Field(description="its character offsets in the text (in text[part] for a pair)")
    end: int
    attribution: float | None = Field(description="how much the label's score falls without the word; null: "
                                                   "not read (past the window under truncate)")


class Explanation(BaseModel):
    text: str | tuple[str, str]
    label: str = Field(description="the label explained: the predicted one")
    score: float
    predicted: str
    windows: int = Field(description="the windows the text was read in")
    words: list[ExplainedWord]


class ExplainResponse(BaseModel):
    model: str
    explanations: list[Explanation] = Field(description="one per text, in order: what `onnxpack explain --json` "
                                                        "writes")


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="row-major, flat or nested")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferParameters(BaseModel):
    """A V2 request's parameters: `long_text`, and any other (Triton's clients send their own)."""

    model_config = ConfigDict(extra="allow")
    long_text: LongText = Field(None, description=LONG_TEXT_HELP.replace("`windows`", "the `windows` "
                                                                                "parameter"))


class InferRequest(BaseModel):
    id: str | None = None
    parameters: InferParameters | None = None
    inputs: list[InferInput] = Field(min_length=1, description=f"either {TEXT_INPUT!r} (BYTES, shape [batch]) or "
                                                               "the token inputs (INT64, shape [batch, sequence])")
    outputs: list[RequestedOutput] | None = Field(None, description=f"a subset of {', '.join(OUTPUTS)} (default: all)")

    def parse(self, v2: V2) -> Call:
        """The checked call this body asks for (OnnxpackError if it is not one)."""
        tensors = [Tensor(t.name, t.datatype, t.shape, t.data) for t in self.inputs]
        return v2.parse(tensors, None if self.outputs is None else [(o.name, o.parameters) for o in self.outputs],
                        {"long_text": self.parameters.long_text} if self.parameters else None)


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | str]


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    parameters: dict[str, Any] = Field(description="`truncated`: indices of texts cut to max_length tokens; "
                                                   "under long_text chunk, `windows`: the windows each text (or "
                                                   "token row) was read in")
    outputs: list[InferOutput]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that may answer these error codes."""
    meaning = {400: "invalid input", 404: "unknown model", 413: "request body too large",
               503: "loading, or busy: retry after Retry-After seconds"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


def predict_answer(service: Service, texts: list[Text], answer: Answer) -> dict[str, Any]:
    """A PredictResponse."""
    predictions = service.predictor.results(texts, answer.logits)
    if answer.windows is not None:
        for prediction, windows in zip(predictions, answer.windows):
            prediction["windows"] = windows
    return {"model": service.manifest.name, "predictions": predictions, "truncated": answer.truncated}


def infer_answer(service: Service, v2: V2, call: Call, answer: Answer, request_id: str | None) -> dict[str, Any]:
    """An InferResponse."""
    logits = answer.logits
    results = service.predictor.results(call.texts or [None] * len(logits), logits)
    outputs = [{"name": n, "datatype": dt, "shape": shape, "data": data if isinstance(data, list) else data.ravel().tolist()}
               for n, dt, shape, data in v2.answer(logits, results, call)]
    parameters: dict[str, Any] = {"truncated": answer.truncated} if call.texts else {}
    if answer.windows is not None:
        parameters["windows"] = answer.windows
    body = {"model_name": service.manifest.name, "parameters": parameters, "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    return body
