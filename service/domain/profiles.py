"""Which profile a request names, and its compiled Activation-RM tensors, read once per version.

A stored version is immutable, so its decoded tensors can be cached for the life of the process.
The cache key includes ``created_at``: a name deleted and created again (by this replica or another
one sharing the database) starts again at version 1 with a new timestamp, so a stale entry is never
served. Per request only the row's metadata is read; the blob is read on a cache miss.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..engines.base import Engine
from ..reward.activation_rm import CompiledARM
from ..store.profiles import ProfileRecord, ProfileStore
from .errors import Conflict, InvalidInput, NotFound
from .profile_spec import ProfileSpec


@dataclass(frozen=True)
class ResolvedProfile:
    spec: ProfileSpec | None = None
    label: str | None = None  # 'name@version', 'inline' or None
    name: str | None = None  # the stored name (metrics label); 'inline' for inline profiles
    compiled: CompiledARM | None = None


NO_PROFILE = ResolvedProfile()


class ProfileResolver:
    def __init__(self, store: ProfileStore, cache_size: int = 64) -> None:
        self.store = store
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int, float], CompiledARM] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, ref: str) -> ProfileRecord:
        """The stored profile ``ref`` (``name`` or ``name@version``), metadata only."""
        try:
            rec = self.store.get_meta(ref)
        except ValueError as exc:
            raise InvalidInput("invalid_profile_ref", str(exc), param="profile") from None
        if rec is None:
            raise NotFound("profile_not_found", f"no profile {ref!r}")
        return rec

    def compiled(self, rec: ProfileRecord) -> CompiledARM | None:
        """The record's decoded tensors (cached per immutable version)."""
        if not rec.has_tensors and rec.tensors is None:
            return None
        key = (rec.name, rec.version, rec.created_at)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return hit
        blob = rec.tensors if rec.tensors is not None else self.store.tensors(rec.name, rec.version)
        if blob is None:  # deleted between the two reads
            raise NotFound("profile_not_found", f"no profile {rec.ref!r}")
        arm = CompiledARM.from_bytes(blob)
        with self._lock:
            self.misses += 1
            self._cache[key] = arm
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return arm

    def resolve(self, profile: str | ProfileSpec | None, engine: Engine | None) -> ResolvedProfile:
        """A request's profile: its spec, its label for reports and metrics, its compiled tensors
        (checked against the served model when one is loaded)."""
        if profile is None:
            return NO_PROFILE
        if isinstance(profile, ProfileSpec):
            if profile.activation_rm is not None:
                raise InvalidInput("invalid_request", "inline profiles cannot carry activation_rm examples: "
                                   "POST /profiles compiles them, then refer to the profile by name",
                                   param="profile")
            return ResolvedProfile(profile, "inline", "inline")
        rec = self.lookup(profile)
        compiled = self.compiled(rec)
        if compiled is not None and engine is not None:
            try:
                compiled.check_engine(engine)
            except ValueError as exc:
                raise Conflict("profile_incompatible", str(exc)) from None
        return ResolvedProfile(ProfileSpec.model_validate(rec.spec), rec.ref, rec.name, compiled)
