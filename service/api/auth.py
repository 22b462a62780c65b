"""Bearer-token authentication and scope checks as FastAPI dependencies.

Off unless ``require_api_key`` is set. 401 = no valid key; 403 = valid key without the scope;
429 = the key's rate limit is spent. ``admin`` implies every scope. Tokens are never logged.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request

from ..runtime import Runtime
from ..store.api_keys import ApiKey
from .deps import get_runtime
from .errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(scope: str) -> Callable[..., ApiKey | None]:
    def check(request: Request, rt: Runtime = Depends(get_runtime)) -> ApiKey | None:
        if not rt.settings.require_api_key:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <key>)",
                           headers=_CHALLENGE)
        key = rt.verifier.verify(token.strip())
        if key is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key", headers=_CHALLENGE)
        if scope not in key.scopes and "admin" not in key.scopes:
            raise ApiError(403, "forbidden", f"this key lacks the '{scope}' scope")
        if rt.limiter is not None:
            allowed, wait = rt.limiter.allow(key.key_id)
            if not allowed:
                raise ApiError(429, "rate_limited", "rate limit for this key exceeded",
                               headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        request.state.key_id = key.key_id
        return key

    return check
