"""Text analysis for the lexical index: Japanese morphology (SudachiPy) + English words + lexicon.

Pipeline (same for documents and queries):
  1. normalize: NFKC, lower case, control characters removed (lexicon.normalize_text);
  2. lexicon terms found in the text are emitted whole (`国際電話不取扱受付センター`, `ip-pbx`,
     `5060`), plus `syn:<group>` for their synonym groups;
  3. SudachiPy (sudachidict_core, split mode C by default, chosen by measurement; docs/retrieval.md)
     `normalized_form()` for every content morpheme: 乗っ取られた -> 乗っ取る, ＰＢＸ -> pbx;
     particles, auxiliaries, symbols and a few light verbs/nouns are dropped;
  4. ASCII words get a light English suffix stripper (calls -> call) and an English stop list;
  5. every content token whose form is a single-token synonym also adds `syn:<group>`.
Text without any CJK character skips SudachiPy (same token forms, much faster).
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata

from bot.retrieval.lexicon import Lexicon, normalize_text

# SudachiPy refuses inputs above ~49 kB (bytes); we tokenize in slices well below that.
_SUDACHI_SLICE_CHARS = 4000
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_ASCII_WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_DROP_POS = {"助詞", "助動詞", "補助記号", "空白", "記号"}
_JA_STOP = {
    "する", "為る", "ある", "有る", "いる", "居る", "なる", "成る", "れる", "られる", "こと", "事", "よう", "様", "もの", "物",
    "ため", "為", "ところ", "所", "これ", "それ", "あれ", "この", "その", "あの", "ここ", "そこ", "どう", "何", "なに", "どこ",
    "ない", "無い", "です", "ます", "できる", "出来る", "いう", "言う", "とき", "時", "場合", "など", "等", "くださる",
    "下さる", "おる", "御", "お", "ご", "さん", "的", "か", "よ", "ね", "ー", "〜", "・",
}
_EN_STOP = set(
    "a an the and or but if then than so of to in on at by for from with without into onto over under about as is are was "
    "were be been being am do does did doing done have has had having i me my we our you your he she it its they them "
    "their this that these those there here what which who whom whose when where why how can could should would will "
    "shall may might must not no yes just also only very too any some all each every other such own same more most much "
    "many few one s t don doesn didn isn aren wasn weren won wouldn shouldn couldn can't don't i'm it's what's please "
    "help need want know get got let us up out again now".split()
)


# Words that say nothing of a question's topic, for the share of its words no document holds (the
# gate's evidence that the sources do not cover it): Japanese by part of speech (adverbs, interjections,
# adnominals, pronouns, conjunctions: まだ, ああ, そんな, あちら, でも), English by a closed list of
# function and discourse words the stop list above lacks. Not used for matching.
_JA_NO_TOPIC_POS = {"副詞", "感動詞", "連体詞", "代名詞", "接続詞"}
_EN_NO_TOPIC = set(
    "his her him hers ours yours theirs mine myself ourselves yourself themselves itself anybody anyone everyone "
    "everybody somebody someone something anything everything nothing nobody ago ever even yet still already really "
    "actually basically literally probably maybe perhaps hypothetically anyway though although because since while "
    "until unless whether either neither instead else okay ok yeah yes hey hi hello thanks thank lol tbh pls plz "
    "guys gonna wanna kinda sorta".split()
)
# "we're", "friend's": the word before the apostrophe is the word
_APOSTROPHE_TAIL_RE = re.compile(r"'(?:s|re|ve|ll|d|m|t)$")

_NAMES_MAX_CHARS = 2000
_NAME_WORD_RE = re.compile(r"[a-z0-9][a-z0-9\-]*")
# A capitalised word that is not the first of its sentence (after a period, question mark, colon...):
# a capital then a small letter ("Docomo", "FreePBX"). Words in capitals only are left out: acronyms of
# the domain (GW, FAQ) and shouted or pasted text ("DROP TABLE") more often than names.
_CAPITALISED_RE = re.compile(r"(?<![.!?:;\n]\s)(?<![.!?:;\n])(?<!^)(?<=[\s(\"'/])([A-Z][a-z][A-Za-z0-9\-]*)(?![A-Za-z0-9])")
_ASCII_LETTER_RE = re.compile(r"[A-Za-z]")
_HIRAGANA_RE = re.compile(r"[\u3041-\u3096]")
# In Japanese text every capitalised Latin word is a name, the first one too ("Yealinkの電話機",
# "Microsoft Teamsの…"); an English word glued to Japanese has no word boundary before it (\b: の is
# a word character), hence the explicit look-arounds.
_CAPITALISED_IN_JA_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z][a-z][A-Za-z0-9\-]*)(?![A-Za-z0-9])")
# Capitalised words that name no product or company: calendar words, places and people said in English
# (the Japanese path leaves places and people out by their part of speech), "I".
_NOT_NAMES = set(
    "i i'm i've i'd january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday japan japanese tokyo osaka kyoto english "
    "us usa uk america american europe china chinese ok okay faq pdf".split()
)


_RECENT_PIECES = 64
_RECENT_MAX_CHARS = 2000
_MARKUP_RE = re.compile(r"</?[A-Za-z][^<>]{0,300}>")


def strip_markup(text: str) -> str:
    """Tags pasted or injected around a question (<script>, <img onerror=...>) out: they say nothing
    of it, and their words would only count as words no document has."""
    return _MARKUP_RE.sub(" ", text)


def stem_en(word: str) -> str:
    """A deliberately small suffix stripper (calls -> call, blocked -> block, charges -> charge)."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("ing") and len(word) > 5:
        return word[:-3]
    if word.endswith("ed") and len(word) > 4 and not word.endswith("eed"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class Analyzer:
    """Turns text into lexical tokens. Thread-safe; one per process is enough."""

    def __init__(self, lexicon: Lexicon | None = None, *, split_mode: str = "C"):
        self.lexicon = lexicon or Lexicon.from_dict({})
        self.split_mode_name = split_mode.upper()
        self._tokenizer = None
        self._mode = None
        self._lock = threading.Lock()
        self._recent: dict[str, tuple] = {}  # piece -> its morphemes, the last few queries (_morphemes)

    # ---- SudachiPy, loaded lazily (about 0.2 s, ~190 MB resident for the dictionary)
    def _sudachi(self):
        if self._tokenizer is None:
            from sudachipy import Dictionary, SplitMode

            # Dictionary.create() is deprecated in SudachiPy 0.7 in favour of .tokenizer(); create() still
            # works on 0.6.x which pyproject allows, so use whichever exists.
            d = Dictionary(dict="core")
            mode = getattr(SplitMode, self.split_mode_name)
            make = getattr(d, "tokenizer", None) or d.create
            self._tokenizer = make(mode=mode)
            self._mode = mode
        return self._tokenizer

    def warm_up(self) -> None:
        self.tokenize("PBXが乗っ取られた")

    @functools.cached_property
    def synonym_tokens(self) -> dict[str, tuple[str, ...]]:
        """content token -> synonym groups, from every synonym term that analyses to exactly one token."""
        table: dict[str, list[str]] = {}
        for term, gids in self.lexicon.term_groups.items():
            toks = self._content_tokens(term)
            if len(toks) == 1:
                for gid in gids:
                    table.setdefault(toks[0], []).append(gid)
        return {k: tuple(dict.fromkeys(v)) for k, v in table.items()}

    @functools.cached_property
    def _term_words(self) -> frozenset[str]:
        """Every English word of every lexicon term ("denwa" of "hikari denwa")."""
        return frozenset(w for term in self.lexicon.term_groups for w in _NAME_WORD_RE.findall(term))

    def _morphemes(self, piece: str) -> tuple[tuple[str, tuple[str, str, str], str], ...]:
        """(normal form, the first three parts of speech, surface) of each morpheme. A query's are
        kept for a while: a search analyses its words and then looks for its names in the same text."""
        tok = self._sudachi()
        with self._lock:  # (SudachiPy's tokenizer is not thread-safe; the cache shares the lock)
            cached = self._recent.get(piece)
            if cached is not None:
                return cached
            morphemes = tuple((m.normalized_form(), tuple(m.part_of_speech()[:3]), m.surface())
                              for m in tok.tokenize(piece, self._mode))
            if len(piece) <= _RECENT_MAX_CHARS:  # queries, not the documents of a build
                if len(self._recent) >= _RECENT_PIECES:
                    self._recent.pop(next(iter(self._recent)))
                self._recent[piece] = morphemes
        return morphemes

    def _content_morphemes(self, normalized: str):
        """(lower-case normal form, lower-case surface, part of speech) of each content morpheme of text
        with CJK in it: no particles, symbols, Japanese stop words or lone hiragana.

        Known quirk, kept after measuring: an English word inside text with any CJK character (an
        English section naming 国際電話不取扱受付センター, a mixed query) gets SudachiPy's katakana normal
        form when its dictionary knows the word (number -> ナンバー, how -> ハウ), so such sections lose
        their common English words. Keeping those words English in the documents too (and refitting the
        reranker and the gate) was tried on 2026-12-07: document hit@3 0.894 -> 0.902, but section
        recall@5 out of fold 0.945 -> 0.928 and the development twin 162 -> 157 cases. A query gets both
        forms instead (`analyze(query=True)`, later that day: development twin 175 -> 177, its
        mixed-language class 5 -> 7 of 10; the index unchanged)."""
        for start in range(0, len(normalized), _SUDACHI_SLICE_CHARS):
            for form, (pos, _, _), surface in self._morphemes(normalized[start:start + _SUDACHI_SLICE_CHARS]):
                if pos in _DROP_POS:
                    continue
                form, surface = form.lower(), surface.lower()
                if (_CJK_RE.search(form) or _CJK_RE.search(surface)) and (
                        form in _JA_STOP or surface in _JA_STOP or (len(form) == 1 and "\u3040" <= form <= "\u309f")):
                    continue
                yield form, surface, pos

    def _content_tokens(self, normalized: str, english_forms: list[str] | None = None) -> list[str]:
        """Content tokens. `english_forms`: a query's list that receives the English form of each English
        word SudachiPy gave a katakana form (kept apart: its concept is already counted once)."""
        if not normalized:
            return []
        if not _CJK_RE.search(normalized):
            return self._ascii_tokens(normalized)
        out: list[str] = []
        for form, surface, _ in self._content_morphemes(normalized):
            if _CJK_RE.search(form) or _CJK_RE.search(surface):
                out.append(form)
                if english_forms is not None and not _CJK_RE.search(surface):
                    # a query's English word beside Japanese ("firewallでblock"): its katakana form
                    # finds Japanese loanwords, its English form the English sections
                    english_forms.extend(self._ascii_tokens(surface))
            else:
                out.extend(self._ascii_tokens(surface))
        return out

    def unknown_share(self, text: str, known) -> float:
        """The share of a query's distinct words that could name a topic and that no document holds
        (`known`: the index's vocabulary; the gate's sign of a question the sources do not cover). An
        English word inside a message with Japanese in it ("My landlord 田中さん says…") has SudachiPy's
        katakana form (ago -> アゴー), which English documents never hold: it counts as known when its
        English form is known. Stop, function and discourse words (_EN_NO_TOPIC, _JA_NO_TOPIC_POS) do not
        count. What a search matches is unchanged."""
        normalized = normalize_text(text or "")
        if not normalized:
            return 0.0
        if not _CJK_RE.search(normalized):
            words = [(t,) for t in self._ascii_tokens(normalized, topic_only=True)]
        else:
            words = []
            for form, surface, pos in self._content_morphemes(normalized):
                if _CJK_RE.search(surface):
                    if pos not in _JA_NO_TOPIC_POS:
                        words.append((form,))
                elif _CJK_RE.search(form):  # an English word in its katakana form
                    english = self._ascii_tokens(surface, topic_only=True)
                    if english or not _ASCII_WORD_RE.search(surface):
                        words.append((form, *english))
                else:
                    words.extend((t,) for t in self._ascii_tokens(surface, topic_only=True))
        distinct = list(dict.fromkeys(words))
        if not distinct:
            return 0.0
        return sum(1 for forms in distinct if not any(f in known for f in forms)) / len(distinct)

    @staticmethod
    def _ascii_tokens(text: str, *, topic_only: bool = False) -> list[str]:
        """English tokens: stemmed, stop words out. `topic_only`: also without function and discourse
        words and "'s" / "'re" tails, the words that can name a topic (unknown_share)."""
        if not topic_only:
            return [stem_en(w) for w in _ASCII_WORD_RE.findall(text) if w not in _EN_STOP]
        words = (_APOSTROPHE_TAIL_RE.sub("", w) for w in _ASCII_WORD_RE.findall(text))
        return [stem_en(w) for w in words if w and w not in _EN_STOP and w not in _EN_NO_TOPIC]

    def analyze(self, text: str, *, query: bool = False) -> tuple[list[str], list[str]]:
        """(tokens, synonym group ids found). Never raises on odd input. `query`: a search's text, whose
        English words beside Japanese also count in their English form (documents are analysed without)."""
        normalized = normalize_text(text or "")
        if not normalized:
            return [], []
        tokens: list[str] = []
        groups: list[str] = []
        for term in self.lexicon.find_terms(normalized):
            tokens.append("t:" + term)
            groups.extend(self.lexicon.term_groups.get(term, ()))
        phrase_groups = set(groups)
        english: list[str] | None = [] if query else None
        content = self._content_tokens(normalized, english)
        syn = self.synonym_tokens
        for t in content:
            tokens.append(t)
            # a group already found as a phrase is not counted again for its inner morphemes
            groups.extend(g for g in syn.get(t, ()) if g not in phrase_groups)
        tokens.extend(english or ())
        tokens.extend("syn:" + g for g in groups)
        return tokens, list(dict.fromkeys(groups))

    def tokenize(self, text: str) -> list[str]:
        return self.analyze(text)[0]

    def names(self, text: str) -> list[str]:
        """The names of products, companies and services a question mentions that the lexicon does not
        know as a term of the domain ("ドコモ", "Teams", "Yealink"; not "NTT", "PBX" or "Asterisk", which
        are lexicon terms): an answer that never mentions them probably answers about something else.
        Japanese: SudachiPy's proper nouns, without places and people's names (日本, 港区, 田中);
        English: words written with a capital letter that do not start a sentence (in Japanese text,
        any capitalised Latin word). Lower case, NFKC."""
        raw = unicodedata.normalize("NFKC", text or "")[:_NAMES_MAX_CHARS]
        normalized = normalize_text(raw)
        known = set(self.lexicon.find_terms(normalized)) | self._term_words
        found: list[str] = []
        # written in Japanese: Japanese grammar (hiragana) or mostly Japanese letters (an English
        # sentence naming 警察庁 keeps the English rule: "Back in 2016 the 警察庁…" names no "Back")
        japanese = bool(_HIRAGANA_RE.search(normalized)) or \
            len(_CJK_RE.findall(normalized)) > len(_ASCII_LETTER_RE.findall(normalized))
        for m in (_CAPITALISED_IN_JA_RE if japanese else _CAPITALISED_RE).finditer(strip_markup(raw)):
            word = m.group(1).lower()
            if word in known or word in _EN_STOP or word in _NOT_NAMES:
                continue
            # SudachiPy knows places written in English too (Manila, Lithuania)
            if not any(pos[2] == "地名" for _, pos, _ in self._morphemes(m.group(1))):
                found.append(word)
        if _CJK_RE.search(normalized):  # a Japanese proper noun is a name in an English sentence too
            for _, pos, surface in self._morphemes(normalized):
                if pos[1] == "固有名詞" and pos[2] not in ("地名", "人名") and _CJK_RE.search(surface) \
                        and not any(surface in term for term in known):
                    found.append(surface)
        return list(dict.fromkeys(found))
