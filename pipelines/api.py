"""The ingest's HTTP API (FastAPI): health, Prometheus metrics, readings over HTTP, dead letters."""

import base64
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from collector import wire
from devices.catalog import KINDS
from pipelines.api_models import (
    DeadLetterDetail,
    DeadLetterPage,
    DeadLetterSummary,
    Health,
    IngestResult,
    MessageRefusal,
    Problem,
    Readiness,
    ReadingRefusal,
    ReplayReport,
    ReplayRequest,
    ReplayResult,
)
from pipelines.config import ApiToken
from pipelines.dead_letter import REASONS, DeadLetter
from pipelines.metrics import render_metrics
from pipelines.replay import replay
from pipelines.service import IngestService

_bearer = HTTPBearer(auto_error=False, description="A token of api.tokens")


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


_REF = "#/components/schemas/{model}"
_REASON_DOC = (
    f"Only this reason code: {', '.join(REASONS)} (docs/wire-contract.md), or another the "
    "store holds; any other is refused (422)"
)
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No token, or not one of api.tokens"},
    403: {"model": Problem, "description": "The token may not do this"},
}


def build_app(service: IngestService) -> FastAPI:
    """The API of one running ingest worker."""
    app = FastAPI(
        title="ecotel ingest",
        version="1",
        description="Health, metrics, readings over HTTP (the MQTT contract of "
        "docs/wire-contract.md) and the dead-letter store of one ingest worker.",
    )
    tokens = service.settings.api.tokens

    @app.exception_handler(_Refused)
    async def _refused(_: Request, exc: _Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    def token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiToken:
        if credentials is None:
            raise _Refused(401, "a bearer token is needed (api.tokens)")
        given = credentials.credentials.encode()
        for candidate in tokens:
            if secrets.compare_digest(candidate.token.get_secret_value().encode(), given):
                return candidate
        raise _Refused(401, "unknown token")

    def operator(holder: Annotated[ApiToken, Depends(token)]) -> ApiToken:
        if not holder.operator:
            raise _Refused(403, "a gateway's token may only post its readings")
        return holder

    async def known_reason(reason: str | None, where: str) -> None:
        """A reason no letter can have is a mistake (a typo): refused naming the codes, as
        FastAPI refuses a bad parameter (422), rather than answered with nothing found."""
        if reason is None:
            return
        problem = await service.dead_letters.unknown_reason(reason)
        if problem is not None:
            error = {"type": "value_error", "loc": (where, "reason"), "msg": problem}
            raise RequestValidationError([{**error, "input": reason}])

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process and its event loop answer."""
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness, "description": "Broker or InfluxDB not reachable"}},
    )
    async def readyz() -> JSONResponse:
        """Readiness: the MQTT session is up and InfluxDB answers /ping."""
        problems = []
        broker = service.connected.is_set()
        if not broker:
            problems.append("broker: not connected")
        influx_problem = await service.writer.reachable()
        if influx_problem is not None:
            problems.append(f"influxdb: {influx_problem}")
        body = Readiness(
            ready=not problems, broker=broker, influxdb=influx_problem is None, problems=problems
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    )
    async def metrics() -> Response:
        """Counters and gauges in Prometheus text format (names in docs/ingest.md)."""
        return Response(render_metrics(service), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/readings/{site}/{gateway}",
        response_model=IngestResult,
        tags=["readings"],
        responses={
            **_AUTH_ERRORS,
            413: {"model": Problem, "description": "Larger than mqtt.max_message_bytes"},
            422: {"model": MessageRefusal, "description": "Refused whole; dead-lettered"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="ReadingsMessage")}}
                },
            }
        },
    )
    async def post_readings(
        request: Request,
        site: Annotated[str, Path(description="The speaker's site, as in the MQTT topic")],
        gateway: Annotated[str, Path(description="The speaker's gateway, as in the MQTT topic")],
        holder: Annotated[ApiToken, Depends(token)],
    ) -> Any:
        """A readings message, as a gateway would publish it; answered once durable.

        The path plays the MQTT topic's part: the payload must name the same
        site and gateway. 200: stored (some readings may be refused, listed);
        422: the message was refused whole. Either way refusals are in the
        dead-letter store.
        """
        if not holder.operator and (holder.site, holder.gateway) != (site, gateway):
            raise _Refused(403, f"this token speaks for {holder.site}/{holder.gateway} only")
        limit = service.settings.mqtt.max_message_bytes
        payload = bytearray()
        async for chunk in request.stream():
            payload += chunk
            if len(payload) > limit:
                raise _Refused(413, f"more than {limit} bytes (mqtt.max_message_bytes)")
        # A path level that is no name is bad_topic, refused and kept as over MQTT.
        outcome = await service.submit(wire.readings_topic(site, gateway), bytes(payload))
        if outcome.refused is not None:
            refusal = MessageRefusal(reason=outcome.refused.reason, detail=outcome.refused.detail)
            return JSONResponse(refusal.model_dump(), status_code=422)
        return IngestResult(
            stored=outcome.stored,
            refused=[
                ReadingRefusal(index=r.reading_index, reason=r.reason, detail=r.detail)
                for r in outcome.rejections
            ],
        )

    @app.get(
        "/v1/dead-letters",
        response_model=DeadLetterPage,
        tags=["dead letters"],
        responses=_AUTH_ERRORS,
    )
    async def list_dead_letters(
        _: Annotated[ApiToken, Depends(operator)],
        reason: Annotated[str | None, Query(description=_REASON_DOC)] = None,
        after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    ) -> DeadLetterPage:
        """Dead letters oldest first, a page at a time."""
        await known_reason(reason, "query")
        letters = await service.dead_letters.list(reason=reason, limit=limit, after_id=after_id)
        return DeadLetterPage(
            items=[_summary(letter) for letter in letters],
            next_after_id=letters[-1].id if len(letters) == limit else None,
        )

    @app.get(
        "/v1/dead-letters/counts",
        response_model=dict[str, int],
        tags=["dead letters"],
        responses=_AUTH_ERRORS,
    )
    async def count_dead_letters(_: Annotated[ApiToken, Depends(operator)]) -> dict[str, int]:
        """Dead letters per reason."""
        return await service.dead_letters.counts()

    @app.get(
        "/v1/dead-letters/{letter_id}",
        response_model=DeadLetterDetail,
        tags=["dead letters"],
        responses={**_AUTH_ERRORS, 404: {"model": Problem, "description": "No such dead letter"}},
    )
    async def show_dead_letter(
        letter_id: Annotated[int, Path(ge=1, le=2**62)],
        _: Annotated[ApiToken, Depends(operator)],
    ) -> DeadLetterDetail:
        """One dead letter with everything kept: the reading, or the exact payload bytes."""
        letter = await service.dead_letters.get(letter_id)
        if letter is None:
            raise _Refused(404, f"no dead letter {letter_id}")
        return _detail(letter)

    @app.post(
        "/v1/dead-letters/replay",
        response_model=ReplayReport,
        tags=["dead letters"],
        responses=_AUTH_ERRORS,
    )
    async def replay_dead_letters(
        request: ReplayRequest, _: Annotated[ApiToken, Depends(operator)]
    ) -> ReplayReport:
        """Run dead letters through today's checks again (after a fix of config or gateway).

        Stored: removed from the store. Refused again: kept, with the new reason.
        """
        ids = list(request.ids)
        if request.reason is not None:
            await known_reason(request.reason, "body")
            letters = await service.dead_letters.list(reason=request.reason, limit=request.limit)
            ids = [letter.id for letter in letters]
        results = []
        for letter_id in ids:
            done = await replay(service, letter_id)
            results.append(
                ReplayResult(
                    id=done.id,
                    outcome=done.outcome,
                    stored=done.stored,
                    reason=done.reason,
                    detail=done.detail,
                    new_dead_letters=done.new_dead_letters,
                )
            )
        return ReplayReport(results=results)

    _with_readings_schemas(app)
    return app


def _with_readings_schemas(app: FastAPI) -> None:
    """Add the readings message and its reading (the gateway's own models) to the document.

    The endpoint reads the body as raw bytes, to dead-letter it exactly as sent, so
    FastAPI cannot derive these from its signature.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(
                _readings_schemas()
            )
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _readings_schemas() -> dict[str, Any]:
    message = wire.ReadingsMessage.model_json_schema(ref_template=_REF)
    reading = message.pop("$defs")["Reading"]
    message["description"] += " (docs/wire-contract.md)"
    # The gateway's model defaults the version when building; the ingest requires it.
    message["properties"]["schema"].pop("default")
    message["required"].insert(0, "schema")
    # The catalog checks kind and values after parsing; say here what it accepts.
    reading["properties"]["kind"]["enum"] = sorted(KINDS)
    reading["properties"]["values"] = {
        "type": "object",
        "description": "Quantity name -> number, or string for a state (units per kind in "
        "docs/wire-contract.md)",
        "additionalProperties": {"anyOf": [{"type": "number"}, {"type": "string"}]},
    }
    return {"ReadingsMessage": message, "Reading": reading}


def _summary(letter: DeadLetter) -> DeadLetterSummary:
    return DeadLetterSummary(
        id=letter.id,
        received_at=letter.received_at,
        topic=letter.topic,
        reason=letter.reason,
        detail=letter.detail,
        reading_index=letter.reading_index,
        whole_message=letter.payload is not None,
    )


def _detail(letter: DeadLetter) -> DeadLetterDetail:
    text = None
    if letter.payload is not None:
        try:
            text = letter.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return DeadLetterDetail(
        **_summary(letter).model_dump(),
        reading=letter.reading,
        payload_text=text,
        payload_base64=base64.b64encode(letter.payload).decode() if letter.payload else None,
    )
