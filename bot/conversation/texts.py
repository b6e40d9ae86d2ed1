"""Fixed template text: the only words the bot says that are not taken from a cited passage.

Nothing here states a fact about toll fraud, a phone number, an amount or a promise: those come
from the knowledge base with citations. Never format user text or settings into these strings.
"""

from __future__ import annotations

import re
from functools import lru_cache

TEXTS: dict[str, dict[str, str]] = {
    "more_hint": {"ja": "「詳しく」と送ると続きを表示します。", "en": "Say 'more' for details."},
    "no_more": {
        "ja": "この件でお見せできる続きはもうありません。別の質問をどうぞ。",
        "en": "There is nothing more on that. Please ask another question.",
    },
    "more_header": {"ja": "続き:", "en": "Continued:"},
    "other_language_note": {
        "ja": "(日本語の資料に該当がなかったため、英語の資料から引用しています)",
        "en": "(No English document covers this, so this quotes a Japanese document.)",
    },
    "intro": {
        "ja": "IP-PBX・IP電話の乗っ取り(国際電話の不正発信)について、公的機関や通信会社の情報をもとに出典付きでお答えするボットです。"
        "例:「国際電話を止めるには？」「請求が高額だった」。被害が進行中なら、そのまま状況を書いてください。担当者への引き継ぎもできます。",
        "en": "I answer questions about IP-PBX / IP phone takeover (toll fraud) in Japan, with sources from carriers and authorities. "
        "Try: 'How do I stop international calls?' or 'We got a huge bill'. If calls are going out now, just describe it. "
        "I can also hand you over to a person.",
    },
    "thanks": {
        "ja": "どういたしまして。ほかに気になることがあれば、いつでも聞いてください。",
        "en": "You're welcome. Ask me anything else about it at any time.",
    },
    "scope": {
        "ja": "ごめんなさい、このボットはIP-PBX・IP電話の乗っ取り(国際電話の不正発信)についてだけお答えしています。",
        "en": "Sorry, I can only help with IP-PBX / IP phone takeover (toll fraud, unwanted international calls).",
    },
    "refusal": {
        "ja": "その依頼にはお応えできません。設定や秘密の情報はお見せしません。IP-PBXの乗っ取りについてのご質問ならお答えします。",
        "en": "I can't do that, and I never show settings or secrets. I'm happy to answer questions about IP-PBX takeover.",
    },
    "empty": {
        "ja": "メッセージが空でした。ご質問を入力してください。",
        "en": "Your message was empty. Please type your question.",
    },
    "unknown_language": {
        "ja": "日本語または英語でお書きください。",
        "en": "Please write in English or Japanese.",
    },
    "not_covered": {
        "ja": "申し訳ありません。この質問に答える情報は、このボットの出典(通信会社・総務省などの注意喚起)にはありません。",
        "en": "Sorry, the sources I answer from (carrier and regulator advisories) do not cover this question.",
    },
    "closest_facts": {"ja": "近い内容として、出典にあるのは次のことです:", "en": "The closest the sources come is this:"},
    "offer_person": {
        "ja": "担当者に確認をご希望なら「担当者と話したい」と送るか、下のボタンを押してください。",
        "en": "If you want a person to look into it, say 'talk to a person' or press the button below.",
    },
    "clarify": {
        "ja": "もう少し詳しく教えてください。たとえば「今も海外への発信が続いている」「高額な請求が届いた」「国際電話を止めたい」など、状況がわかるとお答えできます。",
        "en": "Could you tell me a little more? For example: calls abroad are going out now, a big bill arrived, or you want to block international calls.",
    },
    "dispute_header": {
        "ja": "請求についての申し立ては担当者が確認します。出典にある料金の扱いは次のとおりです:",
        "en": "A person will look at your claim about the bill. What the sources say about who pays:",
    },
    "also_asked": {"ja": "ご質問について:", "en": "On your question:"},
    "not_helped": {
        "ja": "お役に立てずすみません。言い方を変えて質問していただくか、「担当者と話したい」と送ってください。",
        "en": "Sorry that did not help. Try asking another way, or say 'talk to a person'.",
    },
    "incident_header": {
        "ja": "被害が続いている可能性があります。まず次の手順で止めてください:",
        "en": "This may still be costing you money. Stop it first:",
    },
    "carrier_header": {"ja": "{carrier}の場合:", "en": "For {carrier}:"},
    "ask_facts": {"ja": "わかれば教えてください: {items}", "en": "If you can, tell us: {items}"},
    "fact_carrier": {"ja": "契約中の通信会社(NTT・KDDI・ソフトバンク等)", "en": "your carrier (NTT, KDDI, SoftBank...)"},
    "fact_still_happening": {"ja": "今も発信が続いているか", "en": "whether calls are still going out"},
    "fact_noticed_at": {"ja": "いつ気づいたか", "en": "when you noticed"},
    "fact_vendor": {"ja": "PBXのメーカー・保守業者", "en": "the PBX maker or maintainer"},
    "handoff": {
        "ja": "担当者に引き継ぎました(受付番号 {ticket})。担当者がこのチャットで返信します。",
        "en": "I've passed this to a person (ticket {ticket}). They will reply here in this chat.",
    },
    "handoff_urgent": {
        "ja": "緊急として担当者に引き継ぎました(受付番号 {ticket})。担当者がこのチャットで返信します。それまで上の手順を進めてください。",
        "en": "I've passed this to a person as urgent (ticket {ticket}). They will reply here in this chat; meanwhile, follow the steps above.",
    },
    "ticket_ack": {
        "ja": "メッセージを担当者に伝えました(受付番号 {ticket})。担当者がこのチャットで返信します。",
        "en": "Your message has been added for the person handling your case (ticket {ticket}). They will reply here.",
    },
    "ticket_ack_urgent": {
        "ja": "メッセージを担当者に伝えました(受付番号 {ticket})。担当者の返信までの間も、お送りした手順を進めてください。",
        "en": "Your message has been added for the person handling your case (ticket {ticket}). Until they reply, please keep following the steps I sent.",
    },
    "reannounce_header": {
        "ja": "お待たせしています。担当者はまだ対応できていませんが、引き続き手配中です(受付番号 {ticket})。その間に次の手順を進めてください:",
        "en": "Sorry for the wait: no one has picked up your case yet, but it is still queued (ticket {ticket}). Meanwhile, please do this:",
    },
    "error": {
        "ja": "申し訳ありません。うまく処理できませんでした。もう一度送っていただくか、「担当者と話したい」と送ってください。",
        "en": "Sorry, something went wrong on my side. Please send it again, or say 'talk to a person'.",
    },
    # Said by the channels around a conversation (bot/channels/pipeline.py), with {reach}: how a
    # person is reached on that channel (reach_button or reach_command).
    "welcome": {
        "ja": "IP-PBX・IP電話の乗っ取り(国際電話の不正発信)について、公的機関や通信会社の情報をもとに出典付きでお答えします。"
        "状況をそのまま書いて送ってください。{reach}",
        "en": "I answer questions about IP-PBX / IP phone takeover (toll fraud) in Japan, with sources from carriers "
        "and authorities. Just describe what is happening. {reach}",
    },
    "help": {
        "ja": "例:「国際電話を止めるには？」「請求が高額だった」。被害が進行中なら、そのまま状況を書いてください。{reach}",
        "en": "Try: 'How do I stop international calls?' or 'We got a huge bill'. If calls are going out now, just "
        "describe it. {reach}",
    },
    "reach_button": {
        "ja": "担当者と話したいときは下のボタンを押してください。",
        "en": "To reach a person, press the button below.",
    },
    "reach_command": {
        "ja": "担当者と話したいときは {command} と送るか、ボタンを押してください。",
        "en": "To reach a person, send {command} or press the button.",
    },
    "text_only": {"ja": "テキストでお送りください。", "en": "Please send your question as text."},
    "working_on_it": {"ja": "確認しています…", "en": "Looking into it…"},
    "rate_limited": {
        "ja": "申し訳ありません、短い時間にたくさんのメッセージを受け取りました。{seconds}秒ほどお待ちいただいてから、もう一度お送りください。",
        "en": "Sorry, we received many messages in a short time. Please wait about {seconds} seconds and send it again.",
    },
}

LIST_SEP = {"ja": "、", "en": "; "}


def t(key: str, lang: str, **kw: str) -> str:
    entry = TEXTS[key]
    text = entry.get(lang) or entry["en"]
    return text.format(**kw) if kw else text


def all_template_lines() -> set[str]:
    """Every fixed text, both languages, unformatted."""
    return {v for entry in TEXTS.values() for v in entry.values()}


@lru_cache(maxsize=1)
def _template_patterns() -> tuple[re.Pattern[str], ...]:
    return tuple(
        re.compile(".+".join(re.escape(part) for part in re.split(r"\{[a-z]+\}", text)))
        for text in all_template_lines()
    )


def is_template_line(line: str) -> bool:
    """True when a reply line is fixed template text (one template, or the bilingual "en / ja"
    pair), with its {placeholders} filled. Grounding checks skip exactly these lines."""
    pats = _template_patterns()
    if any(p.fullmatch(line) for p in pats):
        return True
    parts = line.split(" / ")
    return len(parts) > 1 and all(any(p.fullmatch(x) for p in pats) for x in parts)
