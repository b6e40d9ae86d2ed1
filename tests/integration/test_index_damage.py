"""A damaged index file: start-up stops with one line naming the fix (no traceback), `pbxbot index`
never calls a damaged index up to date, and `pbxbot index --rebuild` recovers from any damaged file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings
from bot.retrieval.index_builder import build_index, read_current, verify_build

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "corpus"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-template")
    shutil.copytree(FIXTURE, root / "knowledge")
    settings = Settings(_env_file=None, data_dir=root / "data", knowledge_dir=root / "knowledge", embedder="hash")
    build_index(settings, progress=False)
    return root


@pytest.fixture
def copy(template, tmp_path):
    shutil.copytree(template, tmp_path / "t")
    root = tmp_path / "t"
    settings = Settings(_env_file=None, data_dir=root / "data", knowledge_dir=root / "knowledge", embedder="hash")
    return root, settings


def build_folder(settings: Settings) -> Path:
    return Path(settings.index_dir) / "builds" / read_current(Path(settings.index_dir))["build_id"]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    else:
        path.unlink()


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_")}
    env.update(PBXBOT_DATA_DIR=str(root / "data"), PBXBOT_KNOWLEDGE_DIR=str(root / "knowledge"), PBXBOT_EMBEDDER="hash",
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("name", ["chunks.jsonl", "documents.json", "vectors.npy", "bm25/params.index.json",
                                  "bm25/vocab.index.json", "bm25/data.csc.index.npy"])
@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
def test_every_damaged_build_file_is_named(copy, name, how):
    _root, settings = copy
    manifest = read_current(Path(settings.index_dir))
    assert verify_build(Path(settings.index_dir), manifest) is None
    damage(build_folder(settings) / name, how)
    problem = verify_build(Path(settings.index_dir), manifest)
    assert problem and name in problem


def test_a_damaged_index_stops_start_up_with_one_line_and_rebuild_recovers(copy):
    root, settings = copy
    damage(build_folder(settings) / "vectors.npy", "flip")
    started = cli(root, "search", "KDDI")
    assert started.returncode == 2
    lines = [x for x in started.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("pbxbot: the retrieval index is damaged") and "vectors.npy" in lines[-1]
    assert "pbxbot index --rebuild" in lines[-1] and "Traceback" not in started.stderr
    repaired = cli(root, "index", "--rebuild")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    again = cli(root, "search", "KDDI", "--json")
    assert again.returncode == 0 and "fx-kddi-stop" in again.stdout


def test_plain_index_does_not_call_a_damaged_index_up_to_date(copy):
    root, settings = copy
    damage(build_folder(settings) / "chunks.jsonl", "truncate")
    run = cli(root, "index")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "up to date" not in run.stdout and "damaged" in run.stdout and "chunks.jsonl" in run.stdout
    assert verify_build(Path(settings.index_dir), read_current(Path(settings.index_dir))) is None
    assert "up to date" in cli(root, "index").stdout


def test_rebuild_recovers_from_a_damaged_chroma_database_and_embedding_cache(copy):
    root, settings = copy
    chroma = Path(settings.index_dir) / "chroma" / "chroma.sqlite3"
    damage(chroma, "truncate")
    for f in (Path(settings.index_dir) / "embcache").rglob("*.npy"):
        damage(f, "flip")
    plain = cli(root, "index")
    assert plain.returncode == 0 and "up to date" not in plain.stdout and "Chroma" in plain.stdout, plain.stderr[-2000:]
    damage(Path(settings.index_dir) / "chroma" / "chroma.sqlite3", "truncate")
    run = cli(root, "index", "--rebuild")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert (Path(settings.index_dir) / "chroma.damaged").is_dir()
    assert "up to date" in cli(root, "index").stdout
    assert cli(root, "search", "KDDI").returncode == 0
