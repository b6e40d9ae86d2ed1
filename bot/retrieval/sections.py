"""Sections of a knowledge document and their markers (format: knowledge/README.md).

A section is the lead (text before the first heading) or the text under one heading. Right under
its heading a section lists the questions it answers and the fact ids it states, as HTML comments:

    ## Who pays for calls made by an intruder
    <!-- q: Do we have to pay for international calls the hijacker made? -->
    <!-- facts: P114 P115 -->

The questions are extra retrieval keys that point at the section; the facts make every section
traceable to the fact registry. Markers never reach the text that is indexed or shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_QUESTIONS, MAX_QUESTIONS = 2, 5
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_QUESTION = re.compile(r"^\s*<!--\s*q:\s*(.*?)\s*-->\s*$")
_FACTS = re.compile(r"^\s*<!--\s*facts:\s*(.*?)\s*-->\s*$")
_FACT_ID = re.compile(r"^P\d{3,}$")


@dataclass(frozen=True)
class Section:
    number: int  # 0 = the lead; headings count from 1 in document order
    level: int  # heading level (0 for the lead)
    heading: str
    questions: tuple[str, ...]
    facts: tuple[str, ...]
    text: str  # the section's Markdown without its heading and markers
    bad_facts: tuple[str, ...] = ()  # tokens of a facts marker that are not fact ids
    has_facts_marker: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.text.strip())


def parse_sections(body: str) -> list[Section]:
    """The document's sections in order; the lead is included only when it has text or markers."""
    raw: list[tuple[int, str, list[str]]] = [(0, "", [])]
    in_code = False
    for line in body.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            raw.append((len(m.group(1)), m.group(2).strip(), []))
        else:
            raw[-1][2].append(line)
    sections: list[Section] = []
    for number, (level, heading, lines) in enumerate(raw):
        questions: list[str] = []
        facts: list[str] = []
        bad: list[str] = []
        seen_facts = False
        text_lines: list[str] = []
        for line in lines:
            q = _QUESTION.match(line)
            f = _FACTS.match(line)
            if q:
                if q.group(1):
                    questions.append(q.group(1))
            elif f:
                seen_facts = True
                for token in re.split(r"[\s,]+", f.group(1).strip()):
                    if token:
                        (facts if _FACT_ID.match(token) else bad).append(token)
            else:
                text_lines.append(line)
        text = "\n".join(text_lines).strip()
        if number == 0 and not (text or questions or seen_facts):
            continue
        sections.append(Section(number, level, heading, tuple(questions), tuple(dict.fromkeys(facts)), text,
                                tuple(bad), seen_facts))
    return sections


def strip_markers(body: str) -> str:
    """The body without question and facts markers (what the chunker cuts into passages)."""
    return "\n".join(line for line in body.splitlines() if not (_QUESTION.match(line) or _FACTS.match(line)))


def section_problems(sections: list[Section], front_matter_facts: tuple[str, ...],
                     known_facts: frozenset[str] | None) -> list[tuple[str, str]]:
    """(field, problem) for every broken marker; empty when the document's sections are sound."""
    problems: list[tuple[str, str]] = []
    stated: set[str] = set()
    for s in sections:
        where = f"section {s.heading!r}" if s.heading else "lead"
        if not s.has_text:
            continue
        n = len(s.questions)
        if not MIN_QUESTIONS <= n <= MAX_QUESTIONS:
            problems.append(("questions", f"{where} has {n} questions (needs {MIN_QUESTIONS}-{MAX_QUESTIONS} '<!-- q: ... -->' lines)"))
        if not s.has_facts_marker or not s.facts:
            problems.append(("facts", f"{where} has no '<!-- facts: P... -->' marker"))
        if s.bad_facts:
            problems.append(("facts", f"{where} names {', '.join(s.bad_facts)}, which are not fact ids"))
        if known_facts is not None:
            unknown = [f for f in s.facts if f not in known_facts]
            if unknown:
                problems.append(("facts", f"{where} names {', '.join(unknown)}, not in knowledge/facts.yaml"))
        stated.update(s.facts)
    listed = set(front_matter_facts)
    if stated - listed:
        problems.append(("facts", f"sections state {', '.join(sorted(stated - listed))}, missing from the front matter's facts"))
    if listed - stated:
        problems.append(("facts", f"front matter lists {', '.join(sorted(listed - stated))}, stated in no section"))
    return problems
