"""Who pays for the calls a hijacker made: the opening of the who-pays guide, in its own order.

A user who contests a bill, or who asks in the middle of an incident "do we have to pay for this?",
needs the same few facts whatever words they use: in Japan the subscriber generally pays, the one
relief found (NTT East/West's 2015 special measure), no refund can be promised, and note when you
asked for the block. The who-pays guide opens with exactly that, so it is shown as written, as the
incident skill shows the first-steps guide's opening. (Sentences picked by their similarity to the
user's story led with how to block, or with a list of court rulings whose content was never checked.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.conversation import composer
from bot.conversation.answering import WEAK_TYPES

if TYPE_CHECKING:  # pragma: no cover
    from bot.conversation.skills.base import Toolkit

_QUERY = {"ja": "乗っ取り 国際通話料 誰が払う 返金 救済", "en": "who pays hijacked international call charges refund relief"}


def only_who_pays(asked: set[str]) -> bool:
    """What a question asks (AnswerTypes.asked) is who pays and nothing more specific ("how much did
    NTT refund?" asks an amount, which a search finds)."""
    return not (asked - {"payment", *WEAK_TYPES})


def who_pays(kit: "Toolkit", lang: str, budget: int) -> tuple[list[composer.Piece], list[composer.Piece], float]:
    """The sentences that fit in `budget`, the rest (for "more"), and the search's confidence."""
    lead, result = kit.guide_opening(_QUERY[lang], lang, "refund")
    if lead is None:
        return [], [], result.confidence
    shown, rest = composer.take_in_order(composer.pieces_of([lead], "", max_passages=1), lang, budget)
    return shown, rest, result.confidence
