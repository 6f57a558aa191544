"""Pluggable mappings, one module per (source, target) pair."""

from __future__ import annotations

from typing import Any

import msgspec

from migrator.plan import PlanError, explain


def mapping_for(source: str, target: str, options: dict[str, Any]) -> Any:
    if (source, target) == ("damstra", "civica"):
        from mappings.damstra_to_civica import DamstraToCivica, Options
    else:
        raise PlanError(f"no mapping from {source} to {target} yet; supported pairs: damstra → civica")
    try:
        return DamstraToCivica(msgspec.convert(options, Options))
    except msgspec.ValidationError as exc:
        raise PlanError(explain(exc, root=Options, prefix=["mapping"], raw=options)) from None
