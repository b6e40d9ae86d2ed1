"""Intent data: labelled examples, hard negatives and the few exact guards (knowledge/intents/).

    <label>.yaml   intent, description, examples: {ja: [...], en: [...]}, hard_negatives: [{text, intents}],
                   answer_hint: {ja: ..., en: ...} (optional: what a message of the label generally asks)
    multi_label.yaml  (optional) examples: [{text, intents}] of messages with several labels
    guards.yaml    commands: {"/human": human_request, ...}; config_extraction: [regex, ...]

Every text becomes one training example with the set of its labels. A malformed file stops
`pbxbot index` (and the start) with one line naming the file and the field (IntentDataError).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot.config import ConfigError

LABELS = (
    "fraud_now", "fraud_bill", "dispute", "billing_question", "incoming_scam", "domestic_billing",
    "human_request", "not_helped", "off_topic", "smalltalk", "thanks", "config_extraction", "question", "more",
)


class IntentDataError(ConfigError):
    def __init__(self, path: Path | str, field_name: str, problem: str):
        super().__init__(f"{path}: field '{field_name}': {problem}")


@dataclass(frozen=True)
class Example:
    text: str
    labels: frozenset[str]
    language: str | None  # "ja" | "en" | None (hard negatives and multi-label examples say nothing)
    source: str  # file name, for reports


@dataclass
class IntentData:
    examples: list[Example]
    commands: dict[str, str] = field(default_factory=dict)
    extraction_patterns: list[re.Pattern[str]] = field(default_factory=list)
    fingerprint: str = ""
    # label -> {language: text}: the general question messages of that label are about, searched
    # with a message whose own reading the sources do not answer (`answer_hint` of <label>.yaml)
    answer_hints: dict[str, dict[str, str]] = field(default_factory=dict)

    def command(self, text: str) -> str | None:
        """The intent of an exact command or button payload ("/human", "request_human")."""
        key = unicodedata.normalize("NFKC", text or "").strip().lower()
        return self.commands.get(key)

    def is_extraction(self, text: str) -> bool:
        norm = unicodedata.normalize("NFKC", text or "").lower()
        return any(p.search(norm) for p in self.extraction_patterns)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: about 20 times faster than pure Python


def _load_yaml(path: Path) -> object:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a safe loader
    except OSError as exc:
        raise IntentDataError(path, "file", f"unreadable ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise IntentDataError(path, "encoding", "not UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise IntentDataError(path, "yaml", f"invalid YAML{f' (line {mark.line + 1})' if mark else ''}") from None


def _labels(path: Path, where: str, value: object) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise IntentDataError(path, where, "intents must be a non-empty list of labels")
    unknown = [v for v in value if v not in LABELS]
    if unknown:
        raise IntentDataError(path, where, f"unknown intent {unknown[0]!r} (known: {', '.join(LABELS)})")
    return frozenset(value)


def _text(path: Path, where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IntentDataError(path, where, "must be a non-empty string")
    return value.strip()


def _labelled_list(path: Path, key: str, items: object) -> list[Example]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise IntentDataError(path, key, "must be a list of {text, intents}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise IntentDataError(path, f"{key}[{i}]", "must be a mapping with text and intents")
        out.append(Example(_text(path, f"{key}[{i}].text", item.get("text")),
                           _labels(path, f"{key}[{i}].intents", item.get("intents")), None, path.name))
    return out


def _answer_hint(path: Path, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw or set(raw) - {"ja", "en"}:
        raise IntentDataError(path, "answer_hint", "must map a language (ja, en) to a text")
    return {lang: _text(path, f"answer_hint.{lang}", text) for lang, text in raw.items()}


def _intent_file(path: Path) -> tuple[str, list[Example], dict[str, str]]:
    """The file's label, its examples and hard negatives, and its answer hint."""
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise IntentDataError(path, "file", "must be a YAML mapping")
    label = data.get("intent")
    if label not in LABELS:
        raise IntentDataError(path, "intent", f"unknown intent {label!r} (known: {', '.join(LABELS)})")
    examples = data.get("examples")
    if not isinstance(examples, dict) or not examples:
        raise IntentDataError(path, "examples", "must map a language (ja, en) to a list of texts")
    out: list[Example] = []
    for lang, texts in examples.items():
        if lang not in ("ja", "en"):
            raise IntentDataError(path, "examples", f"unknown language {lang!r} (ja, en)")
        if not isinstance(texts, list) or not texts:
            raise IntentDataError(path, f"examples.{lang}", "must be a non-empty list of texts")
        out.extend(Example(_text(path, f"examples.{lang}[{i}]", t), frozenset([label]), lang, path.name)
                   for i, t in enumerate(texts))
    out.extend(_labelled_list(path, "hard_negatives", data.get("hard_negatives")))
    return label, out, _answer_hint(path, data.get("answer_hint"))


def _guards(path: Path) -> tuple[dict[str, str], list[re.Pattern[str]]]:
    data = _load_yaml(path) or {}
    if not isinstance(data, dict):
        raise IntentDataError(path, "file", "must be a YAML mapping")
    commands_raw = data.get("commands") or {}
    if not isinstance(commands_raw, dict):
        raise IntentDataError(path, "commands", "must map a command to an intent")
    commands = {unicodedata.normalize("NFKC", str(cmd)).strip().lower(): next(iter(_labels(path, f"commands.{cmd}", label)))
                for cmd, label in commands_raw.items()}
    patterns_raw = data.get("config_extraction") or []
    if not isinstance(patterns_raw, list):
        raise IntentDataError(path, "config_extraction", "must be a list of regular expressions")
    patterns = []
    for i, rx in enumerate(patterns_raw):
        try:
            patterns.append(re.compile(str(rx), re.IGNORECASE))
        except re.error as exc:
            raise IntentDataError(path, f"config_extraction[{i}]", f"bad regular expression ({exc.msg})") from None
    return commands, patterns


def load_intents(knowledge_dir: Path | str) -> IntentData:
    folder = Path(knowledge_dir) / "intents"
    if not folder.is_dir():
        raise IntentDataError(folder, "intents", "folder does not exist")
    digest = hashlib.sha256()
    examples: list[Example] = []
    commands: dict[str, str] = {}
    patterns: list[re.Pattern[str]] = []
    hints: dict[str, dict[str, str]] = {}
    for path in sorted(folder.glob("*.yaml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        if path.name == "guards.yaml":
            commands, patterns = _guards(path)
        elif path.name == "multi_label.yaml":
            data = _load_yaml(path) or {}
            if not isinstance(data, dict):
                raise IntentDataError(path, "file", "must be a YAML mapping")
            examples.extend(_labelled_list(path, "examples", data.get("examples")))
        else:
            label, found, hint = _intent_file(path)
            examples.extend(found)
            if hint:
                hints[label] = hint
    if not examples:
        raise IntentDataError(folder, "examples", "no intent examples found")
    # One text, one example: the labels of repeated texts are merged.
    merged: dict[str, Example] = {}
    for ex in examples:
        key = unicodedata.normalize("NFKC", ex.text).strip()
        if key in merged:
            old = merged[key]
            merged[key] = Example(old.text, old.labels | ex.labels, old.language or ex.language, old.source)
        else:
            merged[key] = ex
    return IntentData(list(merged.values()), commands, patterns, digest.hexdigest()[:16], hints)
