"""The default serializer: JSON through a preconfigured cattrs converter."""

from __future__ import annotations

import decimal
import json
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from cattrs import transform_error
from cattrs.errors import BaseValidationError
from cattrs.preconf.json import JsonConverter
from cattrs.preconf.json import make_converter as _make_json_converter

T = TypeVar("T")

#: The key that names the concrete class inside a union of message classes.
UNION_TAG = "_type"


def _is_class(tp: Any) -> bool:
    return attrs.has(tp) or (isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"))


def _union_members(tp: Any) -> list[Any]:
    return [arg for arg in typing.get_args(tp) if arg is not type(None)]


def _is_class_union(tp: Any) -> bool:
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    members = _union_members(tp)
    return len(members) > 1 and all(_is_class(m) for m in members)


def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _strict_int(value: Any, _: Any) -> int:
    # Integral strings are accepted because JSON object keys are always strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")


def _strict_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {type(value).__name__} {value!r}")


def make_converter(*, detailed_validation: bool = True) -> JsonConverter:
    """A cattrs converter for messages: cattrs' JSON preset plus the types it lacks.

    On top of cattrs' preset (attrs classes, dataclasses, lists, dicts,
    tuples, sets, Optional, Enum, ``datetime``/``date`` as ISO 8601,
    ``bytes`` as base85) it writes ``Decimal`` and ``UUID`` as strings and
    tags unions of classes with a ``"_type"`` key holding the class name, so
    that two classes with the same fields still come back as the right one.
    Scalars are structured strictly: a number is not silently turned into a
    string, a float is not truncated into an int, ``1`` is not ``True``; a
    message that breaks its schema is dead-lettered instead of handled.
    ``detailed_validation=False`` structures faster but reports errors
    without the path of the field.
    """
    converter = _make_json_converter(detailed_validation=detailed_validation)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_unstructure_hook(decimal.Decimal, str)
    converter.register_structure_hook(decimal.Decimal, lambda value, _: decimal.Decimal(value))
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(value))

    def unstructure_union(tp: Any) -> Callable[[Any], Any]:
        def unstructure(value: Any) -> Any:
            if value is None:
                return None
            data = converter.unstructure(value, type(value))
            data[UNION_TAG] = type(value).__name__
            return data

        return unstructure

    def structure_union(tp: Any) -> Callable[[Any, Any], Any]:
        by_tag = {member.__name__: member for member in _union_members(tp)}
        optional = type(None) in typing.get_args(tp)

        def structure(value: Any, _: Any) -> Any:
            if value is None and optional:
                return None
            if not isinstance(value, dict) or value.get(UNION_TAG) not in by_tag:
                raise ValueError(f"expected an object with {UNION_TAG!r} one of {sorted(by_tag)}, got {value!r}")
            return converter.structure(value, by_tag[value[UNION_TAG]])

        return structure

    converter.register_unstructure_hook_factory(_is_class_union, unstructure_union)
    converter.register_structure_hook_factory(_is_class_union, structure_union)
    return converter


class JsonSerializer:
    """JSON bodies, structured and unstructured by cattrs.

    Pass your own ``converter`` (for instance one from :func:`make_converter`
    with extra hooks) to teach it more types. Encoding is strict JSON: NaN
    and infinities are refused, so that any JSON reader can read the bodies.
    """

    name = "json"
    content_type = "application/json"
    executes_code = False

    def __init__(self, converter: JsonConverter | None = None, *, name: str = "json") -> None:
        self.name = name
        self.converter = converter if converter is not None else make_converter()
        # Decoding runs on a converter without detailed validation (faster); when it
        # fails, the detailed one runs again only to explain the error.
        self._fast = make_converter(detailed_validation=False) if converter is None else self.converter
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
        ).encode
        decoder = json.JSONDecoder()
        self._decode_json = decoder.decode
        self._raw_decode = decoder.raw_decode
        self._unstructure: dict[type[Any], Callable[[Any], Any]] = {}
        self._structure: dict[type[Any], Callable[[Any, Any], Any]] = {}

    def encode(self, message: Any, cls: type[Any]) -> bytes:
        """Unstructure ``message`` with cattrs and dump it as compact UTF-8 JSON."""
        hook = self._unstructure.get(cls)
        if hook is None:
            hook = self._unstructure[cls] = self.converter.get_unstructure_hook(cls)
        return self._encoder(hook(message)).encode()

    def decode(self, data: bytes, cls: type[T]) -> T:
        """Parse ``data`` as JSON and structure it into ``cls``.

        Schema errors are reported as one line per problem, with the path of
        the field (``OrderPlaced.amount_cents``).
        """
        text = data.decode()
        try:
            value, end = self._raw_decode(text)
        except ValueError:
            value, end = self._decode_json(text), len(text)  # leading blanks, or raise the full error
        if end != len(text) and not text[end:].isspace():
            self._decode_json(text)  # raises "Extra data"
        hook = self._structure.get(cls)
        if hook is None:
            hook = self._structure[cls] = self._fast.get_structure_hook(cls)
        try:
            result: T = hook(value, cls)
        except Exception:
            if self._fast is self.converter:
                raise
            try:
                self.converter.structure(value, cls)
            except BaseValidationError as exc:
                raise ValueError("; ".join(transform_error(exc, path=cls.__name__))) from exc
            raise
        return result
