"""Cost profiles as JSON: parsing with field-naming errors, the JSON form, loading by name.

The model itself (the dataclass and its step-time terms) is ``profile.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sglang_dcp.planner.layer_kinds import LayerKind, aggregate

if TYPE_CHECKING:
    from sglang_dcp.planner.profile import CostProfile

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"

_COST_FIELDS = (
    "attn_us_fixed",
    "attn_us_per_kv_token",
    "attn_us_per_item",
    "exchange_us_fixed",
    "exchange_us_per_item",
    "merge_us_per_part",
    "moe_us_fixed",
    "moe_us_per_token",
    "compute_us_floor",
    "compute_us_per_token",
    "prefill_us_per_token",
    "prefill_us_per_token_sq",
)
# exchange_us_per_item_intranode default: exchange_us_per_item; attn_us_per_request: 0
_OPTIONAL_COST_FIELDS = ("exchange_us_per_item_intranode", "attn_us_per_request")
# with attention_layers: what the layer kinds add to (layer_kinds.aggregate)
_LAYERED = ("attn_us_per_kv_token", "attn_us_per_item", "attn_us_per_request",
            "exchange_us_per_item", "exchange_us_per_item_intranode", "exchange_us_fixed")
# optional top-level fields (None when absent)
_OPTIONAL_TOP = ("pd_gbps_per_rank",)
_NOT_TOP = {*_COST_FIELDS, *_OPTIONAL_COST_FIELDS, *_OPTIONAL_TOP, "provenance",
            "attention_layers", "layer_base"}


def profile_from_dict(cls: type, data: Mapping[str, Any], *, source: str) -> "CostProfile":
    """``CostProfile.from_dict``: validate the JSON form and build the profile."""
    if not isinstance(data, Mapping):
        raise ValueError(f"cost profile {source}: top level must be a JSON object")
    costs = data.get("costs_us")
    if not isinstance(costs, Mapping):
        raise ValueError(f"cost profile {source}: missing or non-object field 'costs_us'")
    layered = data.get("attention_layers")
    need = [f for f in _COST_FIELDS if not (layered and f == "attn_us_per_kv_token")]
    missing = [f for f in need if f not in costs]
    if missing:
        names = ", ".join(f"costs_us.{f}" for f in missing)
        raise ValueError(f"cost profile {source}: missing field(s) {names}")
    unknown = sorted(set(costs) - set(_COST_FIELDS) - set(_OPTIONAL_COST_FIELDS))
    if unknown:
        names = ", ".join(f"costs_us.{f}" for f in unknown)
        raise ValueError(f"cost profile {source}: unknown field(s) {names}")
    top = [f.name for f in fields(cls) if f.name not in _NOT_TOP
           and not (layered and f.name == "kv_bytes_per_token")]
    missing = [f for f in top if f not in data]
    if missing:
        raise ValueError(f"cost profile {source}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(top) - set(_OPTIONAL_TOP)
                     - {"costs_us", "provenance", "$comment", "attention_layers"})
    if unknown:
        raise ValueError(f"cost profile {source}: unknown field(s) {', '.join(unknown)}")
    prov = data.get("provenance")
    if not isinstance(prov, Mapping) or not prov.get("source"):
        raise ValueError(f"cost profile {source}: field 'provenance.source' is required")
    kwargs = {f: data[f] for f in (*top, *_OPTIONAL_TOP) if f in data}
    kwargs.update({f: costs[f] for f in (*_COST_FIELDS, *_OPTIONAL_COST_FIELDS) if f in costs})
    try:
        if layered is not None:
            if not isinstance(layered, Sequence) or isinstance(layered, (str, bytes)):
                raise ValueError("field 'attention_layers' must be a list")
            if "attn_us_per_kv_token" in costs:
                raise ValueError("with 'attention_layers', 'attn_us_per_kv_token' comes "
                                 "from the layer kinds: remove it from costs_us")
            kinds = tuple(LayerKind.from_dict(k) for k in layered)
            base = {f: costs[f] for f in _LAYERED if f in costs}
            kwargs.update(aggregate(kinds, base), attention_layers=kinds, layer_base=base)
        return cls(**kwargs, provenance=prov)
    except ValueError as e:
        raise ValueError(f"{e} (in {source})") from None


def profile_to_dict(p: "CostProfile") -> dict[str, Any]:
    """``CostProfile.to_dict``: the JSON form (``profile_from_dict`` reads it back)."""
    out: dict[str, Any] = {f.name: getattr(p, f.name) for f in fields(p)
                           if f.name not in _NOT_TOP}
    out["costs_us"] = {f: getattr(p, f) for f in (*_COST_FIELDS, *_OPTIONAL_COST_FIELDS)}
    if p.attention_layers:  # the JSON form: kind-independent parts plus the kinds
        del out["kv_bytes_per_token"]
        for f in _LAYERED:
            out["costs_us"].pop(f)
        out["costs_us"].update(p.layer_base)
        out["attention_layers"] = [k.to_dict() for k in p.attention_layers]
    out.update({f: getattr(p, f) for f in _OPTIONAL_TOP if getattr(p, f) is not None})
    out["provenance"] = dict(p.provenance)
    return out


def available_profiles() -> list[str]:
    """Names of the profiles shipped in ``sglang_dcp/profiles``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str | os.PathLike) -> "CostProfile":
    """Load a shipped profile by name (``"deepseek-v3-h200"``) or any profile JSON by path."""
    s = os.fspath(name_or_path)
    path = Path(s)
    if not (s.endswith(".json") or os.sep in s or path.is_file()):
        path = PROFILE_DIR / f"{s}.json"
        if not path.is_file():
            raise ValueError(
                f"unknown cost profile {s!r}; shipped profiles: {', '.join(available_profiles())} "
                "(or pass a path to a .json file)"
            )
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"cost profile file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"cost profile {path}: invalid JSON: {e}") from None
    return _profile_cls().from_dict(data, source=str(path))


def _profile_cls() -> type:
    from sglang_dcp.planner.profile import CostProfile  # profile.py imports this module

    return CostProfile
