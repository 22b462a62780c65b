"""Language fidelity: does the answer come back in the language of the prompt?

The InsCP paper's "language alignment" is the share of answers in the question's language. A
whole-text guess (langid, offline, bundled model) is not enough for CJK: a Japanese question
answered in Chinese characters only is a mismatch even if a guesser says "ja", so CJK languages
are also checked by script (kana for Japanese, hangul for Korean, Han without kana/hangul for
Chinese). Texts with very few letters are judged by script alone.
"""

from __future__ import annotations

import collections
import functools
import unicodedata
from dataclasses import dataclass
from typing import Any

LANGUAGE_NAMES = {
    "en": "English", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "hi": "Hindi",
    "nl": "Dutch", "pl": "Polish", "tr": "Turkish", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian",
    "uk": "Ukrainian", "sv": "Swedish", "cs": "Czech", "el": "Greek", "he": "Hebrew",
}
_MIN_LETTERS = 12


@functools.lru_cache(maxsize=8192)
def script_of(ch: str) -> str | None:
    """The writing system of one character (None for digits, punctuation, spaces). Cached: a
    response repeats a few dozen distinct characters, so each is classified once."""
    o = ord(ch)
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
        return "kana"
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
        return "han"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
        return "hangul"
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    for script in ("LATIN", "CYRILLIC", "ARABIC", "DEVANAGARI", "GREEK", "HEBREW", "THAI"):
        if name.startswith(script):
            return script.lower()
    return "other"


def script_counts(text: str) -> dict[str, int]:
    """Letters per writing system, in one pass over the distinct characters (``Counter`` runs in C;
    this runs for every response, on the event loop)."""
    counts: dict[str, int] = {}
    for ch, n in collections.Counter(text).items():
        s = script_of(ch)
        if s:
            counts[s] = counts.get(s, 0) + n
    return counts


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in sorted(counts.items())} if total else {}


def script_shares(text: str) -> dict[str, float]:
    return _shares(script_counts(text))


def _script_language(shares: dict[str, float]) -> str:
    if shares.get("kana", 0) > 0:
        return "ja"
    if shares.get("hangul", 0) >= 0.3:
        return "ko"
    if shares.get("han", 0) >= 0.3:
        return "zh"
    return max(shares, key=lambda k: shares[k]) if shares else "und"


@dataclass(frozen=True)
class LanguageReport:
    prompt: str
    answer: str
    match: bool
    answer_scripts: dict[str, float]


@functools.cache
def _identifier() -> Any:
    """langid's bundled model, parsed once per process (~2 s); read-only afterwards.

    Restricted to the languages we name (``LANGUAGE_NAMES``): over all 97, short questions land on
    close neighbours ("¿Qué hace un compilador?" → Galician, "Что делает компилятор?" → Bulgarian),
    which counted correct Spanish/Russian answers as mismatches and named no language in the
    principle."""
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    ident.set_languages(list(LANGUAGE_NAMES))
    return ident


class LanguageDetector:
    def __init__(self) -> None:
        self._ident = _identifier()

    def detect(self, text: str) -> str:
        return self._detect(text, script_counts(text))

    def _detect(self, text: str, counts: dict[str, int]) -> str:
        if not counts:
            return "und"
        cjk = _script_language(_shares(counts))
        if cjk in ("ja", "ko", "zh"):
            return cjk
        if sum(counts.values()) < _MIN_LETTERS:
            return "und"
        return str(self._ident.classify(text)[0])

    def compare(self, prompt: str, answer: str) -> LanguageReport:
        p_counts, a_counts = script_counts(prompt), script_counts(answer)
        p, a = self._detect(prompt, p_counts), self._detect(answer, a_counts)
        p_scripts, a_scripts = _shares(p_counts), _shares(a_counts)
        if "und" in (p, a):  # too short to name: judge by dominant script
            match = bool(a_scripts) and _script_language(p_scripts) == _script_language(a_scripts)
        else:
            match = p == a
        return LanguageReport(prompt=p, answer=a, match=match, answer_scripts=a_scripts)


def language_principle(lang: str) -> str:
    name = LANGUAGE_NAMES.get(lang)
    if name is None:
        return "Always answer in the same language as the user's message."
    return f"Always answer in {name}, the language of the user's message."
