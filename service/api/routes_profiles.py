"""``/profiles``: create (new version), read, list, delete — stored in the SQL profile store —
and ``/jobs``: the background compilation of profiles with Activation-RM examples."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..domain.errors import Conflict, InvalidInput, NotFound, Overloaded, TooLarge
from ..domain.generation import rejected
from ..engines.base import RequestRejected
from ..jobs.runner import COMPILE_KIND, examples_from_spec
from ..reward.activation_rm import longest_zero_shot_query
from ..reward.judge import rubric_for
from ..runtime import Runtime
from ..store.jobs import JobQueueFull, JobRecord
from ..store.profiles import ProfileConflict, ProfileRecord, parse_ref
from .auth import require
from .deps import get_runtime
from .schemas import CompiledInfo, ErrorResponse, JobOut, ProfileCreate, ProfileOut, ProfileSpec

router = APIRouter(tags=["profiles"], responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})


def to_out(rt: Runtime, rec: ProfileRecord) -> ProfileOut:
    compiled = rt.profiles.compiled(rec)
    info = None
    if compiled is not None:
        i = compiled.info
        info = CompiledInfo(heads=compiled.heads, steer_heads=compiled.steering_heads, format=compiled.format,
                            model=i.get("model", ""),
                            examples=i.get("examples", 0),
                            zero_shot_accuracy=i.get("zero_shot_accuracy", 0.0),
                            patched_accuracy=i.get("patched_accuracy", 0.0),
                            objective=i.get("objective", "likelihood"),  # profiles compiled before the option
                            zero_shot_pair_accuracy=i.get("zero_shot_pair_accuracy"),
                            patched_pair_accuracy=i.get("patched_pair_accuracy"), compile_s=i.get("compile_s", 0.0))
    return ProfileOut(name=rec.name, version=rec.version, ref=rec.ref, created_at=rec.created_at,
                      spec=ProfileSpec.model_validate(rec.spec), compiled=info)


def job_out(job: JobRecord) -> JobOut:
    return JobOut(id=job.id, kind=job.kind, profile=job.profile_name, status=job.status,  # type: ignore[arg-type]
                  phase=job.phase, done=job.done, total=job.total, error=job.error, profile_ref=job.profile_ref,
                  cancel_requested=job.cancel_requested, attempts=job.attempts, created_at=job.created_at,
                  updated_at=job.updated_at)


def _check_example_lengths(rt: Runtime, spec: ProfileSpec) -> None:
    """Every example must fit the model as a zero-shot judge query (4xx before any work)."""
    assert spec.activation_rm is not None
    engine = rt.require_model().engine
    check_capture = getattr(engine, "check_head_capture", None)  # refuse a compile the model cannot do, now
    if check_capture is not None:
        try:
            check_capture()
        except RequestRejected as exc:
            raise rejected(exc) from None
    rubric = rubric_for(spec.principle, spec.rubric)
    examples = examples_from_spec(spec.activation_rm.model_dump())
    longest = longest_zero_shot_query(examples, rubric, spec.activation_rm.format)
    size = engine.prompt_size(longest, None).plain
    if size + 1 >= engine.max_model_len:
        raise TooLarge("example_too_long", f"the longest example is about {size} tokens as a judge query; "
                       f"the model takes {engine.max_model_len}")


@router.post("/profiles", status_code=201, response_model=ProfileOut, dependencies=[Depends(require("admin"))],
             responses={202: {"model": JobOut, "description": "profile with activation_rm examples: compile job "
                                                               "queued; poll /jobs/{id}"},
                        409: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                        429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def create_profile(body: ProfileCreate, rt: Runtime = Depends(get_runtime)) -> ProfileOut | JSONResponse:
    spec = ProfileSpec.model_validate(body.model_dump(exclude={"name"}))
    if spec.activation_rm is not None:
        _check_example_lengths(rt, spec)
        try:
            job = rt.jobs.create(COMPILE_KIND, body.name, spec.model_dump(mode="json"))
        except JobQueueFull as exc:
            raise Overloaded("too_many_jobs", f"{exc}; retry later", retry_after=30) from None
        if rt.runner is not None:
            rt.runner.wake()
        return JSONResponse(job_out(job).model_dump(mode="json"), status_code=202,
                            headers={"Location": f"/jobs/{job.id}"})
    try:
        rec = rt.store.create(body.name, spec.model_dump(mode="json"))
    except ProfileConflict as exc:
        raise Conflict("profile_conflict", str(exc)) from None
    return to_out(rt, rec)


@router.get("/profiles", response_model=list[ProfileOut], dependencies=[Depends(require("read"))])
def list_profiles(rt: Runtime = Depends(get_runtime)) -> list[ProfileOut]:
    return [to_out(rt, r) for r in rt.store.list_latest()]


@router.get("/profiles/{ref}", response_model=ProfileOut, dependencies=[Depends(require("read"))])
def get_profile(ref: str, rt: Runtime = Depends(get_runtime)) -> ProfileOut:
    return to_out(rt, rt.profiles.lookup(ref))


@router.get("/profiles/{name}/versions", response_model=list[ProfileOut],
            dependencies=[Depends(require("read"))])
def list_versions(name: str, rt: Runtime = Depends(get_runtime)) -> list[ProfileOut]:
    try:
        recs = rt.store.versions(name)
    except ValueError as exc:
        raise InvalidInput("invalid_profile_ref", str(exc)) from None
    if not recs:
        raise NotFound("profile_not_found", f"no profile {name!r}")
    return [to_out(rt, r) for r in recs]


@router.delete("/profiles/{name}", status_code=204, dependencies=[Depends(require("admin"))])
def delete_profile(name: str, rt: Runtime = Depends(get_runtime)) -> Response:
    try:
        parse_ref(name)
        if "@" in name:
            raise ValueError("delete takes a profile name; all of its versions are removed")
        n = rt.store.delete(name)
    except ValueError as exc:
        raise InvalidInput("invalid_profile_ref", str(exc)) from None
    if n == 0:
        raise NotFound("profile_not_found", f"no profile {name!r}")
    return Response(status_code=204)


def _job(rt: Runtime, job_id: str) -> JobRecord:
    job = rt.jobs.get(job_id)
    if job is None:
        raise NotFound("job_not_found", f"no job {job_id!r}")
    return job


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"], dependencies=[Depends(require("read"))])
async def list_jobs(rt: Runtime = Depends(get_runtime)) -> list[JobOut]:
    return [job_out(j) for j in await run_in_threadpool(rt.jobs.recent)]


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], dependencies=[Depends(require("read"))])
async def get_job(job_id: str, rt: Runtime = Depends(get_runtime)) -> JobOut:
    return job_out(await run_in_threadpool(_job, rt, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], dependencies=[Depends(require("admin"))])
async def cancel_job(job_id: str, rt: Runtime = Depends(get_runtime)) -> JobOut:
    """Cancel a queued job at once, or a running one at its next step (poll until 'cancelled')."""
    await run_in_threadpool(_job, rt, job_id)
    job = await run_in_threadpool(rt.jobs.request_cancel, job_id)
    assert job is not None
    return job_out(job)
