"""The quality-evaluation harness's own logic: prompt sets, systems' requests, win/tie/loss."""

from __future__ import annotations

import pytest

from bench.quality_eval import (
    authors_systems,
    greedy_twin,
    load_items,
    pairwise_conversation,
    prompt_means,
    requests_for,
    sample_requests,
    systems,
    win_tie_loss,
)
from service.alignment.decoding import effective_sampling


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


def test_authors_systems_apply_the_per_set_strength_and_the_sampling_mode() -> None:
    items = load_items(2)  # 2 hh, 2 pref, 2 xl
    by_name = {s.name: s for s in authors_systems(samples=3)}
    assert set(by_name) == {"base", "prompt", "la_authors", "la_authors_request_T0.7", "la_authors_sampled",
                            "prompt_sampled"}
    want_r = {"hh": 3.0, "pref": 5.0, "xl": 3.0}
    mode = {"la_authors": "authors", "la_authors_request_T0.7": "request", "la_authors_sampled": "authors"}
    draw_t = {"la_authors": None, "la_authors_request_T0.7": 0.7, "la_authors_sampled": 0.5}
    for name, la_mode in mode.items():
        reqs = requests_for(items, by_name[name], (), 16, seed=5)
        k = 1 if name == "la_authors" else 3
        assert len(reqs) == k * len(items) and len({r.request_id for r in reqs}) == len(reqs)
        for j, r in enumerate(reqs):
            it = items[j % len(items)]
            la = r.alignment.la
            assert la is not None and la.principle == it.principle and la.strength == want_r[it.set]
            assert la.sampling == la_mode and la.plausibility_temperature == 0.5 and la.plausibility_top_p == 0.8
            # what the decode step will sample with (service.alignment.decoding)
            eff = effective_sampling(la, r.sampling)
            assert eff.greedy if draw_t[name] is None else eff.temperature == pytest.approx(draw_t[name])
    a = requests_for(items, by_name["la_authors_sampled"], (), 16, seed=5)
    b = requests_for(items, by_name["la_authors_request_T0.7"], (), 16, seed=5)
    c = requests_for(items, by_name["prompt_sampled"], (), 16, seed=5)
    assert [r.sampling.seed for r in a] == [r.sampling.seed for r in b] == [r.sampling.seed for r in c]
    assert len({r.sampling.seed for r in a}) == len(a)
    assert all(r.alignment.is_plain and it.principle in r.messages[0]["content"] and r.sampling.temperature == 0.7
               for r, it in zip(c, items * 3, strict=True))
    twin = requests_for(items, greedy_twin(by_name["la_authors"]), (), 16)
    assert all(r.alignment.la is not None and r.alignment.la.sampling == "request" and r.sampling.greedy
               and r.alignment.la.strength == want_r[it.set] for r, it in zip(twin, items, strict=True))
    # the default set keeps its fixed strengths and the request mode on every set
    la_r3 = requests_for(items, {s.name: s for s in systems(0.0)}["la_r3"], (), 16)
    assert all(r.alignment.la is not None and r.alignment.la.strength == 3 and r.alignment.la.sampling == "request"
               for r in la_r3)


def test_prompt_sets_can_be_selected() -> None:
    assert {it.set for it in load_items(3, ["hh", "pref"])} == {"hh", "pref"}
    assert len(load_items(3, ["pref"])) == 3


def test_sampled_win_rates_bootstrap_over_prompts() -> None:
    assert prompt_means([1.0, 0.0, 1.0, 1.0], [0, 1, 0, 1]) == [1.0, 0.5]
    # every prompt has the same mean outcome: resampling prompts cannot move the win rate
    res = win_tie_loss([1.0, -1.0, -1.0, 1.0], tie=0.05, groups=[0, 1, 0, 1])
    assert res["win_rate"] == 0.5 and res["ci95"] == [0.5, 0.5] and (res["wins"], res["losses"]) == (2, 2)
    assert win_tie_loss([1.0, -1.0, -1.0, 1.0], tie=0.05)["ci95"] != [0.5, 0.5]
