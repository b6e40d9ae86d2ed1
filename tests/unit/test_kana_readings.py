"""Kana-only typing ("ふせいりよう") reaches the kanji the documents and patterns use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot.conversation.understanding import text as S
from tests.fakes import shared_understander

ROOT = Path(__file__).resolve().parents[2]


def test_kana_spellings_of_lexicon_terms_become_the_terms():
    assert S.kana_to_kanji("ふせいりよう") == "不正利用"
    assert S.kana_to_kanji("りようきゅうし もうしこみ") == "利用休止 もうしこみ"
    assert S.kana_to_kanji("ほしゅぎょうしゃに れんらく") == "保守業者に れんらく"
    assert "国際電話" in S.normalize("こくさいでんわが とまらない")


def test_everyday_kana_is_left_alone():
    for text in ("いじょうです", "ありがとうございます", "ていしゅつしました", "ほしょうきかんは"):
        assert S.kana_to_kanji(text) == text


def test_kana_only_question_is_understood_as_in_scope():
    prediction = shared_understander().classifier.predict(S.kana_to_kanji("ふせいりようされた"))
    assert not prediction.has("off_topic") and prediction.labels


def test_the_generated_readings_match_the_lexicon():
    r = subprocess.run([sys.executable, "scripts/build_kana_readings.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
