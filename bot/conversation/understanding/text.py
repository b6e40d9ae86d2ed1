"""User text as the core stores and reads it: cleaned, normalised, kana-only key words in kanji."""

from __future__ import annotations

import re
import unicodedata

from bot.conversation.kana_readings import KANA_READINGS

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


def clean_text(text: str | None, max_chars: int) -> str:
    """User text as stored and processed: control characters removed, whitespace folded, capped."""
    t = _CONTROL.sub(" ", text or "")
    t = re.sub(r"[ \t\r\f\v]+", " ", t)
    t = re.sub(r"\n{3,}", "\n\n", t).strip()
    return t[:max_chars]


# Words frightened users type in kana only; mapped to the kanji the documents use.
_HAND_WRITTEN = (
    ("こくさいでんわ", "国際電話"), ("かいがい", "海外"), ("こくさい", "国際"), ("でんわ", "電話"), ("かってに", "勝手に"),
    ("いまも", "今も"), ("いますぐ", "今すぐ"), ("はっしん", "発信"), ("つうわ", "通話"), ("のっとられ", "乗っ取られ"),
    ("のっとり", "乗っ取り"), ("せいきゅう", "請求"), ("とまらない", "止まらない"), ("とめたい", "止めたい"),
    ("とめかた", "止め方"), ("たすけて", "助けて"), ("ひかりでんわ", "ひかり電話"),
)
# The hand-written words plus the kana spelling of every Japanese lexicon term (generated:
# scripts/build_kana_readings.py), longest first so that a whole term wins.
_KANA_WORDS = tuple(sorted({**dict(KANA_READINGS), **dict(_HAND_WRITTEN)}.items(), key=lambda kv: (-len(kv[0]), kv[0])))


_KATAKANA_WORD = re.compile(r"[\u30a1-\u30fc]+")
_HIRAGANA_OR_KANJI = re.compile(r"[\u3041-\u3096\u4e00-\u9fff]")
_KATAKANA_TO_HIRAGANA = {c: c - 0x60 for c in range(0x30A1, 0x30F7)}


def katakana_as_kana(text: str) -> str:
    """A message typed in a phone's or an old terminal's kana mode (katakana alone, often half-width,
    which NFKC has made full-width: 「ｺｸｻｲﾃﾞﾝﾜ ﾄﾒﾀｲ」) read as hiragana, so that its key words map to
    kanji like any other kana-only message's: a message without hiragana or kanji, of several
    katakana words or spelling a key word. One katakana word that spells none (サンキュー,
    パスワード) and katakana beside hiragana or kanji (ルーターのパスワード) are loanwords and stay."""
    if _HIRAGANA_OR_KANJI.search(text) or not _KATAKANA_WORD.search(text):
        return text
    folded = text.translate(_KATAKANA_TO_HIRAGANA)
    if len(_KATAKANA_WORD.findall(text)) >= 2 or any(kana in folded for kana, _ in _KANA_WORDS):
        return folded
    return text


def kana_to_kanji(text: str) -> str:
    """Only the kana-only key words replaced (for retrieval queries: case and spacing kept, except
    that a message typed in capitals reads as its lower-case self, and one typed in katakana alone
    as hiragana)."""
    t = katakana_as_kana(unicodedata.normalize("NFKC", text or ""))
    for kana, kanji in _KANA_WORDS:
        if kana in t:
            t = t.replace(kana, kanji)
    return calm(t)


SHOUTED_SHARE = 0.7  # of a message's English letters in capitals (NTT, KDDI and PBX alone stay far below)
SHOUTED_MIN_LETTERS = 8


def calm(text: str) -> str:
    """"HELP!!! CALLS TO SOMALIA RIGHT NOW" as "help!!! calls to somalia right now": the sentence
    encoder reads words in capitals as other words (a panicked message in capitals was not seen as
    an incident). Acronyms in an ordinary English sentence keep their case; a Japanese message
    whose only Latin letters are acronyms (「KDDIとSIPとRTX…」) is lower-cased too. Limiting it to
    Latin-script messages was tried (2026-12-07): retrieval unchanged within one question, but the
    intent model trained on the examples so read lost two live incidents of the development twin
    (its thresholds move with any change of the data), so it stays as it is."""
    letters = [c for c in text if "a" <= c.lower() <= "z" and c.isascii()]
    if len(letters) < SHOUTED_MIN_LETTERS or sum(c.isupper() for c in letters) < SHOUTED_SHARE * len(letters):
        return text
    return "".join(c.lower() if c.isascii() else c for c in text)


def normalize(text: str) -> str:
    """NFKC, lower case, kana-only key words in kanji, spaces between Japanese words removed."""
    t = kana_to_kanji(text).lower()
    return re.sub(r"(?<=[\u3040-\u30ff\u4e00-\u9fff])\s+(?=[\u3040-\u30ff\u4e00-\u9fff])", "", t)


# a message's sentences end at 。！？!? (each), at a full stop before a space, or at a line break
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=\.)\s+|\n+")


# A Japanese sentence that asks without a question mark ends in the particle か (「請求されるのでしょうか。」,
# 「止まりますか」, 「あるのかな」): a grammatical ending, not a topic word.
_JA_ASKING_END = re.compile(r"(?:か|かな|かね|かしら)[。．.]?$")


def asks(sentence: str) -> bool:
    """The sentence asks: a question mark at its end, or a Japanese sentence-final か."""
    s = sentence.rstrip()
    return s.endswith(("?", "？")) or bool(_JA_ASKING_END.search(s))


def message_sentences(text: str) -> list[str]:
    """The sentences of a message, as typed: "Calls to Somalia are going out now. Who pays?" is two.
    Unlike bot.text.split_sentences (the documents'), it needs no capital after a full stop."""
    return [p.strip() for p in _SENTENCE_END.split(text or "") if p and p.strip()]
