"""Integrations with optional dependencies (``eventbus[otel]``, ``eventbus[prometheus]``)."""
