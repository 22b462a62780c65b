"""Cross-lingual replication, pure parts: the four-language preference data, the Bradley-Terry recipe
on synthetic features, and the paired bootstrap / verdict helpers of ``bench/cross_lingual.py``."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from bench.cross_lingual import matched_vs_mismatched, paired_bootstrap_diff, verdict
from bench.train_reward_head import MULTILINGUAL, load_multilingual, train_head, with_relevance

DATA = Path(__file__).resolve().parents[1] / "bench" / "data"
LANGS = ("en", "ja", "zh", "ko")
KANA = re.compile(r"[\u3040-\u30ff]")
HANGUL = re.compile(r"[\uac00-\ud7af]")
HAN = re.compile(r"[\u4e00-\u9fff]")
TRADITIONAL_ONLY = set("們這說會與對為來個時國學體麼點變邊紅話樣當從開關讓過還機動發書長門車馬鳥魚東見貝頁氣風")
SIMPLIFIED_ONLY = set("们这说对为时么边话样从开关让过还机动发书长门车马鸟鱼东见贝页气风")  # not Japanese shinjitai


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict[str, object]]]:
    return json.loads(MULTILINGUAL.read_text())


def test_every_pair_exists_in_all_four_languages(data: dict[str, list[dict[str, object]]]) -> None:
    assert "hand" in str(data["_about"]) and data["languages"] == list(LANGS)
    assert len(data["train"]) >= 150 and len(data["test"]) >= 60
    ids = [it["id"] for split in ("train", "test") for it in data[split]]
    assert len(ids) == len(set(ids))
    for split in ("train", "test"):
        for it in data[split]:
            for lang in LANGS:
                triple = it[lang]
                assert isinstance(triple, list) and len(triple) == 3, (it["id"], lang)
                assert all(isinstance(t, str) and t.strip() for t in triple), (it["id"], lang)
                assert triple[1] != triple[2], (it["id"], lang)
            assert len({tuple(it[lang]) for lang in LANGS}) == 4, it["id"]  # translated, not copied


def test_each_language_is_written_in_its_own_script(data: dict[str, list[dict[str, object]]]) -> None:
    for it in data["train"] + data["test"]:
        en, ja, zh, ko = (it[lang][0] for lang in LANGS)  # type: ignore[index]
        assert not (HAN.search(en) or KANA.search(en) or HANGUL.search(en)), it["id"]
        assert KANA.search(ja) and not HANGUL.search(ja), it["id"]
        assert HAN.search(zh) and not KANA.search(zh) and not HANGUL.search(zh), it["id"]
        assert HANGUL.search(ko) and not KANA.search(ko), it["id"]
        zh_text, ja_text = "".join(it["zh"]), "".join(it["ja"])  # type: ignore[arg-type]
        assert not TRADITIONAL_ONLY & set(zh_text), (it["id"], TRADITIONAL_ONLY & set(zh_text))
        assert not SIMPLIFIED_ONLY & set(ja_text), (it["id"], SIMPLIFIED_ONLY & set(ja_text))


def test_train_and_test_share_no_prompt_in_any_language(data: dict[str, list[dict[str, object]]]) -> None:
    for lang in LANGS:
        train = [it[lang][0] for it in data["train"]]  # type: ignore[index]
        test = [it[lang][0] for it in data["test"]]  # type: ignore[index]
        assert len(set(train)) == len(train) and len(set(test)) == len(test), lang
        assert not set(train) & set(test), lang
        norm = {re.sub(r"\W+", "", p).lower() for p in train}
        assert not norm & {re.sub(r"\W+", "", p).lower() for p in test}, lang


def test_categories_are_balanced_in_test_and_covered_in_train(data: dict[str, list[dict[str, object]]]) -> None:
    test_cats = [it["category"] for it in data["test"]]
    counts = {c: test_cats.count(c) for c in set(test_cats)}
    assert len(counts) == 9 and len(set(counts.values())) == 1
    assert {it["category"] for it in data["train"]} == set(counts)


def test_the_older_files_are_kept_verbatim_inside(data: dict[str, list[dict[str, object]]]) -> None:
    old_train = json.loads((DATA / "preference_pairs_train.json").read_text())["pairs"]
    old_test = json.loads((DATA / "cross_lingual_pairs.json").read_text())["items"]
    assert [[it["category"], *it["en"]] for it in data["train"][:len(old_train)]] == old_train  # type: ignore[list-item]
    for new, old in zip(data["test"][:len(old_test)], old_test, strict=True):
        assert all(new[lang] == old[lang] for lang in LANGS) and new["category"] == old["category"]


def test_loader_and_relevance_augmentation_line_up_across_languages() -> None:
    en, ja = load_multilingual("en", "train"), load_multilingual("ja", "train")
    aug_en, aug_ja = with_relevance(en), with_relevance(ja)
    n = len(en)
    assert len(aug_en) == 2 * n and aug_en[:n] == en
    for i in (0, 7, n - 1):
        assert aug_en[n + i][1:3] == en[i][1:3] and aug_en[n + i][3] == en[(i + n // 2) % n][2]
        assert aug_ja[n + i][3] == ja[(i + n // 2) % n][2]  # the same pairing in every language


def test_recipe_recovers_a_planted_direction_on_anisotropic_features() -> None:
    g = torch.Generator().manual_seed(0)
    dim, n = 12, 600
    scale = torch.logspace(-1, 1, dim, dtype=torch.float64)  # features on very different scales
    truth = torch.randn(dim, generator=g, dtype=torch.float64) / scale
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    y = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    better = (x @ truth) > (y @ truth)
    chosen, rejected = torch.where(better[:, None], x, y), torch.where(better[:, None], y, x)
    head = train_head(chosen[:400], rejected[:400], [str(i % 200) for i in range(400)])
    assert head.lam in head.cv and len(head.cv) == 5
    cos = float(head.weight @ truth / (head.weight.norm() * truth.norm()))
    assert cos > 0.9
    held = head.margins(chosen[400:], rejected[400:])
    assert float((held > 0).double().mean()) > 0.9
    torch.testing.assert_close(held, (chosen[400:] - rejected[400:]) @ head.weight)


def test_paired_bootstrap_difference_on_hand_cases() -> None:
    assert paired_bootstrap_diff([1.0] * 10, [0.0] * 10) == (1.0, 1.0, 1.0)
    assert paired_bootstrap_diff([0.5, 1.0, 0.0], [0.5, 1.0, 0.0]) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_bootstrap_diff([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0])
    assert d == 0.5 and 0.0 <= lo <= 0.5 <= hi <= 1.0
    a, b = [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]
    assert paired_bootstrap_diff(a, b, seed=3) == paired_bootstrap_diff(a, b, seed=3)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0], [1.0, 0.0])


def test_paired_bootstrap_keeps_items_together() -> None:
    """Two scorers that agree on 190 of 200 items (half of them right) and differ on 10: the paired
    interval is about +-0.03 around 0.05 and excludes 0; resampling the two sides separately would give
    about +-0.1 and include 0."""
    rng = random.Random(1)
    b = [float(rng.random() < 0.5) for _ in range(200)]
    a = list(b)
    flipped = [i for i, v in enumerate(b) if v == 0.0][:10]
    for i in flipped:
        a[i] = 1.0
    d, lo, hi = paired_bootstrap_diff(a, b, rounds=4000)
    assert d == pytest.approx(0.05)
    assert 0.0 < lo < d < hi and hi - lo < 0.1


def test_verdict_states_sign_and_the_seed_figure() -> None:
    better = verdict({"difference": 0.05, "ci95": [0.02, 0.08]})
    assert "English RM is better" in better and "consistent with" in better and "equally" not in better
    none = verdict({"difference": 0.0, "ci95": [-0.01, 0.01]})
    assert "no difference" in none and "does not reproduce" in none and "outside" in none
    assert "opposite of the seed" in verdict({"difference": -0.1, "ci95": [-0.15, -0.05]})
    wide = verdict({"difference": 0.0, "ci95": [-0.06, 0.035]})
    assert "consistent with" in wide and "equally with no difference" in wide
    assert "does not reproduce" in verdict({"difference": -0.05, "ci95": [-0.13, 0.028]})


def test_matched_vs_mismatched_cosines() -> None:
    x = torch.eye(4, dtype=torch.float64)
    assert matched_vs_mismatched(x, x) == (1.0, 0.0)
    m, mm = matched_vs_mismatched(x, -x)
    assert m == -1.0 and mm == 0.0
    ones = torch.ones(3, 5, dtype=torch.float64)
    assert matched_vs_mismatched(ones, 2 * ones) == pytest.approx((1.0, 1.0))
