"""The pure pair-gating logic (``engines/vllm/pairing``) that makes LA pairs safe under vLLM's async
scheduling: which running requests a step may show vLLM, which scheduled members sampled alone,
and when a vetoed member may be scheduled again. No vLLM needed (``test_vllm_pair_scheduler`` runs
the same logic inside vLLM's real schedulers where vLLM is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings
from service.engines.vllm.engine import VLLMSettings
from service.engines.vllm.pairing import PairBook, PairGate, Row, Veto, lone_steps, plan_step, sample_mismatches


def book(*pairs: str) -> PairBook:
    b = PairBook()
    for p in pairs:
        b.add(f"{p}-p", p, "principle")
        b.add(f"{p}-b", p, "plain")
    return b


def ready(rid: str) -> Row:  # a decode, or the last prompt token: every schedule of it samples
    return Row(rid, 1, True)


def test_partners_are_shown_together_and_next_to_each_other() -> None:
    b = book("A")
    rows = [ready("A-p"), Row("x", 30, True), ready("A-b")]
    plan = plan_step(b, rows, budget=31)  # the budget binds: the pair comes first, together
    assert plan.order == ["A-p", "A-b", "x"] and not plan.held
    plan = plan_step(b, rows, budget=100)  # everyone gets all it wants: vLLM's order is kept
    assert plan.order == ["A-p", "x", "A-b"] and not plan.held


def test_a_ready_member_is_held_when_its_partner_cannot_sample_this_step() -> None:
    b = book("A", "B", "C")
    rows = [ready("A-p"), Row("A-b", 40, False),  # A: partner's prefill chunk will not finish (capped)
            ready("B-p"),                          # B: partner not running (waiting / preempted)
            ready("C-p"), Row("C-b", 10, True)]    # C: partner's final chunk fits: both sample
    plan = plan_step(b, rows, budget=100)
    assert plan.held == {"A-p", "B-p"}
    assert plan.order == ["A-b", "C-p", "C-b"]
    assert plan.stranded == {"B-p"}  # only B waits on a partner outside the running set


def test_the_budget_decides_whether_a_pair_samples_together() -> None:
    b = book("A")
    # 9 tokens left after the unpaired request: the partner's 9-token final chunk and the ready
    # member's token do not both fit, so the ready member is held and the other keeps prefilling
    rows = [Row("x", 91, True), Row("A-p", 9, True), ready("A-b")]
    plan = plan_step(b, rows, budget=100)
    assert plan.held == {"A-b"} and plan.order == ["x", "A-p"]
    plan = plan_step(b, rows, budget=101)
    assert not plan.held and plan.order == ["x", "A-p", "A-b"]


def test_forced_members_are_held_and_prefilling_members_progress() -> None:
    b = book("A")
    plan = plan_step(b, [Row("A-p", 50, True), ready("A-b")], budget=100, forced={"A-b"})
    assert plan.held == {"A-b"} and plan.order == ["A-p"]
    # an orphan (partner gone) that can only sample is held; one still prefilling is not
    b.drop("A-b")
    assert plan_step(b, [ready("A-p")], budget=100).held == {"A-p"}
    assert plan_step(b, [Row("A-p", 50, False)], budget=100).order == ["A-p"]


def test_lone_steps_are_members_that_sample_without_their_partner() -> None:
    b = book("A", "B", "C")
    sampling = {"A-p": True, "A-b": True,   # together
                "B-p": True, "B-b": False,  # partner mid-prefill
                "C-p": True,                # partner not scheduled
                "x": True}
    assert lone_steps(b, sampling) == {"B-p", "C-p"}
    b.drop("A-b")
    assert lone_steps(b, {"A-p": True}) == {"A-p"}  # an orphan never samples together
    assert sample_mismatches(b, {"B-p": [5], "B-b": [6], "C-p": [1], "C-b": []}) == {"B-p", "B-b"}


def test_a_vetoed_member_sits_out_the_next_schedule_call_and_waits_for_its_output() -> None:
    """Async order: step 1 is scheduled (A-p sampled alone), step 2 is scheduled before step 1's
    output arrives, then the output of step 1. A-p must be out of step 2 (the runner would feed it
    the discarded token) and stay out until step 1's output has been handled."""
    g = PairGate()
    g.scheduled({"A-p", "A-b"})
    g.vetoed(1, [Veto("A-p", 0)])
    assert g.forced() == {"A-p"}
    g.scheduled({"A-b"})  # step 2, without A-p
    assert g.forced() == {"A-p"}  # step 1's output has not arrived yet
    assert [v.req_id for v in g.resolve(1)] == ["A-p"]
    assert g.forced() == set()


def test_sync_order_still_needs_one_call_without_the_member() -> None:
    """Sync order (or async when the engine waits first): the output arrives before the next
    schedule. The member still sits out one call, so the runner drops it from its persistent
    batch before it is scheduled again."""
    g = PairGate()
    g.vetoed(1, [Veto("A-p", 0)])
    g.resolve(1)
    assert g.forced() == {"A-p"}
    g.scheduled({"A-b", "x"})
    assert g.forced() == set()
    assert g.resolve(1) == []


def test_a_stranded_member_gives_its_cache_back_after_patience_calls() -> None:
    g = PairGate(patience=3)
    assert g.stranded({"A-p"}) == set() and g.stranded({"A-p"}) == set()
    assert g.stranded({"A-p"}) == {"A-p"}
    assert g.stranded({"A-p"}) == set()  # the count restarts
    g.stranded({"B-p"})
    g.stranded(set())  # B's partner came back: no longer stranded, the count is reset
    assert g.stranded({"B-p"}) == set() and g.stranded({"B-p"}) == set()


def test_vllm_pairing_setting_reaches_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--vllm-pairing`` / ``ALIGNSERVE_VLLM_PAIRING``: async (default), sync, off (no LA at all)."""
    from service.engines import factory
    from service.engines.vllm import engine as vllm_engine

    seen: list[VLLMSettings] = []
    monkeypatch.setattr(factory, "resolve_model", lambda model, home, progress=None: str(model))
    monkeypatch.setattr(vllm_engine, "VLLMEngine", lambda path, vs, default_system=None: seen.append(vs))
    for mode, want in (("sync", (True, False)), ("async", (True, True)), ("off", (False, False))):
        factory.build_engine(Settings(backend="vllm", model=str(tmp_path), vllm_pairing=mode))  # type: ignore[arg-type]
        assert (seen[-1].pairing, seen[-1].pair_async) == want
    assert Settings().vllm_pairing == "async"
