"""The language of a user message, from its grammar rather than from any kana it contains.

A sentence is Japanese when Japanese grammar carries it (hiragana particles and endings between
the words) and English when English function words do. Names in the other script do not decide:
"Our 大阪支店 got a strange bill" is English, 「PBXのSIPアカウントを確認したい」 is Japanese.
Text without letters ("?", digits, emoji) gives no signal (None): the caller keeps the
conversation's language. Other scripts and other Latin-script languages are None as well.
The one language detector of the project: the channels, the conversation core and the retriever
(for a search that names no language) all use it. Stdlib only.
"""

from __future__ import annotations

import re
import unicodedata

_HIRAGANA = re.compile(r"[\u3040-\u309f]")
_KATAKANA = re.compile(r"[\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff']+")
_OTHER_SCRIPT = re.compile(
    r"[\u0400-\u04ff\u0590-\u05ff\u0600-\u06ff\u0900-\u097f\u0e00-\u0e7f\u1100-\u11ff\uac00-\ud7af\u0370-\u03ff]"
)
# Characters common in Chinese and rare in Japanese text (simplified forms, particles).
_CHINESE_ONLY = re.compile(r"[们这么吗呢说请问该怎么办为电话费账单]")
_CHINESE_FUNCTION = re.compile(r"[的了吗呢是我们你]")
# Hiragana that are part of names users write ("ひかり電話"), not grammar.
_NAMES_IN_HIRAGANA = re.compile(r"ひかり|ふれっつ|おとくライン|でんわん")

_EN_FUNCTION = frozenset(
    """a an the is are was were be been am i we you he she it they my our your their me us this that these those
    what how why when where who which can could should would will do does did have has had not no to of in on at
    for from with by about and or but if so please there here any some all just also than then into out up down
    over get got its i'm we're it's don't can't didn't isn't aren't won't i've we've""".split()
)
_FOREIGN_FUNCTION = frozenset(
    """el la los las que de del por para una est les des une pas pour avec nous vous ist und der die das nicht
    ich mit ein eine sie wir não nao uma com mais você telefone chamadas llamadas teléfono llamada mi nuestro
    nuestra está esta como qué cómo sono della il di che per non è xin chào không của tôi được những và
    anh là một có cho
    unser unsere unseren ins im zum zur auf auch noch nur wie kann können tun dass sich bei oder aber haben
    notre nos votre vos le du au aux et ou qui quoi comment faire je il elle sur dans très mais""".split()
)


def detect_language(text: str) -> str | None:
    """"ja" | "en" | None."""
    t = unicodedata.normalize("NFKC", text or "")
    grammar = len(_HIRAGANA.findall(_NAMES_IN_HIRAGANA.sub("", t)))
    katakana = len(_KATAKANA.findall(t))
    han = len(_HAN.findall(t))
    other = len(_OTHER_SCRIPT.findall(t))
    words = [w.lower() for w in _LATIN_WORD.findall(t)]
    en = sum(1 for w in words if w in _EN_FUNCTION)
    foreign = sum(1 for w in words if w in _FOREIGN_FUNCTION)
    accented = sum(1 for ch in t if "\u00c0" <= ch <= "\u024f" or "\u1e00" <= ch <= "\u1eff")

    if en >= 2 and en * 3 >= grammar and not (foreign >= 2 and foreign > en):
        return "en"  # English sentence, Japanese names inside it (not German with "an", "was")
    if grammar >= 1:
        return "ja"
    if han or katakana:
        # Kanji without grammar: Japanese keywords ("国際電話 停止") or a Chinese sentence.
        if han >= 6 and (len(_CHINESE_ONLY.findall(t)) >= 2 or len(_CHINESE_FUNCTION.findall(t)) >= 2):
            return None if len(words) < han else _latin(words, en, foreign, accented)
        if other > han + katakana:
            return None
        if words and en >= 1 and len(words) > han + katakana:
            return "en"
        return "ja"
    if other and other >= len("".join(words)):
        return None
    if words:
        return _latin(words, en, foreign, accented)
    return None


def _latin(words: list[str], en: int, foreign: int, accented: int) -> str | None:
    if foreign >= 2 and foreign > en:
        return None
    if accented >= 2 and en == 0 or accented and foreign and not en:
        return None
    return "en"


def has_letters(text: str) -> bool:
    t = unicodedata.normalize("NFKC", text or "")
    return bool(_HIRAGANA.search(t) or _KATAKANA.search(t) or _HAN.search(t) or _LATIN_WORD.search(t)
                or _OTHER_SCRIPT.search(t))


def has_english_words(text: str) -> bool:
    """At least one English function word: "/human", "KDDI?" or "OCN" alone say nothing about the
    language and keep the conversation's."""
    return any(w.lower() in _EN_FUNCTION for w in _LATIN_WORD.findall(unicodedata.normalize("NFKC", text or "")))
