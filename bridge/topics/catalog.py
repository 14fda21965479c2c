"""The topic catalog (``topics/catalog.toml``): what each topic should look like.

Pure: reads the catalog and the registry, knows nothing of a cluster.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.contracts import Registry
from bridge.errors import ConfigurationError
from bridge.resources import shipped_catalog
from bridge.topics.naming import dlq_topic_name, replay_topic_name, topic_name

__all__ = ["Catalog", "TopicSpec", "catalog_path", "desired_topics"]


def catalog_path(registry: Registry, configured: Path | None = None) -> Path:
    """The topic catalog to use: ``configured`` (``BRIDGE_TOPIC_CATALOG``), else the one the
    contracts name (``topic_catalog`` in ``contracts.toml``), else the shipped one."""
    if configured is not None:
        return configured
    if registry.manifest.topic_catalog is not None:
        return registry.manifest.topic_catalog
    return shipped_catalog()


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    partitions: int | None = Field(default=None, ge=1, le=10_000)
    replication_factor: int | None = Field(default=None, ge=1, le=32)
    min_insync_replicas: int | None = Field(default=None, ge=1, le=32)
    retention_ms: int | None = Field(default=None, ge=-1)
    cleanup_policy: Literal["delete", "compact", "compact,delete"] | None = None


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Settings
    dlq: _Settings
    overrides: dict[str, _Settings] = Field(default_factory=dict)


@dataclass(frozen=True)
class TopicSpec:
    """The wanted shape of one topic."""

    partitions: int
    replication_factor: int
    min_insync_replicas: int
    retention_ms: int
    cleanup_policy: str
    #: The catalog section the replication settings come from (``[defaults]``, ``[dlq]``,
    #: ``[overrides."<type>"]``), for error messages.
    replication_from: str = field(default="[defaults]", compare=False)

    def configs(self) -> dict[str, str]:
        """The topic-level configs bridge manages."""
        return {
            "min.insync.replicas": str(self.min_insync_replicas),
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
        }

    def fitted_to(self, brokers: int) -> TopicSpec:
        """Replication lowered to what a cluster of ``brokers`` can hold."""
        rf = min(self.replication_factor, max(1, brokers))
        return replace(self, replication_factor=rf, min_insync_replicas=min(self.min_insync_replicas, rf))


_BUILTIN = TopicSpec(1, 1, 1, 604_800_000, "delete")


@dataclass(frozen=True)
class Catalog:
    defaults: TopicSpec
    dlq: TopicSpec
    overrides: dict[str, _Settings]
    path: Path

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalog:
        """Read and check a catalog; raise :class:`ConfigurationError` naming the file and field."""
        path = Path(path) if path is not None else shipped_catalog()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"topic catalog {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: invalid TOML: {exc}") from None
        try:
            parsed = _CatalogFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"{path}: {problems}") from None
        defaults = _merge(_BUILTIN, parsed.defaults, "[defaults]")
        catalog = cls(defaults, _merge(defaults, parsed.dlq, "[dlq]"), parsed.overrides, path)
        sections = [catalog.defaults, catalog.dlq, *(catalog.spec_for(name) for name in parsed.overrides)]
        for spec in sections:
            if spec.min_insync_replicas > spec.replication_factor:
                raise ConfigurationError(
                    f"{path}: {spec.replication_from}: min_insync_replicas {spec.min_insync_replicas} is more than "
                    f"replication_factor {spec.replication_factor}: no write with acks=all could ever succeed"
                )
        return catalog

    def spec_for(self, event_type: str) -> TopicSpec:
        override = self.overrides.get(event_type)
        return _merge(self.defaults, override, f'[overrides."{event_type}"]') if override else self.defaults


def desired_topics(catalog: Catalog, registry: Registry, prefix: str) -> dict[str, TopicSpec]:
    """Every topic bridge needs: one per event type, one DLQ per (type, consumer), and one replay
    topic per consumer (``bridge dlq replay`` sends a consumer's dead letters back on it)."""
    unknown = sorted(set(catalog.overrides) - set(registry.events))
    if unknown:
        raise ConfigurationError(f"{catalog.path}: overrides for unregistered event types: {', '.join(unknown)}")
    wanted: dict[str, TopicSpec] = {}
    for name in sorted(registry.events):
        topic = topic_name(prefix, name)
        wanted[topic] = catalog.spec_for(name)
        for consumer in registry.events[name].consumers:
            wanted[dlq_topic_name(topic, consumer)] = catalog.dlq
    for consumer in registry.active_consumers:
        wanted[replay_topic_name(prefix, consumer)] = catalog.dlq
    return wanted


def _merge(base: TopicSpec, settings: _Settings, section: str) -> TopicSpec:
    changes: dict[str, object] = {k: v for k, v in settings.model_dump().items() if v is not None}
    if "replication_factor" in changes or "min_insync_replicas" in changes:
        changes["replication_from"] = section
    return replace(base, **changes)  # type: ignore[arg-type]  # model_dump() erases field types; the pydantic _Settings validated each one
