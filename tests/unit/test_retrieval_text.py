"""Chunking, tokenization (SudachiPy + lexicon) and fusion."""

from pathlib import Path

import pytest

from bot.retrieval.analysis import Analyzer, stem_en
from bot.retrieval.chunking import MAX_CHARS, chunk_document, split_sentences
from bot.retrieval.documents import load_documents
from bot.retrieval.fusion import max_rrf, rrf
from bot.retrieval.lexicon import Lexicon, normalize_text

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
LEXICON = Path(__file__).resolve().parent.parent.parent / "knowledge" / "lexicon" / "terms.yaml"


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer(Lexicon.load(LEXICON))


@pytest.fixture(scope="module")
def docs():
    return {d.id: d for d in load_documents(FIXTURE)}


# ---------------------------------------------------------------- chunking
def test_japanese_sentences_split_at_sentence_ends_only():
    s = split_sentences("まず止めます。次に切ります！本当ですか？はい", "ja")
    assert s == ["まず止めます。", "次に切ります！", "本当ですか？", "はい"]
    assert split_sentences("First stop it. Then call NTT! Done?", "en") == ["First stop it.", "Then call NTT!", "Done?"]


def test_chunks_follow_headings_lists_and_carry_metadata(docs):
    chunks = chunk_document(docs["fx-first-steps-ja"])
    assert chunks[0].chunk_id == "fx-first-steps-ja#s" and chunks[0].text == docs["fx-first-steps-ja"].summary
    chunks = chunks[1:]
    texts = [c for c in chunks if c.kind == "text"]
    assert [c.chunk_id for c in texts] == [f"fx-first-steps-ja#{i}.0" for i in range(4)]
    questions = [c for c in chunks if c.kind == "question"]
    assert questions[0].chunk_id == "fx-first-steps-ja#0.q0" and questions[0].section_key == "fx-first-steps-ja#0"
    assert {c.section_key for c in questions} == {c.section_key for c in texts}, "every section has its questions"
    assert not any("<!--" in c.text for c in chunks), "markers never reach indexed or shown text"
    chunks = texts
    assert chunks[1].heading == "国際電話を止める"
    assert chunks[3].text.count("\n") == 2 and chunks[3].text.startswith("- 管理画面")
    for c in chunks:
        assert c.doc_id == "fx-first-steps-ja" and c.language == "ja"
        assert c.text.endswith(("。", "！", "？", "する"))  # never cut inside a sentence
    assert "乗っ取りに気づいたら" in chunks[1].index_text(docs["fx-first-steps-ja"])


def test_chunk_ids_are_stable(docs):
    a = [c.chunk_id for c in chunk_document(docs["fx-first-steps-en"])]
    b = [c.chunk_id for c in chunk_document(docs["fx-first-steps-en"])]
    assert a == b


def test_long_japanese_section_is_packed_under_the_budget(docs):
    from dataclasses import replace

    body = "## 長い節\n" + "".join(f"これは{i}番目の文で、少し長めに書いてあります。" for i in range(60))
    d = replace(docs["fx-first-steps-ja"], body=body)
    chunks = chunk_document(d)
    assert len(chunks) > 3
    for c in chunks:
        assert len(c.text) <= MAX_CHARS["ja"] * 1.3
        assert c.text.endswith("。")


# ---------------------------------------------------------------- tokenization
def test_inflected_verb_matches_noun_form(analyzer):
    q = set(analyzer.tokenize("乗っ取られた"))
    d = set(analyzer.tokenize("PBXの乗っ取りに注意"))
    assert "乗っ取る" in q and "乗っ取る" in d
    assert "syn:hijack" in q & d


def test_fullwidth_matches_ascii(analyzer):
    assert "pbx" in analyzer.tokenize("ＰＢＸ") and "pbx" in analyzer.tokenize("PBX")
    assert normalize_text("ＰＢＸ\u0000\u200b 5060") == "pbx 5060"


def test_lexicon_terms_kept_whole_and_synonyms_bridge_languages(analyzer):
    toks = analyzer.tokenize("国際電話不取扱受付センターに申し込む")
    assert "t:国際電話不取扱受付センター" in toks
    ja = set(analyzer.tokenize("不正利用された"))
    en = set(analyzer.tokenize("toll fraud"))
    assert "syn:hijack" in ja & en
    assert "5060" in analyzer.tokenize("port 5060/udp") and "t:5060" in analyzer.tokenize("UDP 5060 を閉じる") and "t:0033" in analyzer.tokenize("0033から始まる")
    assert "t:sip" not in analyzer.tokenize("gossip")  # ASCII terms need word boundaries


def test_the_term_scanner_finds_what_the_lexicon_pattern_finds(analyzer):
    """find_terms scans for the terms starting at each character instead of running the alternation
    of all terms: on every line of the knowledge base, every evaluation question and made-up edge
    cases (word boundaries, a term cut by the end, longer non-ASCII terms over ASCII ones) it must
    find exactly what the regular expression finds."""
    lex = analyzer.lexicon
    root = LEXICON.parent.parent
    texts = [line for path in sorted((root / "sources").glob("*.md")) for line in path.read_text(encoding="utf-8").splitlines()]
    texts += [line for path in sorted((root / "eval").glob("*.jsonl")) if "heldout" not in path.name
              for line in path.read_text(encoding="utf-8").splitlines()]
    terms = sorted(lex._terms)
    texts += [f"x{t}" for t in terms] + [f"{t}1 {t}" for t in terms] + [t[:-1] for t in terms] + ["".join(terms)]
    texts += ["gossip sip-trunk sip", "5060/udp", "0033から", "ip電話とip-pbx"]
    found = 0
    for text in texts:
        norm = normalize_text(text)
        expected = [m.group(0) for m in lex._pattern.finditer(norm)] if norm else []
        assert lex.find_terms(norm) == expected, text
        found += len(expected)
    assert found > 1000


def test_particles_and_stopwords_dropped(analyzer):
    toks = analyzer.tokenize("PBXが乗っ取られたのですが")
    assert "が" not in toks and "の" not in toks
    assert "the" not in analyzer.tokenize("the PBX")
    assert stem_en("calls") == "call" and stem_en("blocked") == "block" and stem_en("charges") == "charge"


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01\x02", "😀" * 50, "a" * 100_000, "PBXが\ud800乗っ取り", "ＰＢＸ mixed 日本語 and English 🎉"])
def test_tokenizer_never_raises(analyzer, text):
    assert isinstance(analyzer.tokenize(text), list)


# ---------------------------------------------------------------- fusion
def test_rrf_rewards_agreement_and_respects_weights():
    fused = rrf([["a", "b", "c"], ["b", "a", "d"]])
    assert fused["a"] == fused["b"] > fused["c"] == fused["d"]
    fused = rrf([["a", "b"], ["b", "a"]], weights=[2.0, 1.0])
    assert fused["a"] > fused["b"]
    assert rrf([["x", "x", "y"]])["y"] == pytest.approx(1 / 62)  # duplicates do not take a rank
    assert max_rrf([1.0, 1.0]) == pytest.approx(2 / 61)
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1.0, 2.0])


def test_the_lexicon_says_which_carrier_a_question_names(analyzer):
    def named(text):
        return analyzer.lexicon.carriers_named(analyzer.analyze(text)[1])

    assert named("ひかり電話の国際発信を止めたい") == {"ntt-east-west"}
    assert named("How do I stop international calls on SoftBank?") == {"softbank"}
    assert named("KDDIとOCNどっちが早い？") == {"kddi", "ntt-com"}
    assert named("How do I stop international calls?") == frozenset()


@pytest.mark.parametrize("text, names", [
    ("Does NTT Docomo have a monthly limit on international calls?", ["docomo"]),
    ("Is Microsoft Teams exposed to this? Asking for our Osaka office.", ["microsoft", "teams"]),
    ("ドコモの携帯で国際電話を止めるには？", ["ドコモ"]),
    ("Microsoft Teamsの電話機能も乗っ取られる？", ["microsoft", "teams"]),  # glued to Japanese, first word too
    ("Yealinkの電話機は大丈夫？", ["yealink"]),
    ("Back in 2016 the 警察庁 put out advice. What were their recommendations?", []),  # English with a kanji name
    ("Does ドコモ have a monthly limit on international calls?", ["ドコモ"]),  # a Japanese name in English
    ("日本の港区の事務所で田中さんがKDDIの回線を使っています", []),  # places, people, a carrier
    ("How do I stop international calls on NTT Hikari Denwa?", []),  # lexicon terms are no names
    ("<b>DROP TABLE</b> tickets; how do we block calls from Manila to Lithuania?", []),  # markup, capitals, places
])
def test_a_question_names_the_products_and_companies_it_asks_about(analyzer, text, names):
    """What the answerability gate checks the answer against: the names no lexicon term covers."""
    assert analyzer.names(text) == names


def test_english_words_beside_japanese_are_known_in_their_english_form(analyzer):
    """"…years ago. How does that even happen?" with 田中さん in it: SudachiPy gives ago, even, back
    their katakana forms, which no English document holds. The share of words no document holds
    (a sign the sources do not cover a question) must not count them, nor English stop words."""
    vocab = {"year", "ago", "even", "happen", "hack", "050", "number", "back", "advice", "scan", "sip"}
    mixed = "My 050 number from 田中さん got hacked years ago. How does that even happen?"
    english = "My 050 number got hacked years ago. How does that even happen?"
    assert analyzer.unknown_share(mixed, vocab) <= 0.25  # only 田中 is unknown to this vocabulary
    assert analyzer.unknown_share(english, vocab) == 0.0
    assert analyzer.unknown_share("Back in 2016 the 警察庁 put out SIP scan advice", vocab) < 0.5
    assert analyzer.unknown_share("補助金は出る？", vocab) == 1.0  # a word no document holds still counts


def test_words_that_name_no_topic_are_not_counted_as_unknown(analyzer):
    """"everyone", "friend's", "we're" and Japanese adverbs or pronouns (まだ, そんな) say nothing of what
    a question is about: a document lacking them is no sign the sources do not cover it."""
    vocab = {"centre", "suspension", "japan", "talk", "friend", "bill", "hack", "国際", "電話", "止める", "請求"}
    assert analyzer.unknown_share("So what's this suspension centre everyone in Japan talks about?", vocab) == 0.0
    assert analyzer.unknown_share("My friend's bill got hacked, we're worried", vocab) <= 1 / 3  # only "worri"
    assert analyzer.unknown_share("そんな請求、まだ止める方法ある？", vocab) <= 1 / 3  # only 方法
    assert analyzer.unknown_share("What about the corporate tax deduction?", vocab) == 1.0


def test_a_querys_english_words_beside_japanese_count_in_both_forms(analyzer):
    """"firewallでoutbound SIPをblock": SudachiPy gives firewall its katakana form, which finds Japanese
    loanwords; a search also needs the English word, which English sections hold. Documents are analysed
    as before (the index is unchanged), and the concept of a word is counted once."""
    query, _ = analyzer.analyze("firewallでoutbound SIPをblockするのって有効？", query=True)
    document, _ = analyzer.analyze("firewallでoutbound SIPをblockするのって有効？")
    assert {"firewall", "outbound", "block"} <= set(query)
    assert not {"outbound", "block"} & set(document)
    assert query.count("syn:stop-intl") == document.count("syn:stop-intl") == 1
    assert analyzer.analyze("How do I block calls abroad?", query=True) == analyzer.analyze("How do I block calls abroad?")
