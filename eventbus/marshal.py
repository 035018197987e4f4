"""Turning message objects into envelopes and envelopes back into objects."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from eventbus.codecs import Serializer, executes_code
from eventbus.envelope import STANDARD_HEADERS, Envelope, new_message_id
from eventbus.errors import ConfigurationError, DeclarationError, DecodeError, SerializationError
from eventbus.registry import Registry
from eventbus.specs import MessageSpec, message_spec

PICKLE_HINT = (
    "it executes code while decoding; pass Bus(allow_pickle=True) only if every producer is trusted, "
    "or use the 'json' serializer"
)


@attrs.frozen
class TypeCodec:
    """A message type with the serializer it uses."""

    spec: MessageSpec
    serializer: Serializer
    unsafe: bool


class Marshaller:
    """Encodes messages into envelopes and decodes envelopes for one bus."""

    def __init__(
        self,
        registry: Registry,
        *,
        default_serializer: str,
        allow_pickle: bool,
        extra_types: Iterable[type[Any]] = (),
    ) -> None:
        self._registry = registry
        self._default = default_serializer
        self._allow_pickle = allow_pickle
        self._serializers = registry.serializers()
        self._by_content_type = {s.content_type: s for s in self._serializers.values()}
        self._unsafe = frozenset(name for name, s in self._serializers.items() if executes_code(s))
        self._by_class: dict[type[Any], TypeCodec] = {}
        self._by_manifest: dict[str, type[Any]] = {}
        registry.get_serializer(default_serializer)
        specs = [*registry.messages(), *filter(None, map(message_spec, extra_types))]
        for spec in specs:
            known = self._by_manifest.get(spec.manifest)
            if known is not None and known is not spec.cls:
                raise DeclarationError(
                    f"manifest {spec.manifest!r} names both {known.__module__}.{known.__qualname__} and "
                    f"{spec.cls.__module__}.{spec.cls.__qualname__}; give one of them another name= or version="
                )
            self._by_manifest[spec.manifest] = spec.cls
            self.codec(spec.cls)

    def codec(self, cls: type[Any]) -> TypeCodec:
        """The codec of message type ``cls`` (raises if ``cls`` is not declared)."""
        codec = self._by_class.get(cls)
        if codec is not None:
            return codec
        spec = message_spec(cls)
        if spec is None:
            raise DeclarationError(
                f"{cls.__module__}.{cls.__qualname__} is not a message type; declare it with @message(topic=...)"
            )
        name = self._registry.serializer_name(cls, self._default)
        try:
            serializer = self._serializers[name]
        except KeyError:
            known = ", ".join(sorted(self._serializers))
            raise ConfigurationError(
                f"{cls.__qualname__} uses serializer {name!r}, which is not registered (known: {known}); "
                "register it with registry.add_serializer() before building the Bus"
            ) from None
        codec = self._by_class[cls] = TypeCodec(spec, serializer, executes_code(serializer))
        self._by_manifest.setdefault(spec.manifest, cls)
        return codec

    def check_decodable(self, cls: type[Any], handler: str) -> None:
        """Fail fast when a handled type could never be decoded by this bus."""
        codec = self.codec(cls)
        if codec.unsafe and not self._allow_pickle:
            raise ConfigurationError(
                f"{handler} handles {cls.__qualname__}, which uses the {codec.serializer.name!r} serializer: "
                + PICKLE_HINT
            )

    def type_for(self, manifest: str) -> type[Any] | None:
        """The message class for ``manifest``, if this bus knows it."""
        return self._by_manifest.get(manifest)

    def encode(
        self,
        message: Any,
        *,
        parent: Envelope | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
    ) -> tuple[str, Envelope]:
        """Return ``(topic, envelope)`` for ``message``."""
        codec = self._by_class.get(type(message)) or self.codec(type(message))
        spec, serializer = codec.spec, codec.serializer
        if codec.unsafe and not self._allow_pickle:
            raise ConfigurationError(f"cannot publish {spec.cls.__qualname__} with {serializer.name!r}: " + PICKLE_HINT)
        try:
            body = serializer.encode(message, spec.cls)
        except Exception as exc:
            raise SerializationError(
                f"cannot encode {spec.cls.__qualname__} with serializer {serializer.name!r}: {exc}"
            ) from exc
        message_id = new_message_id()
        if parent is not None:
            correlation_id = parent.correlation_id
        # Positional arguments: this runs once per published message.
        envelope = Envelope(
            body,
            message_id,
            spec.manifest,
            serializer.content_type,
            serializer.name,
            correlation_id or message_id,
            None if parent is None else parent.message_id,
            time.time(),
            1,
            None if spec.group_by is None else str(getattr(message, spec.group_by)),
            _user_headers(headers) if headers else {},
        )
        return spec.topic, envelope

    def decode(self, envelope: Envelope, cls: type[Any]) -> Any:
        """The message inside ``envelope``, as a ``cls``; raises :class:`DecodeError`."""
        serializer = self._serializer_for(envelope, cls)
        if serializer.name in self._unsafe and not self._allow_pickle:
            raise DecodeError("unsafe-serializer", f"refusing to decode {serializer.name!r}: " + PICKLE_HINT)
        try:
            return serializer.decode(envelope.body, cls)
        except Exception as exc:  # any failure of a serializer means the body is poison
            raise DecodeError("undecodable", f"{serializer.name} could not decode a {cls.__qualname__}: {exc}") from exc

    def _serializer_for(self, envelope: Envelope, cls: type[Any]) -> Serializer:
        if envelope.serializer:
            serializer = self._serializers.get(envelope.serializer)
            if serializer is None:
                raise DecodeError("unknown-serializer", f"no serializer named {envelope.serializer!r}")
            return serializer
        if envelope.content_type:
            content_type = envelope.content_type.split(";", 1)[0].strip().lower()
            serializer = self._by_content_type.get(content_type)
            if serializer is None:
                raise DecodeError("unknown-content-type", f"no serializer reads {envelope.content_type!r}")
            return serializer
        return self.codec(cls).serializer


def _user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    checked = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"headers must map str to str, got {key!r}: {value!r}")
        if key in STANDARD_HEADERS:
            raise ValueError(f"header {key!r} is set by eventbus; pick another name")
        checked[key] = value
    return checked
