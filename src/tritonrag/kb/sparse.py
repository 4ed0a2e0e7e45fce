"""The sparse (BM25) side of a knowledge base: how a question becomes an SQLite FTS5 query.

The docstore keeps an FTS5 index of every chunk's title and text (tokenizer ``porter unicode61``: lower case,
diacritics folded, Porter stemming; BM25 with k1 = 1.2, b = 0.75). A question is split into words, Lucene's
English stop words are dropped (the list Elasticsearch's ``english`` analyzer uses, with which BEIR measured BM25),
and the rest are OR-ed, each quoted, so no character of a question is ever read as FTS5 query syntax.
Why FTS5 rather than bm25s: benchmarks/results/sparse_choice.md.
"""

from __future__ import annotations

import re

TOKENIZER = "porter unicode61 remove_diacritics 2"
# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
MAX_TERMS = 64  # distinct words of a question searched; a longer question keeps its first ones
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def query_terms(text: str) -> list[str]:
    """The distinct searchable words of ``text``, lower case, in order, stop words dropped."""
    terms: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOP_WORDS:
            terms.setdefault(word, None)
        if len(terms) == MAX_TERMS:
            break
    return list(terms)


def fts_query(text: str) -> str:
    """The FTS5 MATCH expression for ``text`` ("" when it has no searchable word): its terms OR-ed, each quoted
    (terms hold only letters and digits, so quoting is exact)."""
    return " OR ".join(f'"{term}"' for term in query_terms(text))
