"""Pluggable mappings: a module `mappings/<source>_to_<target>.py` per pair with real quirks.

Each module declares `MAPPING` (the class, built from its `Options` Struct) and may declare `DEMO`
(the plan's [streams] and [mapping] tables for `migrator demo`). Pairs are found by their module
names, so a new pair is a new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

import msgspec

from migrator.plan import PlanError, explain


@cache
def pairs() -> dict[tuple[str, str], str]:
    """(source, target) → the module that maps it."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        source, sep, target = info.name.partition("_to_")
        if sep and source and target:
            found[(source, target)] = f"{__name__}.{info.name}"
    return dict(sorted(found.items()))


def pair_module(source: str, target: str) -> Any:
    name = pairs().get((source, target))
    if name is None:
        supported = ", ".join(f"{s} → {t}" for s, t in pairs()) or "none"
        raise PlanError(f"no mapping from {source} to {target} yet; supported pairs: {supported}")
    return importlib.import_module(name)


def mapping_for(source: str, target: str, options: dict[str, Any]) -> Any:
    module = pair_module(source, target)
    try:
        return module.MAPPING(msgspec.convert(options, module.Options))
    except msgspec.ValidationError as exc:
        raise PlanError(explain(exc, root=module.Options, prefix=["mapping"], raw=options)) from None
