"""What a user message says about itself, by pattern (no model): carrier, greeting, request for a
person, "more", "that did not help", hostile instructions, follow-up, domain scope.

Every function takes NFKC-normalised text (see `normalize`) and is pure.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Iterable

import yaml

from bot.conversation.kana_readings import KANA_READINGS

# ---------------------------------------------------------------- normalisation

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


def clean_text(text: str | None, max_chars: int) -> str:
    """User text as stored and processed: control characters removed, whitespace folded, capped."""
    t = _CONTROL.sub(" ", text or "")
    t = re.sub(r"[ \t\r\f\v]+", " ", t)
    t = re.sub(r"\n{3,}", "\n\n", t).strip()
    return t[:max_chars]


# Words frightened users type in kana only; mapped to the kanji the patterns and documents use.
_KANA_WORDS = (
    ("こくさいでんわ", "国際電話"), ("かいがい", "海外"), ("こくさい", "国際"), ("でんわ", "電話"), ("かってに", "勝手に"),
    ("いまも", "今も"), ("いますぐ", "今すぐ"), ("はっしん", "発信"), ("つうわ", "通話"), ("のっとられ", "乗っ取られ"),
    ("のっとり", "乗っ取り"), ("せいきゅう", "請求"), ("とまらない", "止まらない"), ("とめたい", "止めたい"),
    ("とめかた", "止め方"), ("たすけて", "助けて"), ("ひかりでんわ", "ひかり電話"),
)


# The hand-written words above (inflected forms too) plus the kana spelling of every Japanese lexicon
# term (generated: scripts/build_kana_readings.py), longest first so that a whole term wins.
_KANA_WORDS = tuple(sorted({**dict(KANA_READINGS), **dict(_KANA_WORDS)}.items(), key=lambda kv: (-len(kv[0]), kv[0])))


def kana_to_kanji(text: str) -> str:
    """Only the kana-only key words replaced (for retrieval queries: case and spacing kept)."""
    t = unicodedata.normalize("NFKC", text or "")
    for kana, kanji in _KANA_WORDS:
        if kana in t:
            t = t.replace(kana, kanji)
    return t


def normalize(text: str) -> str:
    """NFKC, lower case, kana-only key words in kanji, spaces between Japanese words removed."""
    t = unicodedata.normalize("NFKC", text or "").lower()
    for kana, kanji in _KANA_WORDS:
        if kana in t:
            t = t.replace(kana, kanji)
    return re.sub(r"(?<=[\u3040-\u30ff\u4e00-\u9fff])\s+(?=[\u3040-\u30ff\u4e00-\u9fff])", "", t)


# ---------------------------------------------------------------- carriers

# Order matters: the more specific names first ("NTTコミュニケーションズ" before "NTT").
CARRIER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ntt-com", re.compile(r"ntt\s*コミュニケーションズ|ntt\s*com\b|nttcom|ntt\s*communications|\bocn\b|ドットフォン|dotphone|arcstar|エヌ・?ティ・?ティ・?コミュニケーションズ")),
    ("ntt-east-west", re.compile(r"ntt\s*(東日本|西日本|東西|東|西|east|west)?(\s*(/|and|・|&)\s*(west|east|西日本|東日本|西|東))?|エヌ・?ティ・?ティ|ひかり電話|光電話|hikari\s*denwa|フレッツ|flet'?s|ntt東|ntt西|東日本電信電話|西日本電信電話")),
    ("kddi", re.compile(r"kddi|\bau\b|auひかり|au\s*hikari|ケーディーディーアイ|ひかりone|hikari\s*one")),
    ("softbank", re.compile(r"ソフトバンク|softbank|soft\s+bank|\bodn\b|おとくライン|otoku\s*line|bbフォン|bb\s*phone|yahoo!?\s*bb")),
)

CARRIER_NAMES = {
    "ntt-east-west": {"ja": "NTT東日本・西日本", "en": "NTT East/West"},
    "ntt-com": {"ja": "NTTコミュニケーションズ(OCN)", "en": "NTT Com (OCN)"},
    "kddi": {"ja": "KDDI", "en": "KDDI"},
    "softbank": {"ja": "ソフトバンク", "en": "SoftBank"},
}


def find_carriers(norm: str) -> list[str]:
    """Carrier ids mentioned, in order of the patterns; "NTT" inside "NTT Com" counts once."""
    found: list[str] = []
    rest = norm
    for cid, pat in CARRIER_PATTERNS:
        if pat.search(rest):
            found.append(cid)
            rest = pat.sub(" ", rest)
    return found


def strip_carriers(norm: str) -> str:
    for _, pat in CARRIER_PATTERNS:
        norm = pat.sub(" ", norm)
    return re.sub(r"\s+", " ", norm).strip()


# ---------------------------------------------------------------- small intents


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts))


_GREETING = _rx(
    r"^(hi|hello|hey|good (morning|afternoon|evening)|yo|greetings)\b[\s!.,?]*(there|bot)?[\s!.,?]*$",
    r"^(こんにちは|こんばんは|おはよう(ございます)?|はじめまして|よろしく(お願いします)?|もしもし|どうも|やあ|ハロー)[\s!！。.?？ー〜~]*$",
)
_CAPABILITIES = _rx(
    r"what (can|do) you (do|help|answer)", r"who are you", r"what are you\b", r"how (can|do) (i|you) use",
    r"what is this (bot|service)", r"^help[\s!?.]*$", r"^/(start|help)\b",
    r"何が(でき|わか|分か)", r"何ができ", r"あなたは(誰|だれ|何)", r"使い方", r"どんな(こと|質問)", r"^ヘルプ",
    r"何を(聞け|質問でき|教えて(くれ|もら)え)",
)
_THANKS = _rx(r"^(thanks|thank you|thx|ok|okay|got it|great|cool)[\s!.]*$",
              r"^(ありがとう(ございます|ございました)?|了解(です|しました)?|わかりました|分かりました|助かりました|ok)[\s!！。.]*$")
_MORE = _rx(r"^(more|more details?|details|tell me more|continue|go on|next)[\s!.?]*$",
            r"^(詳しく|くわしく|詳細|もっと(詳しく|くわしく)?|続き|つづき|続けて|次)(を?(教えて|お願いします|見せて|表示))?(ください)?[\s!！。.?？]*$")
_HUMAN = _rx(
    r"^/(human|operator|agent)\b",
    r"\b(talk|speak|chat)\s+(to|with)\s+((a|an|some|the)\s*(one|body|human|person|real person|agent|operator|staff|people)\b|(someone|somebody|a human|humans)\b)",
    r"\b(real|live|human)\s+(person|agent|human|operator|support)\b", r"\bconnect me\b",
    r"\b(want|need|get)\s+(a|an)?\s*(human|person|operator|agent)\b", r"\b(human|operator|agent)\s*,?\s*please\b",
    r"(担当|担当者|人間|有人|オペレーター|オペレータ|スタッフ|係の人|人)(と|に)(話|相談|代わ|かわ|つな|繋)",
    r"(担当|担当者|オペレーター|人間|スタッフ)(を|に)(呼|お願い|つない|繋い)", r"有人(対応|サポート|窓口)",
    r"(人|担当者|オペレーター)に(対応|引き継)", r"直接(相談|話)したい",
)
# The same request in other registers. Japanese: a person ("担当の方", "詳しい方", "どなたか", "人") and
# a verb of talking or connecting ("お話し", "ご相談", "おつなぎ", "代わって", "見て") in any polite or
# casual request form ("させていただけますか", "いただけないでしょうか", "してもらえる？", "したいです").
# English: asking for, or to be passed to, someone ("is there a human", "hand this over to someone on
# your team", "can somebody call me back", "put me through to a specialist").
_JA_PERSON = (
    r"(担当(者|の方|の人)?|人間|有人|オペレーター?|スタッフ|係(の(方|人))?|サポート(の(方|人)|担当|窓口)?|窓口の(方|人)|"
    r"専門(家|の(方|人))|詳しい(方|人)|(わかる|分かる)(方|人)|どなた(か|様)?|誰か|だれか|(?<![犯個他知友本名外の一二三数何各全])人)(さん|様|さま)?"
)
_JA_CONTACT_VERB = r"(お?話|ご?相談|お?つな|お?繋|代わ|かわ|替わ|換わ|お?取り?次|ご?連絡|お?電話|見て|診て|対応し|引き継|ご?確認(し|いただ|頂)|調べて|お?聞き|伺)"
_JA_REQUEST = (
    r"(たい|させて|せて|いただけ|いただき|いただきたい|頂け|頂き|ください|下さい|くれ|もらえ|もらい|ほしい|欲しい|"
    r"でき(ます|ません)?か|できる[？?]|できない[？?]|お願い|願え|可能|(せ|れ)(ます|ません)か|(せ|れ)(る|ない)[？?]|りますか|がいい|が良い)"
)
_HUMAN_MORE = _rx(
    _JA_PERSON + r"(と|に|へ|で|から|の方と|の方に)?(直接|少し|一度|ちょっと|すぐ)?" + _JA_CONTACT_VERB + r"[^。！？!?]{0,12}" + _JA_REQUEST,
    r"(ボット|bot|機械|ai|自動応答|チャット)(じゃなく|ではなく|より)[^。！？]{0,8}(人|担当|人間|オペレーター|スタッフ)",
    r"(お?電話|通話)で(の)?(ご?相談|お?話|問い合わせ|お問い合わせ)(し)?(を)?(させて|したい|できますか|できませんか|できる[?？]|お願い|いただけ)(?![^。！？]{0,6}(窓口|ところ|場所|先))",
    r"折り?返し(の)?(お?電話|ご?連絡)",
    r"\bis (there|anyone|anybody|someone|somebody) (a |an |any )?(real |actual |live )?(human|person|people|one|body|agent|operator|staff)\b",
    r"\b(real|actual|live|human)\s+(person|people|agent|human|operator|support|being)\b",
    r"\b(talk|speak|chat)\s+(to|with)\s+((a|an|some|your|one of your|a member of (your |the )?)\s*(real |actual |live |human )?(person|people|human|being|agent|operator|staff|specialist|expert|representative|rep|engineer|team|colleague|manager|supervisor)|someone|somebody|anyone|anybody)\b",
    r"\b(have|get|let) (someone|somebody|a person|a human|an agent|an operator|your (team|staff|support))\b[^.!?]{0,10}\b(call|contact|phone|email|reach|get back to|get in touch with|look at|check|help)\b",
    r"\b(not|rather than|instead of) (a|the|this|talking to (a|the|this)) (bot|machine|chatbot)\b",
    r"\b(pass|hand|forward|escalate|transfer)\b[^.!?]{0,15}\b(on |over )?to (a |an |some |the |your )?(one|body|human|person|agent|operator|staff|someone|somebody|specialist|expert|team|support|colleague|manager|supervisor|whoever)\b",
    r"\bis there (someone|somebody|anyone|anybody|a person|a human|a real person)\b[^.!?]{0,20}\b(talk|speak|chat|call|contact|help)\b",
    r"\b(get|find) me (a |an |some )?(real |actual )?(someone|somebody|human|person|operator|agent|specialist|expert|representative)\b",
    r"\bescalate (this|it|my|our)\b", r"\bput me (through|in touch)\b", r"\bconnect (me|us)\b", r"\btransfer me\b",
    r"\b(can|could|would|will|may) (someone|somebody|a person|a human|an agent|an operator|your (team|staff|support)|one of your (staff|team|people|engineers))\b"
    r"[^.!?]{0,25}\b((call|contact|phone|ring|email|reach|get back to|get in touch with|help) (me|us)|look at (this|it|my|our)|take over)\b",
    r"\b(call|ring|phone|get back to) (me|us) back\b|\b(give|gimme) (me|us) a (call|ring)( back)?\b",
    r"\b(someone|somebody) (from|on|in) (your|the) (team|support|staff|side|company|office)\b",
    r"\b(any|a|real|actual|live)\s+(human|person|operator|agent|representative)s?\b[^.!?]{0,6}\?$|^(human|operator|agent|representative|person)[\s!.?]*$",
)
# "NTTの担当者と話したい", "should I talk to someone at KDDI?", "警察に相談したい": the person is a third party.
_THIRD_PARTY = _rx(
    r"(ntt|kddi|ソフトバンク|softbank|ocn|キャリア|通信会社|電話会社|プロバイダ|警察|業者|メーカー|ベンダー|保守会社|販売店|センター)(の|に|へ|で)",
    r"\b(at|from|with|in) (ntt|kddi|softbank|ocn|the carrier|my carrier|our carrier|the police|the vendor|our vendor|the maker|the provider)\b",
    r"\bwho (should|do|can|would) (i|we)\b",
)
_FAILURE = _rx(
    r"(did ?n'?t|does ?n'?t|did not|does not|not)\s+(help|work|answer|solve|make sense)",
    r"\b(useless|not helpful|unhelpful|no help|that'?s not what i asked|wrong answer)\b",
    r"(役に立た|役立た|役に立ちませ|役立ちませ|解決しな|解決していな|解決でき|参考にならな|答えになって|意味がな|違う答え|そうじゃな|使えな)",
    # other ways of saying it, polite or blunt: "that's not what I need", "you're not getting it",
    # "役に立ってない", "それじゃ意味ない", "聞きたいのはそういうことじゃない", "全然ダメ"
    r"\b(not|isn'?t|wasn'?t)\s+(really |at all |very )?(useful|helpful|what i (asked|need|needed|want|wanted|meant|was asking|am asking|was looking for|am looking for))\b",
    r"\b(that|this|it|that answer|this answer)('?s| is| was)\s+(wrong|no good|not right|not it|nonsense|pointless|irrelevant|off[- ]topic|no use)\b",
    r"\b(did ?n'?t|does ?n'?t|do ?n'?t|did not|does not|do not)\s+(really |even )?(answer (it|that|my|anything|the question)|help|get it)\b",
    r"\byou('?re| are)\s+not\s+(getting|understanding|listening|helping|answering)\b|\byou (don'?t|didn'?t|do not|did not) (get|understand)\b",
    r"\b(makes? no sense|does ?n'?t make (any )?sense|not making (any )?sense|(that|this|it)('?s| is) (confusing|not clear|unclear))\b",
    r"\b(miss(ed|es|ing)? the point|waste of (my )?time|not what i'?m (asking|looking for)|doesn'?t answer|nope|meh)\b",
    r"\b(still|again)\s+(useless|wrong|confused|lost|stuck|unhelpful|unclear|nothing|no (help|use|good)|not (help\w*|useful|it|what|clear|good|answer\w*))\b",
    r"\bstill (does ?n'?t|do ?n'?t|did ?n'?t|is ?n'?t) (help|answer|make sense|work)\b",
    r"\bi (still )?(do ?n'?t|do not|can'?t|cannot) (see how|understand how) (that|this|it) (helps|answers)\b",
    r"(役に立って(い)?(ない|ません|な[いく])|役立って(い)?(ない|ません)|役に立ってね|意味(が|は)?(ない|ねー|ねえ|なし|ありません|ないです)|"
    r"それじゃ(あ)?(意味|ダメ|だめ|駄目|わから|分から|解決|答え)|そういう(こと|意味|話|の)じゃ(な|あり)|"
    r"(聞きたい|知りたい|聞いてる|聞いている|質問してる|質問した)(の|こと)(は|が)[^。！？]{0,12}(じゃな|ではな|ではあり|違)|"
    r"答え(に|が)(なって(い)?(ない|ません)|ずれ)|的外れ|(ずれて|ズレて)(る|い|ます)|(全然|まったく|全く|ぜんぜん)(違|ダメ|だめ|駄目|わから|分から|役|参考|意味|解決|答え)|"
    r"(違う|ちがう)(んだよ|んだけど|んです(けど|が))|^(いや|いえ|うーん|うーむ|んー|ちょっと)?[、,\s]*(違う|ちがう|違います)(よ|って)?[。!！]*$|"
    r"(全然|何も|なにも|ぜんぜん)(わかって|分かって)(ない|ません)|(わかって|分かって)(ない|ません)(な|ね|よ|じゃん)[。!！]*$|(わかって|分かって)くれ(ない|ません)|"
    r"(ダメ|だめ|駄目)(だ(な|わ|ね|よ)?|です(ね)?|じゃん)?[。!！]*$|不十分(です|だ|でした)?[。!！]*$|微妙(です|だ|。|$)|参考になりませ|ピンと(こない|来ない|きません|来ません)|(いまいち|イマイチ)(わから|分から|ピン|理解|よく)|"
    r"(まだ|やっぱり|やはり|結局)(よく|全然|いまいち|イマイチ)?(わから|分から|解決しない|解決しません|役に|意味))",
)
_HOSTILE = _rx(
    r"ignore (all |any |your |the |previous |prior |above )+(instructions|rules|prompts?)",
    r"disregard (all |your |the |previous )*(instructions|rules)",
    r"(system|hidden|initial) prompt", r"\bjailbreak\b", r"\bdeveloper mode\b", r"\bdan mode\b",
    r"(print|show|reveal|dump|tell me|give me|display|output|list|leak)\b.{0,40}\b(secrets?|config(uration)?|env(ironment)?( var(iable)?s?)?|api ?keys?|tokens?|passwords? of (the|your) (bot|server)|credentials|settings)",
    r"\.env\b", r"os\.environ", r"pbxbot_",
    r"(指示|命令|ルール|設定|プロンプト)を(すべて|全て|全部)?(無視|忘れ)",
    r"(秘密|シークレット|トークン|環境変数|設定(値|内容|ファイル)|apiキー|api key|パスワード|認証情報).{0,20}(表示|教え|出力|見せ|開示|出して|送って)",
    r"システムプロンプト",
    r"\b(what'?s|what is|tell me|send me|share)\b.{0,20}\b(your|the bot'?s?|the)\b.{0,25}\b(token|api ?key|secret|password|database url|connection string|credentials)",
    r"\b(operator|admin|bot|slack|telegram|line|api) (token|secret|key|password)\b.{0,30}(\?|please|now)",
    r"\bxox[bp]-|\bsk-[a-z0-9]",
)
_DOMAIN = _rx(
    r"pbx|ip[- ]?phone|ip電話|ip-pbx|sip|voip|asterisk|disa|toll|fraud|hack|hijack|compromis|takeover|take over|international|overseas|abroad",
    r"attack|scan|\bcall(s|ing|ed)?\b|\bphone|\bbill|\bcharge|\binvoice|\brefund|money back|\bwaive|\bdisput|reimburs|\bcarrier|telecom|\bline\b|\bdial|050|0120|5060|\bport\b|password|router|firewall|\blog(s)?\b|police|ministry|\bmic\b|regulat|block|bar(red|ring)?\b|suspend|prefix|country code|premium|irsf",
    r"電話|通話|発信|着信|国際|海外|乗っ取|のっと|不正|ハッキング|侵入|攻撃|請求|料金|明細|返金|補償|支払|払う|通信会社|キャリア|回線|休止|規制|停止|止め|止ま|センター|警察|総務省|パスワード|ルーター|ファイアウォール|ポート|ログ|保守|業者|交換機|主装置|被害|詐欺|国番号|不審|異常|高額",
)
_STOP_INTENT = _rx(r"stop|block|bar|suspend|cut off|restrict|prevent .*call", r"止め|止ま|休止|規制|停止|ブロック|ストップ|使えないように")


def is_greeting(norm: str) -> bool:
    return bool(_GREETING.search(norm.strip()))


def is_capabilities(norm: str) -> bool:
    return len(norm) <= 80 and bool(_CAPABILITIES.search(norm))


def is_thanks(norm: str) -> bool:
    return bool(_THANKS.search(norm.strip()))


def is_more(norm: str) -> bool:
    return bool(_MORE.search(norm.strip()))


def wants_human(norm: str) -> bool:
    if _HUMAN.search(norm):
        return True
    return bool(_HUMAN_MORE.search(norm)) and not _THIRD_PARTY.search(norm)


def says_not_helped(norm: str) -> bool:
    return len(norm) <= 160 and bool(_FAILURE.search(norm))


def is_hostile(norm: str) -> bool:
    return bool(_HOSTILE.search(norm))


class DomainVocabulary:
    """Domain words from the knowledge base's lexicon (knowledge/lexicon/terms.yaml: data shared with
    retrieval), so that "JAIPA", "アスタリスク" or "Kokusai Denwa" count as in scope."""

    def __init__(self, words: Iterable[str]):
        ascii_words = sorted({w for w in words if w.isascii() and len(w) >= 3}, key=len, reverse=True)
        other = sorted({w for w in words if not w.isascii() and len(w) >= 2}, key=len, reverse=True)
        parts = [rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])" for w in ascii_words] + [re.escape(w) for w in other]
        self._rx = re.compile("|".join(parts)) if parts else None

    @classmethod
    def load(cls, path: Path) -> "DomainVocabulary":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return cls(())
        words: list[str] = []
        for group in data.get("synonyms") or []:
            words.extend(str(t) for t in (group.get("terms") or []))
        words.extend(str(t) for t in (data.get("terms") or []))
        return cls(normalize(w) for w in words if w)

    def search(self, norm: str) -> bool:
        return bool(self._rx and self._rx.search(norm))


_EXTRA_DOMAIN = _rx(
    r"jaipa|jpcert|\btca\b|\bnpa\b|警察庁|電気通信事業者協会|注意喚起|kokusai|futoriatsukai|hikari|アスタリスク|asterisk|"
    r"golden week|ゴールデンウィーク|年末年始|連休|\bunplug|internet|インターネット"
)


def in_domain(norm: str, vocabulary: "DomainVocabulary | None" = None) -> bool:
    return (bool(_DOMAIN.search(norm)) or bool(_EXTRA_DOMAIN.search(norm)) or bool(find_carriers(norm))
            or bool(vocabulary and vocabulary.search(norm)))


def wants_to_stop_calls(norm: str) -> bool:
    return bool(_STOP_INTENT.search(norm))


_CONTEXTUAL = _rx(
    r"^(それ|その|これ|この|そこ|そちら|あれ|じゃあ|では|で、|なら)", r"も(対象|使え|同じ|必要|有料|無料|止ま|でき|含ま|可能|大丈夫)",
    r"^(and|also|so|but|then)\b", r"\b(it|that|this|they|those|them|there|its)\b",
)


def is_contextual(norm: str) -> bool:
    """A short question that leans on the previous one ("それって有料？", "does it cover 050 numbers?")."""
    short = len(norm) <= 20 if not re.search(r"[a-z]{3}", norm) else len(norm.split()) <= 8
    return short and bool(_CONTEXTUAL.search(norm.strip()))


_FOLLOWUP_FILLER = re.compile(
    r"の場合|のとき|の時|では|だと|だったら|なら|でも|って|どう(なる|する|ですか|でしょうか|でしょう)?|は|も|の|"
    r"\b(what|how) about\b|\b(and|for|with|in the case of|instead|then|same|case|what|about)\b|[\s?？。!！、,.]"
)


def is_followup(norm: str) -> bool:
    """Only a carrier and filler words ("KDDIの場合は？", "what about SoftBank?", "and for OCN?"):
    the previous question again, for another carrier."""
    if not find_carriers(norm):
        return False
    return len(_FOLLOWUP_FILLER.sub("", strip_carriers(norm))) <= 2


# Retrieval hints: words a question of this kind needs to find its section, used for a second search
# when the first is unsure (users ask "how can I tell..." where documents say "signs", "symptoms").
_HINTS: tuple[tuple[re.Pattern[str], dict[str, str]], ...] = (
    (_rx(r"(電話)?番号|連絡先|窓口|phone number|number (of|for)|\bcall (them|whom)\b|contact (number|details)"),
     {"ja": "電話番号と受付時間", "en": "phone number and hours"}),
    (_rx(r"how (can|do|would) (i|we|you) (tell|know|detect|notice|spot|find out)|signs? of|symptoms?|気づ|気付|見分け|兆候|わかる方法|分かる方法"),
     {"ja": "兆候 気づき方 請求書 通話明細", "en": "signs symptoms bill call log"}),
    (_rx(r"what (should|do|must|can) (i|we) do|what to do|(do|should) (i|we) (first|unplug|disconnect)|first step|"
         r"(何|なに)をすれば|どうすれば|どうしたら|最初に|まず(何|なに)|やるべきこと|すべきこと"),
     {"ja": "今すぐやること 手順", "en": "what to do right now in order"}),
    (_rx(r"土日|週末|夜中|夜間|深夜|休日|連休|祝日|weekend|night|holiday"),
     {"ja": "夜間 土日祝日 時間帯", "en": "nights weekends holidays"}),
)


def retrieval_hint(norm: str, lang: str) -> str:
    return " ".join(h[lang] for rx, h in _HINTS if rx.search(norm))
