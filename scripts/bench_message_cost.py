"""CPU a message costs the server by its length: POST /api/chat of short and 4000-character
messages (ja, en) through the real app and core, in-process, on a throwaway SQLite store.

    python scripts/bench_message_cost.py [--rounds N] [--max-search-chars N]

Prints, per kind of message, the median process CPU of a request (ms) and the ratio long/short,
then where a long message's time goes (retrieval search vs the rest of the turn). The bound
is settings.max_search_chars (PBXBOT_MAX_SEARCH_CHARS, bot/wiring.py BoundedRetriever);
--max-search-chars 100000 shows the cost without it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHORT = {
    "ja": ["ひかり電話で国際電話を止めるにはどうすればいいですか？", "IP-PBXのパスワードはどう管理すべき？",
           "不正アクセスを防ぐためにルーターで何を設定すればいい？"],
    "en": ["How do I block international calls on Hikari Denwa?", "How should we manage IP-PBX passwords?",
           "What should we set on the router to prevent unauthorized access?"],
}
FILLER = {
    "ja": "社内の電話設備について補足します。拠点は三つあり、それぞれに交換機とルーターを置いています。"
          "保守は外部の業者に任せていて、設定の変更履歴は紙で管理しています。",
    "en": "Some background on our phone setup: we have three offices, each with its own PBX and router. "
          "Maintenance is outsourced and we keep the change history of the settings on paper. ",
}


def long_text(question: str, lang: str, chars: int = 4000) -> str:
    """A question followed by a long paste, `chars` characters in all (what the widget allows)."""
    body = question + ("\n" if lang == "ja" else " ")
    while len(body) < chars:
        body += FILLER[lang]
    return body[:chars]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-search-chars", type=int, default=None)
    args = ap.parse_args(argv)

    from fastapi.testclient import TestClient

    from bot.config import load_settings
    from bot.logging_setup import configure_logging
    from bot.web.app import create_app
    from bot.wiring import build_conversation_service

    overrides = {"database_url": f"sqlite:///{tempfile.mkdtemp(prefix='pbxbot-cost-')}/cost.sqlite3",
                 "rate_limit_per_minute": 0}
    if args.max_search_chars:
        overrides["max_search_chars"] = args.max_search_chars
    settings = load_settings(**overrides)
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    core = build_conversation_service(settings)
    retriever = core.retriever
    searched: list[float] = []
    inner_search = retriever.search

    def timed_search(*a, **kw):
        t0 = time.process_time()
        try:
            return inner_search(*a, **kw)
        finally:
            searched.append(time.process_time() - t0)

    retriever.search = timed_search  # type: ignore[method-assign]
    print(f"max_search_chars {settings.max_search_chars}, embedder {settings.embedder}")
    with TestClient(create_app(settings, core=core)) as client:
        def cost(text: str) -> tuple[float, float]:
            searched.clear()
            t0 = time.process_time()
            r = client.post("/api/chat", json={"text": text})
            spent = time.process_time() - t0
            assert r.status_code == 200, r.text[:200]
            return spent * 1000, sum(searched) * 1000

        for lang in SHORT:  # warm up
            for q in SHORT[lang]:
                cost(q)
                cost(long_text(q, lang))
        for lang in ("ja", "en"):
            short = [cost(q) for _ in range(args.rounds) for q in SHORT[lang]]
            long_ = [cost(long_text(q, lang)) for _ in range(args.rounds) for q in SHORT[lang]]
            s_req, l_req = statistics.median(c for c, _ in short), statistics.median(c for c, _ in long_)
            s_srch, l_srch = statistics.median(s for _, s in short), statistics.median(s for _, s in long_)
            print(f"{lang}: request CPU short {s_req:.1f} ms, 4000 chars {l_req:.1f} ms (x{l_req / s_req:.1f}); "
                  f"retrieval search short {s_srch:.1f} ms, 4000 chars {l_srch:.1f} ms (x{l_srch / max(s_srch, 1e-6):.1f}); "
                  f"rest of a 4000-char request {l_req - l_srch:.1f} ms (short {s_req - s_srch:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
