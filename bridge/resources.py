"""Where the shipped contracts and topic catalog are.

An installed wheel carries them inside the package (``bridge/_shipped/``, read with
:mod:`importlib.resources`); a source checkout has them at the top level of the repository, beside
the package. Nothing else in bridge computes these paths.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bridge.errors import ConfigurationError

__all__ = ["shipped_catalog", "shipped_contracts"]


def _shipped(name: str) -> Path:
    package = resources.files("bridge")
    inside = package / "_shipped" / name
    if inside.is_dir():
        return Path(str(inside))
    beside = Path(str(package)).parent / name  # a source checkout (an editable install)
    if beside.is_dir():
        return beside
    raise ConfigurationError(
        f"the shipped {name}/ is neither in the installed package ({inside}) nor beside it ({beside}): "
        "reinstall bridge from its wheel, or set BRIDGE_CONTRACTS_PATH to your own contracts"
    )


def shipped_contracts() -> Path:
    """The contracts directory bridge ships (the seed registry and its schemas)."""
    return _shipped("contracts")


def shipped_catalog() -> Path:
    """The topic catalog bridge ships (``topics/catalog.toml``)."""
    return _shipped("topics") / "catalog.toml"
