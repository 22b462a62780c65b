"""The quality-evaluation harness's own logic: prompt sets, systems' requests, win/tie/loss."""

from __future__ import annotations

import pytest

from bench.quality_eval import (
    load_items,
    pairwise_conversation,
    requests_for,
    sample_requests,
    systems,
    win_tie_loss,
)


def test_prompt_sets_are_complete_and_subsets_spread_over_each_set() -> None:
    items = load_items(None)
    assert [sum(it.set == s for it in items) for s in ("hh", "pref", "xl")] == [50, 50, 60]
    assert {it.lang for it in items if it.set == "xl"} == {"ja", "zh", "ko"}
    small = load_items(5)
    assert [sum(it.set == s for it in small) for s in ("hh", "pref", "xl")] == [5, 5, 5]
    unsafe_tail = {it.prompt for it in items if it.set == "hh"} - {it.prompt for it in items[:35]}
    assert any(it.prompt in unsafe_tail for it in small)  # the borderline/unsafe tail is sampled too
    assert len({it.principle for it in small if it.set == "pref"}) >= 3


def test_each_system_builds_the_requests_it_claims() -> None:
    items = load_items(2)
    by_name = {s.name: s for s in systems(4.0)}
    assert set(by_name) == {"base", "prompt", "la_r1", "la_r3", "la_adaptive", "steer", "la_r3+steer"}
    base = requests_for(items, by_name["base"], (), 16)
    assert all(r.alignment.is_plain and it.principle not in r.messages[0]["content"]
               for r, it in zip(base, items, strict=True))
    prompt = requests_for(items, by_name["prompt"], (), 16)
    assert all(r.alignment.is_plain and it.principle in r.messages[0]["content"]
               for r, it in zip(prompt, items, strict=True))
    la = requests_for(items, by_name["la_r3"], (), 16)
    assert all(r.alignment.la is not None and r.alignment.la.principle == it.principle and r.alignment.la.strength == 3
               for r, it in zip(la, items, strict=True))
    assert "steer" not in {s.name for s in systems(0.0)}
    samples = sample_requests(items, 4, 16, seed=1)
    assert len(samples) == 4 * len(items) and len({r.sampling.seed for r in samples}) == len(samples)
    assert all(not r.sampling.greedy for r in samples)


def test_win_tie_loss_counts_and_interval() -> None:
    res = win_tie_loss([1.0, 0.5, -1.0, 0.0, 0.01, 2.0], tie=0.05)
    assert (res["wins"], res["ties"], res["losses"]) == (3, 2, 1)
    assert res["win_rate"] == pytest.approx((3 + 1) / 6, abs=1e-3)
    assert res["ci95"][0] <= res["win_rate"] <= res["ci95"][1]


def test_pairwise_question_names_both_responses_and_the_principle() -> None:
    it = load_items(1)[0]
    convo = pairwise_conversation(it, "first answer", "second answer")
    text = convo[1]["content"]
    assert text.index("first answer") < text.index("second answer") and it.principle in text
