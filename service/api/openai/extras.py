"""The two ways a /v1 request asks for alignment, read into one form.

- ``extra_body={"alignserve": {"profile": ..., "steer_strength": ..., "la": {...}}}``: typed, shown
  in the OpenAPI schema (``AlignserveOptions``).
- ``extra_body={"vllm_xargs": {"alignserve_profile": ..., "alignserve_la_strength": ...}}``: vLLM's
  flat convention (strings and numbers), for clients that already send ``vllm_xargs``.

Both become ``AlignmentOptions``, which the routes put into the domain's ``GenerateCommand``; the
Linear Alignment overrides apply to the resolved profile (stored, versioned or inline) in planning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..schemas import ProfileSpec
from .errors import OpenAIError, invalid, param_of, telling_error
from .schemas import AlignserveOptions, LAOverrides, XargValue

XARG_PREFIX = "alignserve_"
LA_FIELDS = tuple(LAOverrides.model_fields)


@dataclass(frozen=True)
class AlignmentOptions:
    """What a request asks of alignment, whichever form it came in."""

    profile: str | ProfileSpec | None = None
    steer_strength: float | None = None
    la: dict[str, Any] = field(default_factory=dict)  # only the overridden LASettings fields


def alignment_options(alignserve: AlignserveOptions | None, xargs: dict[str, XargValue] | None) -> AlignmentOptions:
    if alignserve is not None and xargs:
        raise invalid("give alignment either in 'alignserve' or in 'vllm_xargs', not both", "vllm_xargs")
    if xargs:
        alignserve = _from_xargs(xargs)
    if alignserve is None:
        return AlignmentOptions()
    la = alignserve.la.model_dump(exclude_none=True) if alignserve.la is not None else {}
    if la and alignserve.profile is None:
        raise invalid("Linear Alignment overrides need a profile (the principle comes from it)", "alignserve.la")
    return AlignmentOptions(alignserve.profile, alignserve.steer_strength, la)


def _from_xargs(xargs: dict[str, XargValue]) -> AlignserveOptions:
    nested: dict[str, Any] = {}
    la: dict[str, Any] = {}
    for key, value in xargs.items():
        name = key.removeprefix(XARG_PREFIX)
        if not key.startswith(XARG_PREFIX):
            raise invalid(f"vllm_xargs key {key!r} is not understood by alignserve (its keys start with "
                          f"'{XARG_PREFIX}')", f"vllm_xargs.{key}")
        if name == "profile":
            nested["profile"] = _profile_xarg(value, key)
        elif name == "steer_strength":
            nested["steer_strength"] = value
        elif name.startswith("la_") and name.removeprefix("la_") in LA_FIELDS:
            la[name.removeprefix("la_")] = value
        else:
            known = ", ".join([f"{XARG_PREFIX}profile", f"{XARG_PREFIX}steer_strength",
                               *(f"{XARG_PREFIX}la_{f}" for f in LA_FIELDS)])
            raise invalid(f"unknown vllm_xargs key {key!r}; known: {known}", f"vllm_xargs.{key}")
    if la:
        nested["la"] = la
    try:
        return AlignserveOptions.model_validate(nested)
    except ValidationError as exc:
        raise _xarg_error(exc) from None


def _profile_xarg(value: XargValue, key: str) -> str | dict[str, Any]:
    if not isinstance(value, str):
        raise invalid(f"{key}: a profile name, 'name@version', or an inline profile as a JSON string",
                      f"vllm_xargs.{key}")
    if not value.lstrip().startswith("{"):
        return value
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as exc:
        raise invalid(f"{key}: the inline profile is not valid JSON ({exc.msg})", f"vllm_xargs.{key}") from None
    if not isinstance(spec, dict):
        raise invalid(f"{key}: the inline profile must be a JSON object", f"vllm_xargs.{key}")
    return spec


def _xarg_error(exc: ValidationError) -> OpenAIError:
    """Name the flat key the client sent, not the nested field it became."""
    first = telling_error(exc.errors())
    loc = [p for p in first.get("loc", ()) if isinstance(p, str | int)]
    if loc[:1] == ["la"] and len(loc) > 1:
        key = f"{XARG_PREFIX}la_{loc[1]}"
    else:
        key = f"{XARG_PREFIX}{loc[0]}" if loc else "vllm_xargs"
    rest = param_of(tuple(loc[1:])) if loc[:1] == ["profile"] else None
    where = f"{key}.{rest}" if rest else key
    return invalid(f"{where}: {first.get('msg', 'invalid value')}", f"vllm_xargs.{key}")

