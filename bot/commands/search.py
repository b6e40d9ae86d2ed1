"""`pbxbot search "TEXT" [--k N] [--json] [--language ja|en] [--carrier C]`: ranked passages with scores,
document ids and source URLs."""

from __future__ import annotations

import json
from dataclasses import asdict

from bot.config import Settings


def run(args, settings: Settings) -> int:
    from bot.retrieval.hybrid import open_retriever

    retriever = open_retriever(settings, progress=True)
    result = retriever.search(args.text, k=args.k, language=args.language, carrier=args.carrier)
    if args.json:
        out = {
            "query": result.query,
            "confidence": result.confidence,
            "expanded_terms": list(result.expanded_terms),
            "passages": [
                {"rank": i + 1, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()}}
                for i, p in enumerate(result.passages)
            ],
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if not result.query:
        print("(empty query: type some words, e.g. pbxbot search \"PBXが乗っ取られた\")")
        return 0
    if not result.passages:
        print(f"no passages found (confidence {result.confidence:.2f})")
        return 0
    print(f"confidence {result.confidence:.2f}")
    for i, p in enumerate(result.passages, 1):
        head = f" > {p.heading}" if p.heading else ""
        print(f"{i}. [{p.score:.4f}] {p.doc_id} ({p.language}) {p.title}{head}")
        print(f"   {p.publisher}, {p.published or 'undated'}: {p.url}")
        text = p.text.replace("\n", " ")
        print(f"   {text[:200]}{'…' if len(text) > 200 else ''}")
    return 0
