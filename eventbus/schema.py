"""JSON Schema of message classes, as the JSON serializer writes them.

The schema follows what :mod:`eventbus.codecs.json` puts on the wire:
attrs classes and dataclasses are objects (nested classes are referenced by
name), lists, tuples and sets are arrays, ``Enum`` members are their values,
``datetime``/``date`` are ISO 8601 strings, ``Decimal`` and ``UUID`` are
strings, ``bytes`` are base85 strings, and a member of a union of classes
carries a ``"_type"`` key with its class name. Schemas are JSON Schema
draft-07, the dialect AsyncAPI 3.0 payloads use by default.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import decimal
import enum
import inspect
import re
import types
import typing
import uuid
from typing import Any

import attrs

from eventbus.codecs.json import UNION_TAG

DRAFT_07 = "http://json-schema.org/draft-07/schema#"

_ARRAYS = {list, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable}
_SETS = {set, frozenset, collections.abc.Set, collections.abc.MutableSet}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}
_SCALARS: dict[type[Any], dict[str, Any]] = {
    # Order matters: bool before int, datetime before date (subclasses).
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bytes: {"type": "string", "contentEncoding": "base85"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    decimal.Decimal: {"type": "string", "description": "a decimal number, e.g. '12.50'"},
    uuid.UUID: {"type": "string", "format": "uuid"},
}
_KEY = re.compile(r"[^A-Za-z0-9_.-]+")


def is_record(tp: Any) -> bool:
    """Whether ``tp`` is an attrs class or a dataclass (written as a JSON object)."""
    return isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp))


def json_schema(cls: type[Any]) -> dict[str, Any]:
    """A standalone draft-07 JSON Schema of ``cls``, its nested classes under ``definitions``."""
    builder = SchemaBuilder(ref_prefix="#/definitions/")
    root = builder.schema(cls)
    return {"$schema": DRAFT_07, **root, "definitions": builder.definitions}


class SchemaBuilder:
    """Builds schemas that refer to classes by name; ``definitions`` collects the classes.

    ``ref_prefix`` is where the definitions will live in the final document
    (``#/components/schemas/`` in AsyncAPI). Each class gets a key: its name,
    or its module and qualified name when another class already took the name.
    """

    def __init__(self, ref_prefix: str = "#/definitions/", reserved: typing.Iterable[str] = ()) -> None:
        self.ref_prefix = ref_prefix
        self.definitions: dict[str, dict[str, Any]] = {}
        self._keys: dict[type[Any], str] = {}
        self._taken = set(reserved)

    def key(self, cls: type[Any]) -> str:
        """The definitions key of ``cls`` (defining it on first use)."""
        key = self._keys.get(cls)
        if key is None:
            key = self._new_key(cls)
            self._keys[cls] = key
            self.definitions[key] = {}  # placeholder: a class may refer to itself
            self.definitions[key] = self._record(cls)
        return key

    def ref(self, cls: type[Any]) -> dict[str, Any]:
        """A ``$ref`` to the definition of ``cls``."""
        return {"$ref": self.ref_prefix + self.key(cls)}

    def schema(self, tp: Any) -> dict[str, Any]:
        """The schema of a field annotation ``tp``."""
        if tp is Any or tp is object:
            return {}
        if tp is None or tp is type(None):
            return {"type": "null"}
        if isinstance(tp, str):
            return {"description": f"unresolved type annotation {tp!r}"}
        supertype = getattr(tp, "__supertype__", None)  # typing.NewType
        if supertype is not None:
            return self.schema(supertype)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.schema(args[0])
        if origin is typing.Literal:
            return {"enum": [_json_value(arg) for arg in args]}
        if origin in (typing.Union, types.UnionType):
            return self._union(args)
        if origin is not None:
            return self._generic(origin, args)
        if isinstance(tp, type):
            return self._class(tp)
        return {"description": f"no JSON schema for {tp!r}"}

    # -- kinds of types ---------------------------------------------------------

    def _class(self, tp: type[Any]) -> dict[str, Any]:
        if issubclass(tp, enum.Enum):
            return {"title": tp.__name__, "enum": [_json_value(member.value) for member in tp]}
        for scalar, schema in _SCALARS.items():
            if issubclass(tp, scalar):
                return dict(schema)
        if is_record(tp):
            return self.ref(tp)
        if tp in (list, tuple) or tp in _ARRAYS:
            return {"type": "array"}
        if tp in _SETS:
            return {"type": "array", "uniqueItems": True}
        if tp in _MAPPINGS:
            return {"type": "object"}
        return {"description": f"no JSON schema for {tp.__module__}.{tp.__qualname__}"}

    def _generic(self, origin: Any, args: tuple[Any, ...]) -> dict[str, Any]:
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.schema(args[0])}
            if args == ((),):  # tuple[()]
                return {"type": "array", "maxItems": 0}
            items = [self.schema(arg) for arg in args]
            return {"type": "array", "items": items, "minItems": len(items), "maxItems": len(items)}
        if origin in _ARRAYS:
            return {"type": "array", **({"items": self.schema(args[0])} if args else {})}
        if origin in _SETS:
            return {"type": "array", "uniqueItems": True, **({"items": self.schema(args[0])} if args else {})}
        if origin in _MAPPINGS:
            schema: dict[str, Any] = {"type": "object"}
            if args:
                key = self.schema(args[0])
                if key.get("type") == "integer":  # JSON object keys are strings: "1", "-2"
                    schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
                elif "enum" in key:
                    schema["propertyNames"] = {"enum": [str(value) for value in key["enum"]]}
                schema["additionalProperties"] = self.schema(args[1])
            return schema
        return self.schema(origin)

    def _union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        members = [arg for arg in args if arg is not type(None)]
        optional = len(members) < len(args)
        if len(members) > 1 and all(is_record(m) for m in members):
            options = [self._tagged(member) for member in members]
        else:
            options = [self.schema(member) for member in members]
        if optional:
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}

    def _tagged(self, cls: type[Any]) -> dict[str, Any]:
        tag = {"type": "object", "properties": {UNION_TAG: {"const": cls.__name__}}, "required": [UNION_TAG]}
        return {"allOf": [self.ref(cls), tag]}

    def _record(self, cls: type[Any]) -> dict[str, Any]:
        hints = _type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, annotation, default in _fields(cls):
            field = self.schema(hints.get(name, annotation))
            if default is _REQUIRED:
                required.append(name)
            elif default is None or isinstance(default, (str, int, float, bool)):
                field = {**field, "default": default}
            properties[name] = field
        schema: dict[str, Any] = {"type": "object", "title": cls.__name__}
        doc = _docstring(cls)
        if doc:
            schema["description"] = doc
        schema["properties"] = properties
        if required:
            schema["required"] = required
        return schema

    def _new_key(self, cls: type[Any]) -> str:
        for candidate in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
            key = _KEY.sub("_", candidate)
            if key not in self._taken:
                self._taken.add(key)
                return key
        n = 2
        while f"{key}_{n}" in self._taken:
            n += 1
        self._taken.add(f"{key}_{n}")
        return f"{key}_{n}"


_REQUIRED = object()


def _fields(cls: type[Any]) -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of each field; the default is ``_REQUIRED`` or a plain value or ``...``."""
    if attrs.has(cls):
        found = []
        for field in attrs.fields(cls):
            if field.default is attrs.NOTHING:
                default: Any = _REQUIRED if field.init else ...
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                default = ...
            else:
                default = field.default
            found.append((field.name, field.type, default))
        return found
    found = []
    for dc_field in dataclasses.fields(cls):
        if dc_field.default is not dataclasses.MISSING:
            default = dc_field.default
        elif dc_field.default_factory is not dataclasses.MISSING or not dc_field.init:
            default = ...
        else:
            default = _REQUIRED
        found.append((dc_field.name, dc_field.type, default))
    return found


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a forward reference that cannot be resolved: use the raw annotations
        return {}


def _docstring(cls: type[Any]) -> str:
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip():
        return ""
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return ""  # the signature dataclasses write when a class has no docstring
    return inspect.cleandoc(doc)


def _json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
