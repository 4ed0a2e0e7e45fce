"""The answer-quality benchmark's pure parts: the question set (answer_quality_questions.yaml), checking its
evidence against the book and the knowledge base, and scoring answers (text normalisation, numbers in words or
digits, whole-word matching, abstention phrases)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

QUESTIONS_FILE = Path(__file__).resolve().parent / "answer_quality_questions.yaml"
ABSTENTION_PHRASES = (
    "not contain", "does not say", "do not say", "doesn't say", "does not mention", "do not mention",
    "doesn't mention", "not mentioned", "no mention", "cannot answer", "can't answer", "cannot be answered",
    "unable to answer", "no information", "not enough information", "not provided", "not stated", "not specified",
    "do not know", "don't know", "not in the passages", "passages do not", "documents do not", "no answer",
)

# --- scoring: pure functions of text -------------------------------------------------------------------------
_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


def _is_number_word(token: str) -> bool:
    return token in _SMALL or token in _TENS


def _parse_number(tokens: Sequence[str], i: int) -> tuple[int, int]:
    """The number spelled from ``tokens[i]`` on ("fifty five thousand", "one hundred and fifty", "a hundred",
    "55 thousand") and the index after it; the index is ``i`` when no number starts there."""
    total = current = 0
    j = i
    while j < len(tokens):
        token, started = tokens[j], j > i
        nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
        if _is_number_word(token):
            current += _SMALL.get(token, 0) + _TENS.get(token, 0)
        elif token.isdigit() and not started and len(token) < 16:
            current = int(token)
        elif token == "a" and not started and nxt in _SCALES:
            current = 1
        elif token in _SCALES and started:
            if token == "hundred":
                current = (current or 1) * 100
            else:
                total, current = total + (current or 1) * _SCALES[token], 0
        elif token == "and" and started and tokens[j - 1] in _SCALES and _is_number_word(nxt):
            pass
        else:
            break
        j += 1
    return total + current, j


def normalize(text: str) -> str:
    """Lower case, no accents or punctuation, one space between words, numbers as digits, "£5" as "5 pounds"."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower().replace("\u2019", "'"))
    text = re.sub(r"\$\s*(\d+)", r" \1 dollars ", re.sub(r"£\s*(\d+)", r" \1 pounds ", text))
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", r"\1", text)
    tokens = re.sub(r"[^a-z0-9]+", " ", text).split()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        value, j = _parse_number(tokens, i)
        out.append(str(value) if j > i else tokens[i])
        i = max(j, i + 1)
    return " ".join(out)


def contains(text: str, needle: str, normalized: bool = False) -> bool:
    """``needle`` occurs in ``text`` as whole words after normalisation (``normalized``: ``text`` already is)."""
    want = normalize(needle)
    return bool(want) and f" {want} " in f" {text if normalized else normalize(text)} "


def matches_any(text: str, alternatives: Iterable[str]) -> bool:
    norm = normalize(text)
    return any(contains(norm, alt, normalized=True) for alt in alternatives)


def abstained(answer: str) -> bool:
    """The answer says the documents do not hold it (by phrase: today's model has no abstention of its own)."""
    return matches_any(answer, ABSTENTION_PHRASES)


def evidence_rank(passages: Sequence[str], evidence: Sequence[str]) -> int | None:
    """1-based rank of the first passage holding any evidence string; None when none does."""
    return next((rank for rank, text in enumerate(passages, 1) if matches_any(text, evidence)), None)


# --- the question set ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    id: str
    question: str
    part: str
    answerable: bool = True
    seed: bool = False
    answer_any: tuple[str, ...] = ()
    answer_all: tuple[tuple[str, ...], ...] = ()
    evidence_any: tuple[str, ...] = ()

    @property
    def answer_groups(self) -> tuple[tuple[str, ...], ...]:
        """Groups of alternatives a correct answer matches, every one."""
        return ((self.answer_any,) if self.answer_any else ()) + self.answer_all

    def is_correct(self, answer: str) -> bool:
        return self.answerable and all(matches_any(answer, group) for group in self.answer_groups)


def load_questions(path: Path = QUESTIONS_FILE) -> list[Question]:
    """The question set, validated: unique ids, answers and evidence for every answerable question."""
    import yaml

    questions = []
    for raw in yaml.safe_load(path.read_text())["questions"]:
        q = Question(raw["id"], raw["question"], raw["part"], raw.get("answerable", True), raw.get("seed", False),
                     tuple(map(str, raw.get("answer_any", ()))),
                     tuple(tuple(map(str, g)) for g in raw.get("answer_all", ())),
                     tuple(map(str, raw.get("evidence_any", ()))))
        if q.answerable and not (q.answer_groups and q.evidence_any):
            raise ValueError(f"{path}: question {q.id!r} needs answer_any or answer_all, and evidence_any")
        questions.append(q)
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate question ids")
    return questions


def quick_subset(questions: Sequence[Question], unanswerable: int = 3) -> list[Question]:
    """The seed's questions, the first question of every other part, and a few unanswerable ones."""
    chosen, parts = [], set()
    for q in questions:
        if q.answerable and (q.seed or q.part not in parts):
            chosen.append(q)
            parts.add(q.part)
    return chosen + [q for q in questions if not q.answerable][:unanswerable]


def check_evidence(questions: Sequence[Question], book: str, chunks: dict[int, str]) -> list[str]:
    """Problems with the question set: evidence strings missing from the book or from every chunk, and answers
    not found in an evidence chunk or its neighbours (the question must be answerable from one or two chunks)."""
    book_norm = normalize(book)
    chunk_norm = {cid: normalize(text) for cid, text in chunks.items()}
    problems = []
    for q in (q for q in questions if q.answerable):
        holding: set[int] = set()
        for ev in q.evidence_any:
            found = {cid for cid, text in chunk_norm.items() if contains(text, ev, normalized=True)}
            if not contains(book_norm, ev, normalized=True):
                problems.append(f"{q.id}: evidence {ev!r} is not in the book")
            if not found:
                problems.append(f"{q.id}: evidence {ev!r} is in no chunk of the knowledge base")
            holding |= found
        near = " ".join(chunk_norm.get(c + d, "") for c in sorted(holding) for d in (-1, 0, 1))
        for group in q.answer_groups:
            if holding and not any(contains(near, alt, normalized=True) for alt in group):
                problems.append(f"{q.id}: no answer of {list(group)} near the evidence chunks {sorted(holding)}")
    return problems


def local_chunks(index_dir: Path) -> dict[int, str]:
    """Every chunk's text in the published version of a local knowledge base."""
    from tritonrag.kb.search import KnowledgeBase

    kb = KnowledgeBase(index_dir)
    try:
        return {hit.chunk_id: hit.text for hit in kb.fetch(list(kb.ids), [0.0] * len(kb.ids))}
    finally:
        kb.close()


