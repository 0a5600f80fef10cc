"""The ASGI app of `tfkit serve`: routes, limits, JSON errors and Prometheus metrics.

Request and response shapes follow conventions clients already speak: `POST /predict` is
text-embeddings-inference's classifier route (a string gives a list of `{"label", "score"}`,
highest first; a list of strings gives one such list per text); `/v2/...` is the Open
Inference Protocol (KServe, Triton) with one BYTES input `texts` and outputs `probabilities`
(FP32) and `label` (BYTES). Errors are `{"error": ..., "error_type": ...}` (TEI's names;
the v2 protocol asks for `error`); a 500 carries only a request id, the traceback is logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException
from starlette.routing import Match

from tfkit import __version__
from tfkit.serve import Batcher, InferenceError, Model, ServeConfig, info

log = logging.getLogger("tfkit.serve")
ERROR_TYPES = {413: "Validation", 422: "Validation", 400: "Validation", 404: "NotFound", 405: "NotFound",
               429: "Overloaded", 500: "Backend", 503: "Unhealthy"}


class ApiError(Exception):
    """A request the server refuses: status, TEI error type and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tfkit_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_duration = Histogram("tfkit_request_duration_seconds", "HTTP request time, arrival to response",
                                          ["route"], registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue_duration = Histogram("tfkit_queue_duration_seconds", "time a request waited for its batch to start",
                                        registry=r, buckets=(.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.inference_duration = Histogram("tfkit_inference_duration_seconds", "one ONNX Runtime run, tokenization included",
                                            registry=r, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.batch_size = Histogram("tfkit_batch_size", "texts per ONNX Runtime run", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.texts = Counter("tfkit_texts", "texts classified", registry=r)
        self.in_flight = Gauge("tfkit_requests_in_flight", "inference requests admitted and not yet answered", registry=r)


class PredictRequest(BaseModel):
    """TEI's classifier request; `truncate` is accepted and ignored (texts are always cut to the model's max length)."""

    model_config = ConfigDict(extra="ignore")
    inputs: StrictStr | list[StrictStr] = Field(examples=["A warm, funny film."])
    raw_scores: StrictBool = Field(False, description="log-probabilities instead of probabilities (the files output probabilities)")
    truncate: StrictBool | None = None


class Prediction(BaseModel):
    label: str
    score: float


class V2Tensor(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict | None = None
    data: list


class V2Output(BaseModel):
    name: StrictStr
    parameters: dict | None = None


class V2Request(BaseModel):
    id: StrictStr | None = None
    parameters: dict | None = None
    inputs: list[V2Tensor]
    outputs: list[V2Output] | None = None


def error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": ERROR_TYPES.get(status, "Validation"), **extra}, status_code=status)


class Guard:
    """Pure ASGI middleware: a request id, the body-size cap (before anything reads the body), metrics by route and status."""

    def __init__(self, app, max_body_bytes: int, metrics: Metrics, routes=()):
        self.app, self.max_body, self.metrics, self.routes = app, max_body_bytes, metrics, routes

    def route(self, scope) -> str:
        """The route template (`/v2/models/{name}/infer`), also for requests refused before routing; bounded label values."""
        if getattr(scope.get("route"), "path", None):
            return scope["route"].path
        for route in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return route.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await error(413, f"request body over {self.max_body} bytes")(scope, receive, send_with_id)
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send_with_id)
        finally:
            route = self.route(scope)
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - start)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None once it passes the cap (announced by Content-Length or counted)."""
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return None
            if not message.get("more_body"):
                return b"".join(chunks)


def create_app(model: Model, config: ServeConfig, on_ready=None) -> FastAPI:
    """The FastAPI app over `model`; the batcher starts and stops with the app's lifespan."""
    metrics = Metrics()
    about = info(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.batcher = Batcher(model, config.max_batch, config.max_wait_ms, metrics)
        app.state.batcher.start()
        if on_ready:
            on_ready()
        yield
        await app.state.batcher.stop()

    app = FastAPI(title=f"tfkit serve: {model.name}", version=__version__, lifespan=lifespan,
                  description=f"Text classification ({', '.join(model.labels)}) with {model.path.name} on ONNX Runtime.")
    app.add_middleware(Guard, max_body_bytes=config.max_body_bytes, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error(e.status, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return error(422, f"malformed JSON ({first.get('ctx', {}).get('error', 'decode error')})")
        if loc[:1] == ["inputs"] and request.url.path == "/predict":
            return error(422, "inputs: expected a string or a list of strings")
        return error(422, f"{'.'.join(loc) + ': ' if loc else ''}{first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(InferenceError)  # the batch's traceback is already in the log
    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        request_id = request.scope.get("state", {}).get("request_id")
        log.error("request %s failed: %s: %s", request_id, type(e).__name__, e, exc_info=not isinstance(e, InferenceError))
        return error(500, "internal error; the server log has the details", request_id=request_id)

    admitted = [0]  # requests past the limits and not yet answered (the event loop is single-threaded)

    async def classify(request: Request, texts: list[str]) -> np.ndarray:
        """Limits, admission, then the batcher: probabilities [len(texts), classes]."""
        if not texts:
            raise ApiError(422, "inputs is empty: send at least one text")
        if len(texts) > config.max_inputs:
            raise ApiError(413, f"{len(texts)} inputs; at most {config.max_inputs} per request")
        longest = max(len(t) for t in texts)
        if longest > config.max_chars:
            raise ApiError(413, f"a text of {longest} characters; at most {config.max_chars}")
        if admitted[0] >= config.max_concurrent:
            raise ApiError(429, f"server busy: {config.max_concurrent} requests in flight; retry shortly")
        admitted[0] += 1
        metrics.in_flight.inc()
        try:
            probabilities = await request.app.state.batcher.submit(texts)
        finally:
            admitted[0] -= 1
            metrics.in_flight.dec()
        metrics.texts.inc(len(texts))
        return probabilities

    labels = np.array(model.labels, dtype=object)

    @app.post("/predict", response_model=list[Prediction] | list[list[Prediction]],
              summary="TEI-style classification: a text or a list of texts")
    async def predict(request: Request, body: PredictRequest):
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        probabilities = await classify(request, texts)
        scores = np.log(np.maximum(probabilities.astype(np.float64), 1e-45)) if body.raw_scores else probabilities
        order = np.argsort(-probabilities, axis=1, kind="stable")
        out = [[{"label": labels[j], "score": float(row[j])} for j in idx] for row, idx in zip(scores, order)]
        return JSONResponse(out[0] if isinstance(body.inputs, str) else out)

    def check_name(name: str) -> None:
        if name != model.name:
            raise ApiError(404, f"unknown model '{name}' (this server has '{model.name}')")

    @app.post("/v2/models/{name}/infer", summary="Open Inference Protocol v2: BYTES input `texts`")
    async def v2_infer(request: Request, name: str, body: V2Request):
        check_name(name)
        if len(body.inputs) != 1 or body.inputs[0].name != "texts" or body.inputs[0].datatype != "BYTES":
            raise ApiError(422, "expected one input: name 'texts', datatype 'BYTES'")
        tensor = body.inputs[0]
        texts = _flatten(tensor.data)
        if any(not isinstance(t, str) for t in texts):
            raise ApiError(422, "texts: every element of data must be a string")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or int(np.prod(tensor.shape)) != len(texts):
            raise ApiError(422, f"texts: shape {tensor.shape} does not fit {len(texts)} strings (use [n] or [n, 1])")
        wanted = [o.name for o in body.outputs] if body.outputs else ["probabilities", "label"]
        unknown = [n for n in wanted if n not in ("probabilities", "label")]
        if unknown:
            raise ApiError(422, f"unknown output '{unknown[0]}' (outputs: probabilities, label)")
        probabilities = await classify(request, texts)
        tensors = {"probabilities": {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32",
                                     "data": probabilities.ravel().tolist()},
                   "label": {"name": "label", "shape": [len(texts)], "datatype": "BYTES",
                             "data": labels[probabilities.argmax(1)].tolist()}}
        response = {"model_name": model.name, "outputs": [tensors[n] for n in wanted]}
        if body.id is not None:
            response["id"] = body.id
        return JSONResponse(response)

    @app.get("/v2/models/{name}", summary="Open Inference Protocol v2: model metadata")
    async def v2_model(name: str):
        check_name(name)
        return {"name": model.name, "versions": [], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "texts", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}],
                "parameters": {"labels": model.labels, "format": model.key}}

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str):
        check_name(name)
        return {"name": model.name, "ready": True}

    @app.get("/v2")
    async def v2_server():
        return {"name": "tfkit", "version": __version__, "extensions": []}

    @app.get("/v2/health/live")
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready():
        return {"ready": True}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def get_info():
        return about

    @app.get("/metrics")
    async def get_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _flatten(data: list) -> list:
    """v2 tensor data may be flat or nested row-major; flat here."""
    out = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out
