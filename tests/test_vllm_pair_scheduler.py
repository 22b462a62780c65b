"""The paired schedulers on vLLM's real ``Scheduler`` / ``AsyncScheduler``, with a simulated model runner.

Needs vLLM importable (skipped in CI, where vLLM is not installed). On a CPU machine, without
downloading a CUDA torch: ``python3 -m venv --system-site-packages V && V/bin/pip install --no-deps
vllm==0.26.0 && V/bin/pip install cbor2 pyzmq aiohttp openai-harmony msgspec pillow pybase64
cachetools uvloop llguidance xgrammar einops``, then ``V/bin/python -m pytest tests/test_vllm_pair_scheduler.py``.
The simulated runner keeps what vLLM's V1 GPU model runner keeps at the level
that decides a step's inputs:

* a persistent batch: a request left out of a step is dropped from it (and from the map of last
  step's samples) and re-added later from the scheduler's ``all_token_ids``;
* under async scheduling, a request that was in the previous step and sampled there gets that
  sample as the input of its last scheduled position (fed on the device); tokens sampled under
  async scheduling are *not* known on the host side (the real runner writes -1 there), so reading
  one from the host copy yields garbage;
* the KV "cache" is the input written at each position; a row's logits depend on the KV of all
  its positions; a row samples only if its chunk reaches its last token (else it is discarded);
* the logits processor: a pair with both rows in the step gets one token on both, computed from
  both rows' contexts — ``aligned(pair, generated prefix)`` if both contexts are the right prompt
  plus the same generated tokens, a *bad* token otherwise; a lone paired row gets a veto token.

The check at the end is the property that matters: every committed token of every request is
``aligned`` on its true prefix — no garbage input, no fed-forward discarded token, no token from
a step where only one member sampled — and the two members' outputs are identical. A tiny KV
cache forces preemptions; a small token budget forces chunked prefills of different lengths;
some members are aborted mid-generation (then the engine aborts the partner too).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from service.engines.vllm.scheduler import AsyncPairedScheduler, PairedScheduler  # noqa: E402

BLOCK = 16
EOS = 2
GARBAGE = -7  # what a host-side read of an async-sampled token gives
BAD = 5000  # base of tokens drawn from a wrong context
VETO = 9000  # base of tokens forced on a lone paired row


def make_scheduler(num_blocks: int, budget: int, model_dir: str, async_mode: bool) -> Any:
    model = ModelConfig(model=model_dir, dtype="float32", max_model_len=512, skip_tokenizer_init=True)
    sched = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=budget, max_model_len=512,
                            enable_chunked_prefill=True, async_scheduling=async_mode,
                            is_encoder_decoder=False)
    cache = CacheConfig(block_size=BLOCK, gpu_memory_utilization=0.9, cache_dtype="auto",
                        enable_prefix_caching=True)
    cfg = VllmConfig(scheduler_config=sched, model_config=model, cache_config=cache, device_config=DeviceConfig("cpu"),
                     additional_config={"alignserve_strict_pairs": True})
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1,
                                                      dtype=torch.float32))])
    cache.num_gpu_blocks = num_blocks
    cls = AsyncPairedScheduler if async_mode else PairedScheduler
    return cls(vllm_config=cfg, kv_cache_config=kv, log_stats=True, block_size=BLOCK,
               structured_output_manager=StructuredOutputManager(cfg))


def aligned(key: str, generated: tuple[int, ...]) -> int:
    """The token a correct step draws after ``generated`` (deterministic, like greedy decoding)."""
    h = random.Random(f"{key}|{generated}").randrange(10**9)
    return EOS if h % 40 == 0 else 10 + h % 990


class SimRunner:
    def __init__(self, async_mode: bool, prompts: dict[str, list[int]], pair_of: dict[str, tuple[str, str]]) -> None:
        self.async_mode = async_mode
        self.prompts = prompts
        self.pair_of = pair_of  # req id -> (pair, role), fixed at submission
        self.state: dict[str, dict[str, Any]] = {}
        self.batch: set[str] = set()
        self.prev: dict[str, int] = {}
        self.fed = 0  # inputs taken from the previous step's samples

    def _host(self, tok: Any) -> int:
        return GARBAGE if isinstance(tok, tuple) else int(tok)

    def step(self, so: Any) -> ModelRunnerOutput:
        for rid in so.finished_req_ids:
            self.state.pop(rid, None)
            self.batch.discard(rid)
            self.prev.pop(rid, None)
        scheduled = so.num_scheduled_tokens
        cd = so.scheduled_cached_reqs
        for rid in list(self.batch):
            if rid not in scheduled or rid in cd.resumed_req_ids:
                self.batch.discard(rid)
                self.prev.pop(rid, None)
        for nr in so.scheduled_new_reqs:
            prompt = list(nr.prompt_token_ids)
            self.state[nr.req_id] = {"out": [], "computed": nr.num_computed_tokens,
                                     "kv": prompt[:nr.num_computed_tokens]}  # prefix-cache hit
            self.batch.add(nr.req_id)
        for i, rid in enumerate(cd.req_ids):
            st = self.state[rid]
            n_out = cd.num_output_tokens[i]
            if n_out < len(st["out"]):
                del st["out"][n_out:]
            if rid not in self.batch:  # re-added from the scheduler's tokens
                if n_out > 0:
                    st["out"] = list(cd.all_token_ids[rid][-n_out:])
                self.batch.add(rid)
            if rid in cd.resumed_req_ids:
                st["kv"] = list(cd.all_token_ids[rid][:cd.num_computed_tokens[i]])
            st["computed"] = cd.num_computed_tokens[i]
        rows: dict[str, dict[str, Any]] = {}
        for rid, n in scheduled.items():
            st = self.state[rid]
            seq = self.prompts[rid] + st["out"]
            c = st["computed"]
            inputs = [self._host(seq[p]) if p < len(seq) else GARBAGE for p in range(c, c + n)]
            if rid in self.prev:
                inputs[-1] = self.prev[rid]
                self.fed += 1
            kv = st["kv"]
            del kv[c:]
            kv.extend(inputs)
            rows[rid] = {"ctx": list(kv), "samples": c + n >= len(seq)}
        tokens: dict[str, int] = {}
        for rid, row in rows.items():
            tag = self.pair_of.get(rid)
            if tag is None:
                tokens[rid] = self._draw(rid, [(rid, row)])
                continue
            mates = [(r, rows[r]) for r in rows if self.pair_of.get(r, ("", ""))[0] == tag[0]]
            if len(mates) == 2:
                tokens[rid] = self._draw(tag[0], mates)
            else:
                tokens[rid] = VETO + (tag[1] == "plain")
        sampled: list[list[int]] = []
        new_prev: dict[str, int] = {}
        for rid in scheduled:
            if not rows[rid]["samples"]:
                sampled.append([])
                continue
            tok = tokens[rid]
            sampled.append([tok])
            self.state[rid]["out"].append(("device", tok) if self.async_mode else tok)
            new_prev[rid] = tok
        if scheduled and self.async_mode:
            self.prev = new_prev
        ids = list(scheduled)
        return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                 sampled_token_ids=sampled)

    def _draw(self, key: str, rows: list[tuple[str, dict[str, Any]]]) -> int:
        gens = []
        for rid, row in rows:
            prompt = self.prompts[rid]
            ctx = row["ctx"]
            if not row["samples"] or ctx[:len(prompt)] != prompt or GARBAGE in ctx:
                return BAD
            gens.append(tuple(ctx[len(prompt):]))
        if any(g != gens[0] for g in gens):
            return BAD + 1
        return aligned(key, gens[0])


def drive(scheduler: Any, runner: SimRunner, requests: list[Request], rng: random.Random,
          async_mode: bool, abort_p: float) -> dict[str, list[int]]:
    for r in requests:
        scheduler.add_request(r)
    outputs: dict[str, list[int]] = {r.request_id: [] for r in requests}
    aborted: set[str] = set()
    queue: deque[tuple[Any, ModelRunnerOutput]] = deque()
    depth = 2 if async_mode else 1
    steps = 0
    while scheduler.has_requests() or queue:
        steps += 1
        assert steps < 40000, "no progress"
        # vLLM's engine core schedules the next step before the previous output arrives when it can,
        # but not always (e.g. nothing new to schedule yet): both orders happen.
        if scheduler.has_requests() and len(queue) < depth and not (queue and rng.random() < 0.25):
            so = scheduler.schedule()
            queue.append((so, runner.step(so)))
            if len(queue) < depth:
                continue
        so, out = queue.popleft()
        for eco in scheduler.update_from_output(so, out).values():
            for o in eco.outputs:
                outputs[o.request_id].extend(o.new_token_ids)
        if abort_p and rng.random() < abort_p:  # a client goes away: one member first, the other a bit later
            live = [rid for rid, req in scheduler.requests.items()
                    if not req.is_finished() and rid in runner.pair_of and rid not in aborted]
            if live:
                rid = rng.choice(live)
                scheduler.finish_requests([rid], RequestStatus.FINISHED_ABORTED)
                aborted.add(rid)
        for rid in list(aborted):
            mate = next((r for r, t in runner.pair_of.items() if t[0] == runner.pair_of[rid][0] and r != rid), None)
            if mate and mate not in aborted and rng.random() < 0.3:
                scheduler.finish_requests([mate], RequestStatus.FINISHED_ABORTED)
                aborted.add(mate)
    return outputs


def build(rng: random.Random, n_pairs: int) -> tuple[list[Request], dict[str, list[int]], dict[str, tuple[str, str]]]:
    hasher = get_request_block_hasher(BLOCK, sha256)
    reqs: list[Request] = []
    prompts: dict[str, list[int]] = {}
    pair_of: dict[str, tuple[str, str]] = {}
    for i in range(n_pairs):
        plain = [rng.randrange(3, 500) for _ in range(rng.randrange(8, 100))]
        principle = plain[:4] + [rng.randrange(3, 500) for _ in range(rng.randrange(5, 40))] + plain[4:]
        if i % 4 == 1:  # same principle stream as the previous pair: prefix-cache hits of different length
            principle = list(prompts[f"p{i - 1}-principle"])
        max_tokens = rng.randrange(4, 90)
        for role, prompt in (("principle", principle), ("plain", plain)):
            sp = SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                extra_args={"alignserve": {"pair": f"p{i}", "role": role}})
            sp.update_from_generation_config({}, EOS)
            rid = f"p{i}-{role}"
            prompts[rid], pair_of[rid] = prompt, (f"p{i}", role)
            reqs.append(Request(rid, prompt, sp, None, block_hasher=hasher))
        if i % 3 == 0:  # unpaired traffic in the same batches
            sp = SamplingParams(max_tokens=rng.randrange(4, 60), temperature=0.0)
            sp.update_from_generation_config({}, EOS)
            rid = f"solo{i}"
            prompts[rid] = [rng.randrange(3, 500) for _ in range(40)]
            reqs.append(Request(rid, prompts[rid], sp, None, block_hasher=hasher))
    return reqs, prompts, pair_of


def check(outputs: dict[str, list[int]], prompts: dict[str, list[int]], pair_of: dict[str, tuple[str, str]],
          aborted_ok: bool) -> None:
    for rid, out in outputs.items():
        key = pair_of[rid][0] if rid in pair_of else rid
        for k, tok in enumerate(out):
            assert tok == aligned(key, tuple(out[:k])), (
                f"{rid}: token {k} = {tok} was not drawn from the pair's true context "
                f"({'bad context' if BAD <= tok < VETO else 'lone row' if tok >= VETO else 'wrong'})")
    pairs = {t[0] for t in pair_of.values()}
    for p in pairs:
        a, b = outputs[f"{p}-plain"], outputs[f"{p}-principle"]
        n = min(len(a), len(b))
        assert a[:n] == b[:n], f"pair {p} diverged"
        if not aborted_ok:
            assert a == b and a, f"pair {p}: {a} vs {b}"


@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_commit_only_aligned_tokens_under_preemption_and_chunking(
        tiny_model_dir: object, async_mode: bool, seed: int) -> None:
    init_none_hash(sha256)
    rng = random.Random(seed)
    scheduler = make_scheduler(num_blocks=48, budget=96, model_dir=str(tiny_model_dir), async_mode=async_mode)
    reqs, prompts, pair_of = build(rng, 24)
    runner = SimRunner(async_mode, prompts, pair_of)
    outputs = drive(scheduler, runner, reqs, rng, async_mode, abort_p=0.0)
    check(outputs, prompts, pair_of, aborted_ok=False)
    assert scheduler.pairs.vetoes > 0  # lone samples happened and were discarded
    assert scheduler.pair_holds > 0 and scheduler.pair_checks > 0
    assert sum(r.num_preemptions for r in reqs) > 0, "the KV cache was meant to force preemptions"
    if async_mode:
        assert runner.fed > 0  # the device-side feeding was exercised


@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
def test_aborting_one_member_never_lets_the_other_commit_alone(tiny_model_dir: object, async_mode: bool) -> None:
    init_none_hash(sha256)
    rng = random.Random(7)
    scheduler = make_scheduler(num_blocks=64, budget=128, model_dir=str(tiny_model_dir), async_mode=async_mode)
    reqs, prompts, pair_of = build(rng, 16)
    runner = SimRunner(async_mode, prompts, pair_of)
    outputs = drive(scheduler, runner, reqs, rng, async_mode, abort_p=0.05)
    check(outputs, prompts, pair_of, aborted_ok=True)
    assert any(r.status == RequestStatus.FINISHED_ABORTED for r in reqs)


def test_unpaired_traffic_is_untouched(tiny_model_dir: object) -> None:
    """No pairs: the async paired scheduler is vLLM's AsyncScheduler step for step."""
    init_none_hash(sha256)
    rng = random.Random(3)
    a = make_scheduler(num_blocks=48, budget=96, model_dir=str(tiny_model_dir), async_mode=True)
    hasher = get_request_block_hasher(BLOCK, sha256)
    reqs = []
    for i in range(6):
        sp = SamplingParams(max_tokens=20, temperature=0.0)
        sp.update_from_generation_config({}, EOS)
        reqs.append(Request(f"s{i}", [rng.randrange(3, 500) for _ in range(30)], sp, None, block_hasher=hasher))
    prompts = {r.request_id: list(r.prompt_token_ids or []) for r in reqs}
    out = drive(a, SimRunner(True, prompts, {}), reqs, rng, True, abort_p=0.0)
    check(out, prompts, {}, aborted_ok=False)
    assert a.pair_holds == 0 and a.pairs.vetoes == 0


@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
def test_halves_of_pairs_cannot_hold_the_kv_cache_hostage(tiny_model_dir: object, async_mode: bool) -> None:
    """A cache so small that admitted halves (their partner preempted or not admitted) can fill it:
    without the re-queueing of stranded members nothing can be admitted any more (no progress)."""
    init_none_hash(sha256)
    rng = random.Random(1092)
    scheduler = make_scheduler(num_blocks=28, budget=64, model_dir=str(tiny_model_dir), async_mode=async_mode)
    reqs, prompts, pair_of = build(rng, 20)
    outputs = drive(scheduler, SimRunner(async_mode, prompts, pair_of), reqs, rng, async_mode, abort_p=0.0)
    check(outputs, prompts, pair_of, aborted_ok=False)
    assert scheduler.pair_requeues > 0


def test_engine_args_pick_the_scheduler_for_the_pairing_mode() -> None:
    from service.engines.vllm.engine import VLLMSettings, engine_args

    sync = engine_args("m", VLLMSettings(pair_async=False))
    assert sync.scheduler_cls.endswith("scheduler.PairedScheduler") and sync.async_scheduling is False
    asyn = engine_args("m", VLLMSettings())  # the default
    assert asyn.scheduler_cls.endswith("scheduler.AsyncPairedScheduler") and asyn.async_scheduling is True
    off = engine_args("m", VLLMSettings(pairing=False))
    assert off.scheduler_cls is None and off.async_scheduling is None and not off.logits_processors
