"""``/profiles``: create (new version), read, list, delete — stored in the SQL profile store."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ..store.profiles import ProfileConflict, ProfileRecord, parse_ref
from .auth import require
from .errors import ApiError
from .schemas import ErrorResponse, ProfileCreate, ProfileOut, ProfileSpec
from .services import Services, get_services

router = APIRouter(tags=["profiles"], responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})


def to_out(rec: ProfileRecord) -> ProfileOut:
    return ProfileOut(name=rec.name, version=rec.version, ref=rec.ref, created_at=rec.created_at,
                      spec=ProfileSpec.model_validate(rec.spec))


def lookup(services: Services, ref: str) -> ProfileRecord:
    """The stored profile ``ref`` (``name`` or ``name@version``), or the matching 4xx."""
    try:
        rec = services.store.get(ref)
    except ValueError as exc:
        raise ApiError(422, "invalid_profile_ref", str(exc)) from None
    if rec is None:
        raise ApiError(404, "profile_not_found", f"no profile {ref!r}")
    return rec


def resolve_profile(services: Services, request: Request,
                    profile: str | ProfileSpec | None) -> tuple[ProfileSpec | None, str | None]:
    """A request's profile as a spec plus its label for reports and metrics."""
    if profile is None:
        return None, None
    if isinstance(profile, ProfileSpec):
        request.state.profile_label = "inline"
        return profile, "inline"
    rec = lookup(services, profile)
    request.state.profile_label = rec.name
    return ProfileSpec.model_validate(rec.spec), rec.ref


@router.post("/profiles", status_code=201, response_model=ProfileOut, dependencies=[Depends(require("admin"))])
def create_profile(body: ProfileCreate, services: Services = Depends(get_services)) -> ProfileOut:
    spec = ProfileSpec.model_validate(body.model_dump(exclude={"name"}))
    try:
        rec = services.store.create(body.name, spec.model_dump(mode="json"))
    except ProfileConflict as exc:
        raise ApiError(409, "profile_conflict", str(exc)) from None
    return to_out(rec)


@router.get("/profiles", response_model=list[ProfileOut], dependencies=[Depends(require("read"))])
def list_profiles(services: Services = Depends(get_services)) -> list[ProfileOut]:
    return [to_out(r) for r in services.store.list_latest()]


@router.get("/profiles/{ref}", response_model=ProfileOut, dependencies=[Depends(require("read"))])
def get_profile(ref: str, services: Services = Depends(get_services)) -> ProfileOut:
    return to_out(lookup(services, ref))


@router.get("/profiles/{name}/versions", response_model=list[ProfileOut],
            dependencies=[Depends(require("read"))])
def list_versions(name: str, services: Services = Depends(get_services)) -> list[ProfileOut]:
    try:
        recs = services.store.versions(name)
    except ValueError as exc:
        raise ApiError(422, "invalid_profile_ref", str(exc)) from None
    if not recs:
        raise ApiError(404, "profile_not_found", f"no profile {name!r}")
    return [to_out(r) for r in recs]


@router.delete("/profiles/{name}", status_code=204, dependencies=[Depends(require("admin"))])
def delete_profile(name: str, services: Services = Depends(get_services)) -> Response:
    try:
        parse_ref(name)
        if "@" in name:
            raise ValueError("delete takes a profile name; all of its versions are removed")
        n = services.store.delete(name)
    except ValueError as exc:
        raise ApiError(422, "invalid_profile_ref", str(exc)) from None
    if n == 0:
        raise ApiError(404, "profile_not_found", f"no profile {name!r}")
    return Response(status_code=204)
