"""A whole readings message decoded and range-checked in one msgspec call, generated from the
pydantic models of the wire contract and the catalog (which stay the one definition).

Measured on this machine (docs/performance.md, step 10): pydantic's one-call
``validate_json`` of the same messages costs 2.7-2.9 us per reading, this decoder
0.5 us; the ingest spends that on every stored reading. It only ever accepts less
than pydantic does (tests/test_decode_one_call.py checks every answer against the
per-reading pydantic path): what it refuses goes to that path, which names the reason.
"""

import sys
import typing
from typing import Annotated, Any, Literal, Union

import annotated_types
import msgspec

from collector import wire
from devices import KindValues

# Bounds on both sides of every number: pydantic refuses infinities (allow_inf_nan=False),
# msgspec has no such switch, and a JSON number such as 1e308 * 10 would be one.
_FINITE = sys.float_info.max


class UnsupportedModel(TypeError):
    """A model uses a constraint this decoder does not reproduce (a programming error)."""


class Values(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Base of a kind's generated values."""


class FastReading(msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, gc=False):
    """Base of a kind's generated reading; ``kind`` is the tag that picks the kind."""

    device: str
    time: str
    """Parsed by the caller: msgspec rounds a seventh decimal of a second where pydantic cuts it."""
    values: Any
    channel: str | None = None
    clock: Literal["corrected", "unsynced"] | None = None


class FastMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A readings message as ``wire.ReadingsEnvelope`` describes it, its readings typed."""

    schema: Literal[1]
    gateway: str
    site: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    sent_at: str
    readings: Any


def message_decoder(
    models: tuple[type[KindValues], ...],
) -> tuple[msgspec.json.Decoder[FastMessage], tuple[type[FastReading], ...]]:
    """The decoder of messages whose readings are of these kinds' models (one per kind), and
    the reading type it gives for each model, in their order."""
    members = tuple(_reading_struct(model) for model in models)
    readings: Any = Annotated[
        list[Union[members]],  # type: ignore[valid-type]  # noqa: UP007
        msgspec.Meta(min_length=1, max_length=wire.MAX_READINGS_PER_MESSAGE),
    ]
    message = typing.cast(
        type[FastMessage],
        msgspec.defstruct("Message", [("readings", readings)], bases=(FastMessage,), gc=False),
    )
    return msgspec.json.Decoder(message), members


def needs_pydantic(model: type[KindValues]) -> bool:
    """Whether ``model`` has validators of its own (cross-field rules) that only pydantic runs."""
    decorators = model.__pydantic_decorators__
    return bool(decorators.model_validators or decorators.field_validators)


def _reading_struct(model: type[KindValues]) -> type[FastReading]:
    values = msgspec.defstruct(
        f"{model.__name__}Values",
        [_field(name, model) for name in model.model_fields],
        bases=(Values,),
        forbid_unknown_fields=True,
        gc=False,
    )
    reading = msgspec.defstruct(
        f"{model.__name__}Reading",
        [("values", values)],
        bases=(FastReading,),
        tag=model.kind,
        gc=False,
    )
    return typing.cast(type[FastReading], reading)


def _field(name: str, model: type[KindValues]) -> tuple[str, Any] | tuple[str, Any, Any]:
    info = model.model_fields[name]
    args = typing.get_args(info.annotation)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else info.annotation
    if base is float:
        low, high = -_FINITE, _FINITE
        for meta in info.metadata:
            if isinstance(meta, annotated_types.Ge):
                low = float(typing.cast(float, meta.ge))
            elif isinstance(meta, annotated_types.Le):
                high = float(typing.cast(float, meta.le))
            else:
                raise UnsupportedModel(f"{model.__name__}.{name}: constraint {meta!r}")
        kind: Any = Annotated[float, msgspec.Meta(ge=low, le=high)]
    elif typing.get_origin(base) is Literal and not info.metadata:
        if not all(isinstance(v, str) for v in typing.get_args(base)):
            raise UnsupportedModel(f"{model.__name__}.{name}: {base!r}")
        kind = base
    else:
        raise UnsupportedModel(f"{model.__name__}.{name}: {info.annotation!r} {info.metadata!r}")
    if info.is_required():
        if optional:
            raise UnsupportedModel(f"{model.__name__}.{name}: required but may be null")
        return name, kind
    if info.default is not None:
        raise UnsupportedModel(f"{model.__name__}.{name}: default {info.default!r}")
    return name, kind | None, None
