"""Language of a user message, decided by script (no model): "ja", "en" or None (unknown).

Kana or kanji -> Japanese (unless the text reads as Chinese); Latin letters -> English unless the
words are clearly another Latin-script language; other scripts (Hangul, Cyrillic, Arabic, Thai...)
-> unknown. Text without any letters (digits, emoji, "?") gives no signal: the caller keeps the
conversation's language.
"""

from __future__ import annotations

import re
import unicodedata

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_OTHER_SCRIPT = re.compile(
    r"[\u0400-\u04ff\u0590-\u05ff\u0600-\u06ff\u0900-\u097f\u0e00-\u0e7f\u1100-\u11ff\uac00-\ud7af\u0370-\u03ff]"
)
# Characters common in Chinese and rare in Japanese text (simplified forms, particles).
_CHINESE_ONLY = re.compile(r"[们这么吗呢说请问该怎么办们为电话费账单]")
_CHINESE_FUNCTION = re.compile(r"[的了吗呢是我们你]")

_EN_WORDS = frozenset(
    """a an the is are was were be been am i we you he she it they my our your their me us this that these those
    what how why when where who which can could should would will do does did have has had not no yes to of in
    on at for from with by about and or but if so please help call calls phone bill our hi hello hey thanks
    thank ok okay stop still now more happened hacked pbx line carrier number""".split()
)
_FOREIGN_LATIN_WORDS = frozenset(
    """el la los las que de del por para una est les des une pas pour avec nous vous ist und der die das nicht
    ich mit ein eine sie wir não nao uma com mais você telefone chamadas llamadas teléfono llamada mi nuestro
    nuestra está esta como qué que cómo sono della il di che per non è xin chào không của tôi được những và
    anh là một có cho""".split()
)
_WORD = re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff']+")


def detect_language(text: str) -> str | None:
    """"ja" | "en" | None. None also for text with no letters at all (no signal)."""
    t = unicodedata.normalize("NFKC", text or "")
    kana = len(_KANA.findall(t))
    han = len(_HAN.findall(t))
    latin = len(_LATIN.findall(t))
    other = len(_OTHER_SCRIPT.findall(t))
    if kana:
        return "ja"
    if han:
        # Kanji without any kana: Japanese keywords ("国際電話 停止") or Chinese sentences.
        if han >= 6 and (len(_CHINESE_ONLY.findall(t)) >= 2 or len(_CHINESE_FUNCTION.findall(t)) >= 2):
            return None if latin < han else _latin_language(t)
        if other > han:
            return None
        return "ja"
    if other and other >= latin:
        return None
    if latin:
        return _latin_language(t)
    return None


def has_letters(text: str) -> bool:
    t = unicodedata.normalize("NFKC", text or "")
    return bool(_KANA.search(t) or _HAN.search(t) or _LATIN.search(t) or _OTHER_SCRIPT.search(t))


def _latin_language(text: str) -> str | None:
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return "en"
    en = sum(1 for w in words if w in _EN_WORDS)
    foreign = sum(1 for w in words if w in _FOREIGN_LATIN_WORDS)
    accented = sum(1 for ch in text if "\u00c0" <= ch <= "\u024f" or "\u1e00" <= ch <= "\u1eff")
    if foreign >= 2 and foreign > en:
        return None
    if accented >= 2 and en == 0:
        return None
    return "en"


def has_english_words(text: str) -> bool:
    """At least one common English word: "/human", "KDDI?" or "OCN" alone say nothing about the
    language and keep the conversation's."""
    return any(w.lower() in _EN_WORDS for w in _WORD.findall(unicodedata.normalize("NFKC", text or "")))
