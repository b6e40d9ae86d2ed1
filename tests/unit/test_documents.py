"""Loading and validating knowledge documents: a bad document names its file and field."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.retrieval.documents import DocumentError, load_documents

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def corpus(tmp_path):
    dst = tmp_path / "k"
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit(corpus: Path, name: str, old: str, new: str) -> Path:
    p = corpus / "sources" / name
    text = p.read_text(encoding="utf-8")
    assert old in text
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    return p


def test_fixture_corpus_loads_with_metadata():
    docs = {d.id: d for d in load_documents(FIXTURE)}
    assert set(docs) >= {"fx-first-steps-ja", "fx-first-steps-en"}
    d = docs["fx-first-steps-ja"]
    assert d.language == "ja" and d.counterpart == "fx-first-steps-en" and d.carriers == ("all",)
    assert d.published == "2015-07-06" and d.facts == ("P045", "P046")
    assert docs["fx-who-pays-ja"].published is None
    assert len(d.content_hash) == 24


def test_content_hash_changes_only_with_content(corpus):
    before = {d.id: d.content_hash for d in load_documents(corpus)}
    _edit(corpus, "fx-kddi-stop-en.md", "call barring", "call barring service")
    after = {d.id: d.content_hash for d in load_documents(corpus)}
    changed = [k for k in before if before[k] != after[k]]
    assert changed == ["fx-kddi-stop-en"]


@pytest.mark.parametrize(
    "name, old, new, field",
    [
        ("fx-kddi-stop-en.md", "url: https://example.org/fixture/kddi\n", "", "url"),
        ("fx-kddi-stop-en.md", "url: https://example.org/fixture/kddi", "url: not a url", "url"),
        ("fx-kddi-stop-en.md", "published: 2014-04-15", "published: 2014-13-45", "published"),
        ("fx-kddi-stop-en.md", "published: 2014-04-15", "published: April 2014", "published"),
        ("fx-kddi-stop-en.md", "language: en", "language: fr", "language"),
        ("fx-kddi-stop-en.md", "counterpart: fx-kddi-stop-ja", "counterpart: fx-nothing-ja", "counterpart"),
        ("fx-kddi-stop-en.md", "carriers: [kddi]", "carriers: [verizon]", "carriers"),
        ("fx-kddi-stop-en.md", "topics: [stop-international, hardening]", "topics: [cooking]", "topics"),
        ("fx-kddi-stop-en.md", "title: Stopping international calls on KDDI\n", "", "title"),
        ("fx-kddi-stop-en.md", "facts: [P060]", "facts: [X1]", "facts"),
        ("fx-kddi-stop-en.md", "kind: guide", "kind: [guide", "front matter"),
    ],
)
def test_bad_document_names_file_and_field(corpus, name, old, new, field):
    _edit(corpus, name, old, new)
    with pytest.raises(DocumentError) as ei:
        load_documents(corpus)
    assert ei.value.field == field
    assert name in str(ei.value) and f"'{field}'" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_duplicate_id_is_reported(corpus):
    src = corpus / "sources" / "fx-kddi-stop-en.md"
    (corpus / "sources" / "fx-kddi-stop-en-copy.md").write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(DocumentError) as ei:
        load_documents(corpus)
    assert ei.value.field == "id"


def test_counterpart_file_missing_is_reported(corpus):
    (corpus / "sources" / "fx-kddi-stop-ja.md").unlink()
    with pytest.raises(DocumentError) as ei:
        load_documents(corpus)
    assert ei.value.field == "counterpart" and "fx-kddi-stop-en.md" in str(ei.value)


def test_not_utf8_and_no_front_matter(corpus):
    p = corpus / "sources" / "fx-kddi-stop-en.md"
    p.write_bytes(b"---\nid: \xff\xfe\n---\nx")
    with pytest.raises(DocumentError) as ei:
        load_documents(corpus)
    assert ei.value.field == "encoding"
    p.write_text("no front matter here", encoding="utf-8")
    with pytest.raises(DocumentError) as ei:
        load_documents(corpus)
    assert ei.value.field == "front matter"


def test_cli_index_prints_one_line_and_exits_2_on_a_bad_document(corpus, tmp_path):
    _edit(corpus, "fx-kddi-stop-en.md", "published: 2014-04-15", "published: 2014-02-30")
    env = {"PBXBOT_KNOWLEDGE_DIR": str(corpus), "PBXBOT_DATA_DIR": str(tmp_path / "data"), "PBXBOT_EMBEDDER": "hash",
           "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "bot", "index"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "fx-kddi-stop-en.md" in lines[0] and "published" in lines[0]
    assert "Traceback" not in p.stderr
