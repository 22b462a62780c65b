"""The paired scheduler under preemption and chunked prefill, with a simulated model runner.

Needs vLLM importable (the GPU host's environment; skipped in CI, where vLLM is not installed).
The runner is simulated the way vLLM's own scheduler tests do it: a request samples when its
scheduled chunk reaches its last known token; paired rows sampling in the same step get the same
token (what ``PairedLinearAlignment`` forces), a lone paired row gets a *different* token — which
the scheduler must veto. A tiny KV cache forces preemptions; a small token budget forces chunked
prefills of different lengths.
"""

from __future__ import annotations

import random

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from service.engines.vllm.scheduler import PairedScheduler  # noqa: E402

BLOCK = 16
EOS = 2


def make_scheduler(num_blocks: int, budget: int, model_dir: str) -> PairedScheduler:
    model = ModelConfig(model=model_dir, dtype="float32", max_model_len=512, skip_tokenizer_init=True)
    sched = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=budget, max_model_len=512,
                            enable_chunked_prefill=True, async_scheduling=False,
                            is_encoder_decoder=False)
    cache = CacheConfig(block_size=BLOCK, gpu_memory_utilization=0.9, cache_dtype="auto",
                        enable_prefix_caching=True)
    cfg = VllmConfig(scheduler_config=sched, model_config=model, cache_config=cache, device_config=DeviceConfig("cpu"),
                     additional_config={"alignserve_strict_pairs": True})
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1,
                                                      dtype=torch.float32))])
    cache.num_gpu_blocks = num_blocks
    return PairedScheduler(vllm_config=cfg, kv_cache_config=kv, log_stats=True, block_size=BLOCK,
                           structured_output_manager=StructuredOutputManager(cfg))


def run(scheduler: PairedScheduler, requests: list[Request], rng: random.Random) -> dict[str, list[int]]:
    for r in requests:
        scheduler.add_request(r)
    outputs: dict[str, list[int]] = {r.request_id: [] for r in requests}
    steps = 0
    while scheduler.has_requests():
        steps += 1
        assert steps < 20000, "no progress"
        so = scheduler.schedule()
        ids = list(so.num_scheduled_tokens)
        sampling = {rid: scheduler.requests[rid].num_computed_tokens >= scheduler.requests[rid].num_tokens
                    for rid in ids}
        tokens: dict[str, list[int]] = {}
        shared = rng.randrange(10, 1000)
        for rid in ids:
            if not sampling[rid]:
                tokens[rid] = []
                continue
            mate = scheduler.pairs.partner(rid)
            together = mate is not None and sampling.get(mate, False)
            tok = shared if together else rng.randrange(1000, 2000)  # a lone row's token is garbage
            if together and rng.random() < 0.02:
                tok = EOS
            tokens[rid] = [tok]
        # both members of a pair must get the same (possibly EOS) token in the same step
        for rid in ids:
            mate = scheduler.pairs.partner(rid)
            if mate in tokens and tokens[rid] and tokens[mate]:
                tokens[mate] = list(tokens[rid])
        out = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                sampled_token_ids=[tokens[r] for r in ids])
        engine_out = scheduler.update_from_output(so, out)
        for eco in engine_out.values():
            for o in eco.outputs:
                outputs[o.request_id].extend(o.new_token_ids)
    return outputs


def test_pairs_stay_in_lock_step_under_preemption_and_chunking(tiny_model_dir: object) -> None:
    init_none_hash(sha256)
    rng = random.Random(0)
    scheduler = make_scheduler(num_blocks=48, budget=96, model_dir=str(tiny_model_dir))
    hasher = get_request_block_hasher(BLOCK, sha256)
    reqs: list[Request] = []
    for i in range(24):
        plain = [rng.randrange(3, 500) for _ in range(rng.randrange(8, 100))]
        principle = plain[:4] + [rng.randrange(3, 500) for _ in range(rng.randrange(5, 40))] + plain[4:]
        max_tokens = rng.randrange(4, 90)
        for role, prompt in (("plain", plain), ("principle", principle)):
            sp = SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                extra_args={"alignserve": {"pair": f"p{i}", "role": role}})
            sp.update_from_generation_config({}, EOS)
            reqs.append(Request(f"p{i}-{role}", prompt, sp, None, block_hasher=hasher))
        if i % 3 == 0:  # unpaired traffic in the same batches
            sp = SamplingParams(max_tokens=rng.randrange(4, 60), temperature=0.0)
            reqs.append(Request(f"solo{i}", [rng.randrange(3, 500) for _ in range(40)], sp, None, block_hasher=hasher))
    outputs = run(scheduler, reqs, rng)
    for i in range(24):
        a, b = outputs[f"p{i}-plain"], outputs[f"p{i}-principle"]
        assert a == b and a, f"pair {i} diverged: {a} vs {b}"
        assert all(t < 1000 for t in a), "a lone row's token was committed"
    assert scheduler.pairs.vetoes > 0  # lone samples happened and were discarded
    assert scheduler.pair_checks > 0
    preempted = sum(r.num_preemptions for r in reqs)
    assert preempted > 0, "the KV cache was meant to force preemptions"
