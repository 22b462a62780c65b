"""Language identification and the fidelity check, incl. the character-level CJK rules."""

from __future__ import annotations

import pytest

from service.language.fidelity import LanguageDetector, language_principle, script_shares


@pytest.fixture(scope="module")
def det() -> LanguageDetector:
    return LanguageDetector()


@pytest.mark.parametrize("text,lang", [
    ("What is the capital of France and why is it famous?", "en"),
    ("フランスの首都はどこですか？", "ja"),
    ("法国的首都是哪里？", "zh"),
    ("프랑스의 수도는 어디입니까?", "ko"),
    ("Quelle est la capitale de la France et pourquoi est-elle célèbre ?", "fr"),
    ("Was ist die Hauptstadt von Frankreich und warum ist sie berühmt?", "de"),
    # short questions that the unrestricted langid model names Galician and Bulgarian
    ("¿Qué hace un compilador?", "es"),
    ("Что делает компилятор?", "ru"),
])
def test_detect(det: LanguageDetector, text: str, lang: str) -> None:
    assert det.detect(text) == lang


def test_compare_match_and_mismatch(det: LanguageDetector) -> None:
    assert det.compare("フランスの首都はどこですか？", "フランスの首都はパリです。").match
    r = det.compare("フランスの首都はどこですか？", "The capital of France is Paris, a city on the Seine.")
    assert (r.prompt, r.answer, r.match) == ("ja", "en", False)
    # Japanese question, answer in Chinese characters only: a mismatch at character level
    assert not det.compare("日本の首都はどこですか？", "日本首都是东京。").match
    # very short answers are judged by script
    assert det.compare("What is the capital of France?", "Paris.").match
    assert not det.compare("What is the capital of France?", "パリ").match


def test_script_shares_and_principle() -> None:
    assert script_shares("abc パリ") == {"kana": 0.4, "latin": 0.6}
    assert script_shares("123 !?") == {}
    assert language_principle("ja") == "Always answer in Japanese, the language of the user's message."
    assert "same language" in language_principle("xx")
