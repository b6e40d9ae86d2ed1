"""The containment steps of an incident: what to do first (the first-steps guide, in its order),
then how to stop international calls with the user's carrier. Used by the incident skill and by
the re-announcement of an urgent ticket nobody has claimed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from bot.conversation import composer
from bot.conversation.texts import t

if TYPE_CHECKING:  # pragma: no cover
    from bot.conversation.skills.base import Toolkit

_CONTAINMENT_QUERY = {
    "ja": "乗っ取り 今すぐやること 国際電話の発信を止める 利用休止 発信規制",
    "en": "what to do right now stop international outgoing calls bar suspend",
}
_STOP_QUERY = {
    "ja": "{carrier} 国際電話 発信 止める 利用休止 申し込み",
    "en": "{carrier} stop international outgoing calls suspend block apply",
}
_IP050_QUERY = {"ja": "050 IP電話 乗っ取り ID パスワード プロバイダ", "en": "050 IP phone hijacked SIP ID password provider"}
KNOWN_CARRIERS = ("ntt-east-west", "ntt-com", "kddi", "softbank")


@dataclass
class Steps:
    text: str
    citations: tuple
    confidence: float
    rest: list[composer.Piece]


def containment(kit: "Toolkit", lang: str, carrier: str | None, ip050: bool, fixed: Sequence[str],
                carrier_name: str = "", book: composer.CitationBook | None = None, reserve: int = 0) -> Steps:
    """The containment steps in order (first-steps guide), then the carrier's stop line. `book`:
    the reply's citation numbering, when more text with citations follows the steps."""
    budget = kit.budget(lang, fixed, reserve)
    steps_passage, res = kit.guide_opening(_CONTAINMENT_QUERY[lang], lang, "containment")
    stop_passage = None
    stop_header = ""
    if carrier in KNOWN_CARRIERS:
        stop_passage, _ = kit.guide_opening(_STOP_QUERY[lang].format(carrier=carrier_name), lang, "stop-international",
                                            carrier)
        stop_header = t("carrier_header", lang, carrier=carrier_name)
    elif ip050:
        stop_passage, _ = kit.guide_opening(_IP050_QUERY[lang], lang, "050-ip")
    if stop_passage is not None and steps_passage is not None and stop_passage.doc_id == steps_passage.doc_id:
        stop_passage = None
    book = book if book is not None else composer.CitationBook()
    parts: list[str] = []
    rest: list[composer.Piece] = []
    stop_budget = 0
    stop_pieces: list[composer.Piece] = []
    if stop_passage is not None:
        stop_pieces = composer.pieces_of([stop_passage], "", max_passages=1)
        stop_budget = min(budget // 2, max(composer.measure(stop_pieces[0].text, lang) + 8, budget // 3)) if stop_pieces else 0
    if steps_passage is not None:
        shown, rest = composer.take_in_order(composer.pieces_of([steps_passage], "", max_passages=1), lang,
                                             budget - stop_budget - composer.measure(stop_header, lang))
        parts.append(composer.render(shown, lang, book))
    if stop_pieces:
        shown, more = composer.take_in_order(stop_pieces, lang, stop_budget)
        body = composer.render(shown, lang, book)
        parts.append(f"{stop_header}\n{body}" if stop_header else body)
        rest = rest + more
    return Steps("\n".join(parts), book.citations(), res.confidence, rest)
