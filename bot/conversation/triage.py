"""Incident triage: is a takeover happening to this user now, and which facts are still missing.

An incident is reported in the present or just-past tense about the user's own line: calls going out
now, a bill that just arrived with calls abroad, the carrier called about unusual traffic, a call log
full of short calls abroad. A general or hypothetical question ("what should I do if...") is not one.
Facts are extracted from every user message of the conversation for the ticket summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bot.conversation.signals import find_carriers, normalize


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts))


# -- incident in progress ------------------------------------------------------------------

_JA_CALLS_NOW = _rx(
    r"(今|いま|現在|今も|まだ|ずっと|次々|勝手に|知らない間に|身に覚えのない|見覚えのない|どんどん|止まらない|大量に?)[^。！？]{0,30}(国際|海外|外国)[^。！？]{0,20}(発信|電話|通話|かけ|かか|繋が|つなが)",
    r"(国際|海外|外国)[^。！？]{0,20}(発信|電話|通話)[^。！？]{0,20}(されて(い|る)|され続け|し続け|かけられ|かかって(い|る)|止まらない|止まりません|続いて|出て(い|る)|されまくって|している|してる|発生して)",
    r"(国際|海外)(電話|通話|発信)が(止まらない|止まりません|どんどん|次々|大量|勝手に)",
    r"(乗っ取られ|ハッキングされ|不正利用され|侵入され|不正アクセスされ)(た|ました|てる|ている|ています|てます)(みたい|かも|らしい|ようです|ようだ|と思う|っぽい|可能性)?(です|しれない|しれません)?([。！!？?…]|$)",
    r"(発信|通話)が(異常|急増|大量|何十倍|何倍)",
    r"(発信|通話|電話)が?(止まらない|止まりません|止められない|止まってない|止まっていない)",
    r"(不正発信|不正な発信|不正通話)(され|が(起き|あ|発生|続|止まら)|して(い|る))",
)
_JA_BILL = _rx(
    r"(請求|請求書|明細|料金)[^。！？]{0,25}(届|来|きた|きて|見たら|確認したら|になって|になってい)[^。！？]{0,40}(国際|海外|万円|高額|身に覚え|見覚え|知らない|数十万|数百万|桁)",
    r"(高額|身に覚えのない|見覚えのない|覚えのない|とんでもない)[^。！？]{0,20}(請求|国際電話|通話料|料金)",
    r"(国際|海外)[^。！？]{0,15}(通話料|電話代|料金)[^。！？]{0,20}(請求|届|来)",
    r"\d[\d,，]*\s*万?円[^。！？]{0,30}(請求|国際|海外)",
)
_JA_CARRIER_CALLED = _rx(
    r"(通信会社|電話会社|キャリア|ntt|kddi|ソフトバンク|ocn|プロバイダ)[^。！？]{0,20}(から)[^。！？]{0,20}(連絡|電話|通知|問い合わせ|警告|知らせ)[^。！？]{0,40}(異常|不審|大量|高額|急増|多い|何十倍|何倍|倍に|増え)",
    r"(異常|不審|大量|不正)な?(通話|発信|トラフィック)[^。！？]{0,30}(連絡|電話|通知|指摘|言われ)",
)
_JA_LOG = _rx(
    r"(通話|発信)(記録|履歴|ログ|明細)[^。！？]{0,40}(国際|海外|外国|国番号)[^。！？]{0,30}(短い|大量|ずらり|並|いっぱい|多数|たくさん|びっしり|だらけ|何百|何千|数百|数千|何十件)",
    r"(通話|発信)(記録|履歴|ログ|明細)[^。！？]{0,30}(短い|大量|ずらり|いっぱい|だらけ)[^。！？]{0,30}(国際|海外|外国)",
    r"(短い|数秒の?)[^。！？]{0,15}(国際|海外)(電話|通話|発信)[^。！？]{0,20}(大量|たくさん|多数|並|いっぱい|だらけ|記録|履歴)",
)
_EN_CALLS_NOW = _rx(
    r"\b(is|are|keeps?|been|still|currently|right now|now)\b[^.!?]{0,40}\b(calling|dialling|dialing|making calls|placing calls|sending calls|calls going out)\b[^.!?]{0,40}\b(abroad|overseas|international|foreign|countr)",
    r"\b(calls?|dialling|dialing)\b[^.!?]{0,40}\b(going out|keep going|keep coming|are going|happening)\b[^.!?]{0,30}(now|right now|still|abroad|overseas|international|countr)",
    r"\b(international|overseas|foreign)\b[^.!?]{0,15}\bcalls?\b[^.!?]{0,40}\b(right now|now|still|won'?t stop|keep|going out|we (never|didn'?t) make|nobody made|no one made)",
    r"\b(we|i|our\b[^.!?]{0,25})\b[^.!?]{0,10}\b(have been|has been|were|was|got|just got|'ve been|'s been|think we'?ve been|think (it|we) (was|were|got))\s+(hacked|compromised|hijacked|breached|taken over)",
    r"\b(someone|somebody|attackers?|hackers?)\b[^.!?]{0,20}(\b(is|are|has been|have been)\b|'s\b|'re\b)[^.!?]{0,20}\b(using|making calls|calling|dialling|dialing)",
    r"\bcan'?t stop (the )?(calls|it)\b", r"\b(calls?)\b[^.!?]{0,20}\bwon'?t stop\b",
    r"\b(calling|dialing|dialling|placing calls|making calls|calls? to)\b[^.!?]{0,60}\b(right now|as we speak|nonstop|non-stop|all (night|weekend|day|morning))\b",
    r"\b(right now|as we speak)\b[^.!?]{0,40}\b(calling|dialing|dialling|calls)\b",
)
_EN_BILL = _rx(
    r"\b(bill|invoice|statement|charges?)\b[^.!?]{0,40}\b(just (arrived|came)|arrived|came in|got|received|shows?|showing|full of|with)\b[^.!?]{0,50}\b(international|overseas|abroad|countr|million|thousands?|huge|massive|enormous|unknown|yen|¥)",
    r"\b(just|we|i)\b[^.!?]{0,10}\b(got|received)\b[^.!?]{0,20}\b(huge|massive|enormous|big|large|crazy|unexpected|insane)\b[^.!?]{0,15}\b(bill|invoice|charges?)",
    r"\b(huge|massive|enormous|unexpected|unexplained)\b[^.!?]{0,20}\b(phone |telephone |call )?(bill|invoice|charges?)\b",
    r"(¥|\byen\b|\bjpy\b)[^.!?]{0,40}\b(international|overseas|calls?)\b[^.!?]{0,30}\b(we|i) (never|didn'?t|did not)",
)
_EN_CARRIER_CALLED = _rx(
    r"\b(carrier|provider|ntt|kddi|softbank|ocn|telco|phone company)\b[^.!?]{0,40}\b(called|phoned|rang|contacted|warned|emailed|notified|alerted|told)\b[^.!?]{0,50}\b(unusual|suspicious|abnormal|strange|high|heavy|irregular|fraudulent|odd|lots of|many|hundreds|international|overseas|abroad)\b",
)
_EN_LOG = _rx(
    r"\b(call (log|record|history|detail)s?|cdrs?)\b[^.!?]{0,50}\b(full of|lots of|hundreds|dozens|many|loads of|short)\b[^.!?]{0,50}(\b(abroad|international|overseas|foreign|countr)|\+\d)",
    r"\b(hundreds|dozens|lots|loads) of\b[^.!?]{0,20}\bshort\b[^.!?]{0,20}\bcalls?\b",
)
_HYPOTHETICAL = _rx(
    r"\b(what should (i|we|one) do if|what (do|to) do if|in case|if (my|our|a|an|the) [^.!?]{0,30}(is|gets|was|were|has been) (hacked|compromised|hijacked))",
    r"\bhow (do|can|would|should) (i|we|you|one) (know|tell|check|find out|detect|see|read|spot|monitor|look|view)\b",
    r"\bhypothetical", r"\bjust curious\b", r"\bwhat if\b|\bsuppose\b|\bimagine\b|\bhow (long|soon|quickly|often) (does|do|would|will|can)\b",
    r"((?<!か)もし|万一|万が一|仮に)", r"(乗っ取られ|不正利用され|被害にあ|被害に遭)(たら|た場合|る前|ないよう|ないため|ないように)",
    r"(かどうか|か確認|を確認する方法|確認方法|見分け|見方|調べ方|どうやって(知|気づ|わか|分か|見|調べ))", r"(とは|って何|ってなに)[？?]?$",
    r"一般(的)?に|\bin general\b|\bgenerally\b",
    r"\bif (we|i|they|you|it|someone)('re| are| get| got| were| was| gets| ever get)?\s*(ever )?(hacked|compromised|hijacked|attacked|breached)\b",
    r"\bhow (high|big|much|bad|large|expensive) (can|could|would|will|might|does|do)\b",
    # what happened to someone else (news, a seminar, another company) is not this user's incident
    r"ニュース|セミナー|記事|報道|事例|他社|よその会社|ある会社|知り合いの会社|聞いた話|と聞き|と聞いた|を聞きました|読みました",
    r"\b((in|on) the news|news (report|article|story|item)|article|seminar|webinar|heard (about|that|of)|read (about|that)|a company (that|which|whose|in|got)|another company|other companies|some companies)\b",
    r"防ぐ|防止|予防|されないよう|ないようにする|\b(prevent|avoid|protect against)\b",
    r"こと(も|が)(ある|あり)|犯人|攻撃者|儲か|もうか|仕組み|\b(why|how does|how do they|criminals?|attackers?)\b",
)
# The incident is over: past and fixed ("去年乗っ取られたけど、もう止まってます", "it's been fixed",
# "the calls stopped after we unplugged it", "今は止まっています"). A month alone is not enough: last
# month's bill arriving today says nothing about whether the calls have stopped.
_RESOLVED = _rx(
    r"去年|昨年|先月の(乗っ取|被害|不正|件)|先月(に)?(乗っ取られ|被害|不正(利用|発信)され)|もう(止ま|止め|対処|解決)|止めてあ|対処済|解決済|対応済|対策済|遮断済|対処してもら|業者が対処|規制済|停止済|止めてもら(った|いました)",
    r"(今は|現在は|すでに|既に|もう)(止まって|止めて|発信されて(い)?ない|かかって(い)?ない|収まって|おさまって|規制して|停止して|休止して)",
    r"(止まりました|止めました|止まった|止めた|解決しました|解決した|収まりました|おさまりました|遮断しました|規制しました|休止しました|停止しました)(?![いらかり])",
    r"\blast year\b|\b(fixed|resolved|already (blocked|barred|stopped|fixed|cut off|suspended))\b|\b(has|have|'s|'ve) been (fixed|resolved|stopped|blocked|barred)\b",
    r"\b(it|calls?|the calls|they|the fraud|the attack|the hack)\b[^.!?]{0,25}(?<!n't )(?<!not )(?<!never )\b(stopped|ended|is over|are over|'s over|died down)\b",
    r"\b(we|they|the vendor|our vendor|the carrier|ntt|kddi|softbank)\b[^.!?]{0,15}(?<!n't )(?<!not )(?<!never )\b(blocked|barred|stopped|unplugged|disconnected|shut (it|them|the pbx|everything) (down|off)|cut (it|them) off|suspended)\b",
    r"\b(happened|was|were|got hacked|were hacked|was hacked)\b[^.!?]{0,15}\b(last month|in (january|february|march|april|may|june|july|august|september|october|november|december)|\d+ (weeks|months) ago|back in)\b",
    r"\bno longer (happening|going|calling|dialing|dialling|an issue|a problem)\b|\bnot happening any ?more\b",
)
# ... but it is going on again or still: "止めたのにまだかかってる", "we blocked it but calls are still going out".
_ONGOING = _rx(
    r"まだ(発信|かか|続|止まら|止まって(い)?ない|出て)|(止めた|規制した|休止した)のに|再開|また(発信|かか|始ま)|相変わらず|依然|"
    r"(今朝|今日|昨夜|今夜|今週|週末)も(発信|国際|海外|かか|続)",
    r"\b(keeps?|kept) (going|coming|showing|happening|calling|dialing|dialling)\b",
    r"\bstill (happening|going|coming|calling|dialing|dialling|being|making|placing|sending|getting|seeing|there)\b",
    r"\b(it'?s|is|are|they'?re|calls are) (happening|going out|calling|dialing|dialling|back) again\b|\b(started|starting) again\b|\bresumed\b",
)


_JA_UNWANTED = _rx(
    r"(勝手に|知らない間に|知らないうちに|いつの間にか|ずっと|次々(に|と)?)[^。！？]{0,20}(発信|電話|かけ|かか|通話)",
    r"大量に?(の)?(発信|電話|通話)(され|が(され|発生|出て|かか|続))",
    r"(知らない|見知らぬ|覚えのない|見覚えのない)(国|番号|相手)[^。！？]{0,20}(発信|電話|かけ|かか|通話)",
    r"(国際電話|国際通話|海外|電話|通話)の?(料金|請求|電話代|通話料)が(すごい|とんでもない|高額|跳ね上が|急増|異常|ありえない|何十万|何百万|数十万|数百万)",
)
_EN_PROGRESSIVE = _rx(
    r"\b(is|are|'s|'re|keeps?|kept|been|started|starts)\s+(making|placing|dialing|dialling|calling|sending)\b",
    r"\b(lots|hundreds|dozens|tons|loads|thousands) of (short |strange |unknown )?calls\b",
)
# Calls the user makes on purpose are not an incident ("our staff are calling customers abroad").
_SELF_CALLS = _rx(
    r"\b(we|i|our (\w+ ){0,2}(staff|employees|team|sales|people|office|branch|workers|members|reps))\s+(often |regularly |usually |frequently |also |mostly )?"
    r"(make|makes|are calling|call|calls|dial|dials|are making|phone|phones)\b",
    r"\b(to|with) our (own )?(office|offices|branch|branches|customers|clients|partners|subsidiar\w+|headquarters|hq|factory|factories|staff|suppliers)\b",
    r"(海外|国際|外国)[^。！？]{0,15}(取引先|顧客|お客|支店|拠点|工場|子会社|本社|グループ会社)|(取引先|顧客|支店|拠点|工場|子会社|本社)[^。！？]{0,10}(海外|国際|外国)",
)

# -- an incident told as evidence ------------------------------------------------------------
# Users often do not say "calls are going out"; they say what they saw: a bill, a call log, the
# PBX's or router's screen, a carrier's warning, with calls abroad in numbers or money. That is an
# incident when the four come together (where, what was seen, how much, and that it is theirs or
# recent): "the router dashboard shows thousands of calls to foreign numbers overnight",
# "交換機の管理画面を見たら海外の番号ばっかり". A question about such evidence ("how do I read my
# call log?") lacks the amount or the ownership and is caught by _HYPOTHETICAL.
_DEST = _rx(
    r"\b(international|overseas|abroad|foreign|other countr|countries|country code|africa|african|middle east|eastern europe|caribbean|south pacific|south america)",
    r"国際|海外|外国|国外|国番号|アフリカ|中東|東欧|南米|カリブ|太平洋の|知らない国|見知らぬ国|国(へ|に|あて|宛)(の)?(通話|発信|電話)",
)
_EVIDENCE = _rx(
    r"\b(bill|billed|invoice|statement|charges?|call (log|record|history|detail|list)s?|cdrs?|logs?|history|records?|"
    r"dashboard|console|admin (page|panel|screen|ui)|web (ui|interface|page)|management (screen|page)|portal|usage|"
    r"router|gateway|pbx (screen|display|report)|report|traffic|voicemail|warning|alert|notice|e-?mail|letter|sms|text message|"
    r"called|phoned|rang|texted|messaged|e-?mailed|warned|notified|alerted|contacted)\b",
    r"\b(line|lines|pbx|phones?|system|extensions?|trunks?|account|number)\b[^.!?]{0,10}\b(made|placed|dialed|dialled|sent|has made|had)\b",
    r"請求|明細|料金|通話料|電話代|ログ|履歴|記録|管理画面|ダッシュボード|画面|ルーター|ルータ|ゲートウェイ|マイページ|利用状況|"
    r"警告|通知|連絡|メール|手紙|はがき|お知らせ|留守電|留守番電話",
)
_AMOUNT_OR_MANY = _rx(
    r"\b(hundreds|thousands|dozens|tons|loads|lots|heaps|huge|massive|enormous|insane|crazy|ridiculous|absurd|sky-?high|skyrocket\w*|"
    r"keeps? (showing up|coming|appearing|popping up)|spik\w+|surg\w+|jump\w*|explod\w+|tripled|doubled|soar\w*|\d+ ?(x|times)|times (more|higher|the usual|normal)|"
    r"million|heavy|high|excessive|a lot of|many|large (number|volume|amount)s?|unusual(ly)?|abnormal(ly)?|suspicious(ly)?|strange(ly)?|weird|odd|unknown|never (made|call)|nobody (here )?(made|calls|called)|no one (here )?(made|calls|called))\b",
    r"\b\d[\d,]{1,}\+? ?(calls|numbers|times|entries|lines)\b", r"\d[\d,.]*\s*(k|m|million|thousand)?\s*(yen|jpy)\b", r"[¥￥]\s*\d",
    r"大量|何百|何千|何十|数百|数千|数十|だらけ|ばっかり|ばかり|ずらっと|ずらり|びっしり|いっぱい|たくさん|めっちゃ|すごい|ものすごい|とんでもない|"
    r"異常|急増|急に増|増えて|跳ね上|何倍|\d+倍|高額|\d+件|\d[\d,]*\s*万?円|身に覚え|見覚え|覚えのない|知らない|不審|おかしい|ありえない|"
    r"埋ま|埋め尽く|あふれ|溢れ|山ほど|山のよう|すごい数|鬼のよう|異様",
)
_MINE_OR_RECENT = _rx(
    r"\b(our|my|we|we'?ve|we'?re|i|i'?ve|us)\b|\b(this morning|last night|overnight|tonight|today|yesterday|this weekend|over the weekend|"
    r"all (night|weekend)|since (midnight|yesterday|last night|the weekend|friday|saturday|sunday|monday|\d)|between \d|just (now|came|arrived|got))\b",
    r"\b(shows?|showed|showing|lists?|listed|is full of|came in|arrived|received|got|checked|looked|saw|found|noticed)\b",
    r"うち|弊社|当社|会社|自社|社内|事務所|店|今朝|昨夜|昨晩|昨日|夜中|深夜|未明|週末|連休|休み明け|週明け|朝から|夜から|さっき|先ほど|今日|本日|今夜|"
    r"見たら|確認したら|調べたら|開いたら|見ると|届い|届き|来た|来て|きた|きて|並んで|載って|出て(い|る|た|まし)|あった|ありました|ある|あります|なって(い|る|た)|になってた",
)
# Said casually: "なんか海外に電話かけまくってる", "our phones are dialing abroad nonstop", "calls going out rn",
# "the phone system keeps ringing out to overseas numbers on its own".
_CASUAL_NOW = _rx(
    r"(ひとりでに|独りでに|一人でに|自動で|自動的に|誰も(かけて|使って|触って)(い)?ないのに)[^。！？]{0,20}(発信|電話|かけ|かか|通話)",
    r"(国際|海外|外国|国外|知らない国)[^。！？]{0,20}(かけまくっ|かけまくり|かけ続け|発信しまくっ|発信し続け|されまくっ|かかりまくっ|かかりっぱなし|発信しっぱなし|出まくっ)",
    r"(かけまくっ|発信しまくっ|されまくっ)[^。！？]{0,15}(国際|海外|外国)",
    r"\b(phones?|pbx|system|lines?|extensions?|trunks?|box|server|asterisk|freepbx|it|something|someone|somebody)\b[^.!?]{0,20}"
    r"\b(keeps?|kept|is|are|'s|'re|r|has been|have been|started|starting)\s+(on\s+)?(calling|dialing|dialling|ringing( out)?|phoning|making calls|placing calls|sending calls|pumping out|spamming|blasting|hammering)\b"
    r"[^.!?]{0,40}(\b(abroad|overseas|international|foreign|countr\w*|africa|europe)\b|\+\d)",
    r"\b(calling|dialing|dialling|ringing out|making calls|placing calls|calls? (are )?going out)\b[^.!?]{0,40}\b(by itself|on its own|by themselves|on their own|automatically|\brn\b|atm)\b",
    r"\bcalls?\b[^.!?]{0,20}\bgoing out\b[^.!?]{0,10}\b(rn|atm|nonstop|non-stop)\b",
)


# Calls coming in from abroad (one-ring scams) are another problem: only outgoing calls are toll fraud.
_INCOMING = _rx(r"着信|かかってき|(海外|外国|国外)から(の)?(電話|着信|通話)|\bincoming\b|\bcalls? from (abroad|overseas|foreign|international)|\b(got|received|getting) calls\b")
_OUTGOING = _rx(r"発信|かけて|かけた|かけま|かけら|(海外|外国|国外|国)(へ|に|あて|宛)|\b(outgoing|outbound|dial(l)?ed|dialing|dialling|calls? to|made|placed)\b")


def _evidence_of_incident(norm: str) -> bool:
    if _INCOMING.search(norm) and not _OUTGOING.search(norm):
        return False
    return bool(_DEST.search(norm) or _COUNTRY_RX.search(norm) or _CODE_RX.search(norm)) and bool(
        _EVIDENCE.search(norm) and _AMOUNT_OR_MANY.search(norm) and _MINE_OR_RECENT.search(norm)
    )


def detect_incident(text: str) -> bool:
    norm = normalize(text)
    if (_HYPOTHETICAL.search(norm) or _RESOLVED.search(norm) or _SELF_CALLS.search(norm)) and not _strong_now(norm):
        return False
    patterns = (_JA_CALLS_NOW, _JA_BILL, _JA_CARRIER_CALLED, _JA_LOG, _JA_UNWANTED, _EN_CALLS_NOW, _EN_BILL,
                _EN_CARRIER_CALLED, _EN_LOG, _CASUAL_NOW)
    if any(p.search(norm) for p in patterns) or _evidence_of_incident(norm):
        return True
    # "our phone system is making calls to Somalia", "lots of calls to +370 on our bill"
    return bool(_EN_PROGRESSIVE.search(norm)) and bool(_COUNTRY_RX.search(norm) or _CODE_RX.search(norm))


_STRONG_NOW = _rx(r"今まさに|今も|現在も|止まらない|right now|\brn\b|as we speak|won'?t stop|can'?t stop|still (calling|going|dialing|dialling)|non-?stop")


def _strong_now(norm: str) -> bool:
    return bool(_STRONG_NOW.search(norm) or _ONGOING.search(norm))


# -- facts ---------------------------------------------------------------------------------

_STILL_YES = _rx(
    r"今も|いまも|今まさに|まだ(止まって|止まら|続|発信|かか)|止まらない|止まりません|続いて(い|る|ます)|継続|現在も|現在進行", r"されて(い|る)",
    r"\bstill\b(?![^.!?]{0,10}\b(stopped|blocked))", r"right now", r"\bongoing\b", r"\bkeeps?\b", r"won'?t stop", r"can'?t stop",
    r"\bcontinu(e|es|ing)\b", r"\bas we speak\b", r"\b(is|are) (calling|dialling|dialing|going out)\b",
)
_STILL_NO = _rx(
    r"(もう|すでに|既に|今は)?(止まった|止まりました|止めた|止めました|止まって(い|る|ます)|収まった|おさまった|停止した|規制した|止めてもらった|止まっている)",
    r"\b(has|have|'ve|'s)?\s*(stopped|been stopped|been blocked|ended)\b", r"\bno longer\b", r"\bnot (happening|calling) (any ?more|now)\b",
    r"\bwe (blocked|barred|cut|unplugged|disconnected)\b", r"\b(is|are) (now )?(blocked|barred)\b",
)
_NOTICED = _rx(
    r"(今朝|昨夜|昨晩|昨日|おととい|一昨日|先週|先月|今月|今週|週末|土曜|日曜|連休|さっき|先ほど|たった今|今日|本日|今夜|深夜|夜中|明け方|休み明け|月曜)(の?(朝|夜|午前|午後|夕方|深夜|未明))?",
    r"\d{1,2}\s*(月\s*\d{1,2}\s*日|時(\d{1,2}分)?|分前|時間前|日前)",
    r"\b(this morning|last night|yesterday|today|tonight|an hour ago|this weekend|last weekend|last week|on monday|over the weekend|just now|this afternoon|minutes ago)\b",
    r"\b\d{1,3}\s*(minutes?|hours?|days?) ago\b", r"\b(at|around|since) \d{1,2}(:\d{2})?\s*(am|pm)?\b",
    r"\b(on )?(mon|tues|wednes|thurs|fri|satur|sun)day\b", r"\b\d{1,2}/\d{1,2}\b", r"\b\d{4}-\d{2}-\d{2}\b",
)
_AMOUNT = _rx(
    r"(?:約|およそ)?\d[\d,，.]*\s*(?:億|万|千)?\s*円", r"[¥￥]\s*\d[\d,，.]*\s*(?:万|million|m|k)?",
    r"\b\d[\d,.]*\s*(?:million|thousand|k|m)?\s*(?:yen|jpy)\b", r"\b(?:usd|us\$|\$)\s*\d[\d,.]*", r"(?:数十|数百|数千)万円",
)
_COUNTRIES = (
    "フィリピン", "パレスチナ", "シエラレオネ", "ソマリア", "リトアニア", "キューバ", "セルビア", "ギニア", "ナイジェリア",
    "ガーナ", "イギリス", "英国", "アメリカ", "米国", "中国", "韓国", "ロシア", "ラトビア", "エストニア", "モルディブ",
    "東ティモール", "ナウル", "ツバル", "ギアナ", "ベトナム", "タイ", "インドネシア", "パキスタン", "バングラデシュ",
    "philippines", "palestine", "sierra leone", "somalia", "lithuania", "cuba", "serbia", "guinea", "nigeria",
    "ghana", "latvia", "estonia", "maldives", "timor", "nauru", "tuvalu", "guyana", "vietnam", "pakistan",
    "bangladesh", "russia", "uk", "united kingdom", "usa", "united states", "china", "korea", "indonesia",
)
_COUNTRY_RX = re.compile("|".join(re.escape(c) if c.isascii() is False else rf"\b{re.escape(c)}\b" for c in _COUNTRIES))
_CODE_RX = re.compile(r"(?:\+|(?<!\d)00|(?<!\d)010|国番号\s*|country code\s*)([1-9]\d{0,2})(?!\d)")
_VENDORS = (
    ("NEC", r"\bnec\b|日本電気"), ("Panasonic", r"panasonic|パナソニック"), ("Fujitsu", r"fujitsu|富士通"),
    ("Hitachi", r"hitachi|日立"), ("OKI", r"\boki\b|沖電気"), ("SAXA", r"\bsaxa\b|サクサ"), ("Nakayo", r"nakayo|ナカヨ"),
    ("Iwatsu", r"iwatsu|岩通|岩崎通信"), ("Asterisk", r"asterisk|アスタリスク"), ("FreePBX", r"freepbx"),
    ("Cisco", r"cisco|シスコ"), ("Avaya", r"avaya|アバイア"), ("Yealink", r"yealink"), ("Brother", r"brother|ブラザー"),
    ("Aiphone", r"aiphone|アイホン"), ("Yamaha", r"yamaha|ヤマハ"), ("3CX", r"\b3cx\b"), ("Grandstream", r"grandstream"),
)
_VENDOR_RX = [(name, re.compile(rx)) for name, rx in _VENDORS]
_VENDOR_UNKNOWN = _rx(r"(メーカー|機種)(は)?(わから|分から|不明)", r"(don'?t|do not) know the (make|maker|brand|vendor|model)")


@dataclass
class IncidentFacts:
    carrier: str | None = None
    still_happening: bool | None = None
    noticed_at: str | None = None
    amounts: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    vendor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "carrier": self.carrier,
            "still_happening": self.still_happening,
            "noticed_at": self.noticed_at,
            "amounts": list(self.amounts),
            "destinations": list(self.destinations),
            "vendor": self.vendor,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "IncidentFacts":
        d = d or {}
        return cls(
            carrier=d.get("carrier"),
            still_happening=d.get("still_happening"),
            noticed_at=d.get("noticed_at"),
            amounts=list(d.get("amounts") or []),
            destinations=list(d.get("destinations") or []),
            vendor=d.get("vendor"),
        )


def extract_facts(text: str, known: IncidentFacts | None = None) -> IncidentFacts:
    """Facts in one message, merged over what is already known (a newer statement wins for
    carrier and still_happening; lists accumulate)."""
    f = IncidentFacts.from_dict(known.to_dict()) if known else IncidentFacts()
    norm = normalize(text)
    carriers = find_carriers(norm)
    if carriers:
        f.carrier = carriers[0]
    if _STILL_NO.search(norm):
        f.still_happening = False
    elif _STILL_YES.search(norm):
        f.still_happening = True
    m = _NOTICED.search(norm)
    if m and not f.noticed_at:
        f.noticed_at = m.group(0).strip()
    for m in _AMOUNT.finditer(norm):
        v = m.group(0).strip()
        if v not in f.amounts:
            f.amounts.append(v)
    for m in _COUNTRY_RX.finditer(norm):
        v = m.group(0)
        if v not in f.destinations:
            f.destinations.append(v)
    for m in _CODE_RX.finditer(norm):
        v = "+" + m.group(1)
        if v not in f.destinations:
            f.destinations.append(v)
    for name, rx in _VENDOR_RX:
        if rx.search(norm):
            f.vendor = name
            break
    else:
        if f.vendor is None and _VENDOR_UNKNOWN.search(norm):
            f.vendor = "unknown"
    return f


MISSING_ORDER = ("carrier", "still_happening", "noticed_at", "vendor")


def missing_facts(f: IncidentFacts) -> list[str]:
    """The facts that matter to an operator and are not known yet, most important first."""
    return [name for name in MISSING_ORDER if getattr(f, name) in (None, "")]
