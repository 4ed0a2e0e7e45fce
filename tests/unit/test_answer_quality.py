"""The answer-quality benchmark's pure parts: text normalisation, answer and evidence matching, abstention, the
question set (and, where the sample book and knowledge base exist, its evidence strings)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from answer_quality import Generation, score_row, summarize, tokens_per_s
from answer_quality_scoring import (
    Question,
    abstained,
    check_evidence,
    contains,
    evidence_rank,
    load_questions,
    normalize,
    quick_subset,
)


def test_normalize_case_punctuation_and_number_forms():
    assert normalize("The GREAT Salt-Lake!") == "the great salt lake"
    assert normalize("£55,000") == normalize("fifty-five thousand pounds") == "55000 pounds"
    assert normalize("$60,000") == normalize("sixty thousand dollars") == "60000 dollars"
    assert normalize("one hundred and fifty pounds") == "150 pounds"
    assert normalize("a hundred miles an hour") == "100 miles an hour"
    assert normalize("twenty thousand and more") == "20000 and more"  # "and" only inside a number
    assert normalize("the 21st of December") == "the 21 of december"
    assert normalize("Fogg’s café") == "fogg s cafe"
    assert normalize("a man") == "a man"


def test_contains_matches_whole_words_only():
    assert contains("It was the Great Salt Lake.", "great salt lake")
    assert contains("He took £55,000.", "fifty-five thousand pounds")
    assert not contains("He did not know", "no")  # "no" is not a prefix match of "not" or "know"
    assert contains("No, he is innocent.", "no")
    assert not contains("anything", "")


def test_questions_answer_groups():
    q = Question("x", "Tell me about the robbery", "London", answer_all=(("£55,000", "fifty-five thousand pounds"),
                                                                       ("Bank of England",)))
    assert q.is_correct("Fifty-five thousand pounds were taken from the Bank of England.")
    assert q.is_correct("£55,000 from the bank of england")
    assert not q.is_correct("55,000 pounds were stolen")  # the bank is missing
    single = Question("y", "Utah?", "America", answer_any=("Great Salt Lake", "Salt Lake"))
    assert single.is_correct("the salt lake") and not single.is_correct("a lake")
    assert not Question("z", "?", "none", answerable=False).is_correct("anything")


def test_abstention_phrases():
    assert abstained("The passages do not say what his mother was called.")
    assert abstained("I don't know.") and abstained("There is no information about that.")
    assert not abstained("Mr. Fogg was indeed robbed.")


def test_evidence_rank_and_hits():
    passages = ["nothing here", "the real robber, a certain James Strand", "James Strand again"]
    assert evidence_rank(passages, ["James Strand"]) == 2
    assert evidence_rank(passages, ["Kiouni"]) is None


def test_score_row_and_summary():
    q = Question("seed", "Utah?", "America", seed=True, answer_any=("Great Salt Lake",), evidence_any=("Salt Lake",))
    u = Question("none", "Mother?", "unanswerable", answerable=False)
    gen = Generation("It is the Great Salt Lake [2].", [7, 8], [8], "stop", 1.0, 0.2, 1.2,
                     "It is the Great Salt Lake [2].")
    row = score_row(q, [7, 8, 9], ["a", "the Salt Lake", "b"], gen, lambda text: 11, top_k=2)
    assert row["evidence_rank"] == 2 and row["hit@1"] is False and row["hit@4"] is True and row["context_hit"]
    assert row["correct"] and not row["abstained"] and row["sources_match_retrieval"] and row["stream_same_answer"]
    assert row["tokens_per_s"] == pytest.approx(10.0) and row["citation_valid"] is True and row["cited"] == 1
    other = score_row(u, [1], ["x"], Generation("Not this.", [1], [], "abstained", 0.5), lambda text: 5, top_k=1)
    assert other["correct"] is None and other["abstained"] and other["hit@4"] is None
    summary = summarize([row, other], "gemma", "rag")
    assert summary["correct"] == 1.0 and summary["abstention"] == 1.0 and summary["false_abstention"] == 0.0
    assert summary["seed_correct"] == "1/1" and summary["hit@1"] == 0.0 and summary["citation_validity"] == 1.0
    assert summary["schema_checked"] == 0 and summary["citing"] == 1.0
    wrong = score_row(q, [7, 8, 9], ["a", "the Salt Lake", "b"], Generation("Lake [1].", [7, 8], [7], "stop", 1.0),
                      lambda text: 3, top_k=2)
    assert wrong["citation_valid"] is False  # passage 1 does not hold the evidence


def test_tokens_per_s_after_the_first_token():
    assert tokens_per_s(11, 0.5, 1.5) == pytest.approx(10.0)
    assert tokens_per_s(1, 0.5, 1.5) != tokens_per_s(1, 0.5, 1.5)  # NaN


def test_question_set_is_complete():
    questions = load_questions()
    answerable = [q for q in questions if q.answerable]
    assert len([q for q in answerable if not q.seed]) >= 30
    assert len([q for q in questions if not q.answerable]) >= 8
    assert {q.id for q in questions if q.seed} == {"seed-utah", "seed-robbery", "seed-innocent"}
    assert len({q.part for q in answerable}) >= 14
    quick = quick_subset(questions)
    assert {q.id for q in quick} >= {"seed-utah", "seed-robbery", "seed-innocent"} and len(quick) < len(questions)


def test_check_evidence_reports_missing_strings():
    q = Question("q", "Who?", "London", answer_any=("Stuart",), evidence_any=("Andrew Stuart, an engineer", "absent"))
    problems = check_evidence([q], "Andrew Stuart, an engineer; John Sullivan", {1: "Andrew Stuart, an engineer"})
    assert problems == ["q: evidence 'absent' is not in the book", "q: evidence 'absent' is in no chunk of the "
                        "knowledge base"]
    assert check_evidence([q], "x", {1: "Andrew Stuart, an engineer", 2: "absent"})[0].endswith("not in the book")


def test_evidence_is_in_the_book_and_the_knowledge_base():
    from answer_quality_scoring import local_chunks

    from tritonrag.kb.sample import sample_corpus
    from tritonrag.settings import load_settings

    try:
        book = (sample_corpus() / "around_the_world.txt").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        pytest.skip("the sample corpus (shared/data/eighty_days) is not next to this checkout")
    index_dir = load_settings().index_dir
    if not (index_dir / "published.json").exists():
        pytest.skip(f"no sample knowledge base at {index_dir} (scripts/demo.sh builds it)")
    chunks = local_chunks(index_dir)
    if not any("Phileas Fogg" in text for text in chunks.values()):
        pytest.skip(f"the knowledge base at {index_dir} does not hold the sample book")
    assert check_evidence(load_questions(), book, chunks) == []
