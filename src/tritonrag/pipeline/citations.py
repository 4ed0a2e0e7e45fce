"""Citations: an answer cites the prompt's numbered passages as [n]; only numbers of passages the prompt held count.

``CitationFilter`` passes streamed text through, holding back an unfinished ``[...`` until it can tell whether it is
a citation: a citation of a passage the prompt did not hold is dropped (never shown, never listed), one of a passage
it held is kept and recorded. The final response lists the passages cited, in the order first cited.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tritonrag.pipeline.types import Passage

CITATION = re.compile(r"([ \t]*)\[(\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*)\]")
# held back at the end of the text: spaces (a dropped citation may follow) and a citation that may still be arriving
PENDING = re.compile(r"[ \t]*(?:\[[\d\s,;]{0,24})?$")


class CitationFilter:
    """Streams an answer's text with invalid citations removed, recording the valid ones (1..``passages``)."""

    def __init__(self, passages: int) -> None:
        self.passages = passages
        self.cited: list[int] = []
        self._held = ""

    def _replace(self, match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"[,;]", match.group(2))]
        valid = [n for n in numbers if 1 <= n <= self.passages]
        for n in valid:
            if n not in self.cited:
                self.cited.append(n)
        return f"{match.group(1)}[{', '.join(map(str, valid))}]" if valid else ""

    def _clean(self, text: str) -> str:
        text = CITATION.sub(self._replace, text)
        return re.sub(r"[ \t]+([.,;:!?)])", r"\1", text) if text else text  # the space a dropped citation left

    def feed(self, piece: str) -> str:
        """The part of the text so far that is safe to show."""
        text = self._held + piece
        cut = PENDING.search(text).start()
        self._held = text[cut:]
        return self._clean(text[:cut])

    def flush(self) -> str:
        """What is held back at the end of the answer (an unfinished bracket is shown as it is)."""
        text, self._held = self._held, ""
        return self._clean(text)


def citations_json(cited: Sequence[int], passages: Sequence[Passage]) -> str:
    """The ``citations`` output: each cited passage's number, chunk id, score and source fields, as JSON."""
    rows = []
    for n in cited:
        p = passages[n - 1]
        row = {"n": n, "chunk_id": p.chunk_id, "score": round(p.score, 4)}
        row.update({k: p.metadata[k] for k in ("source", "title", "section") if p.metadata.get(k)})
        rows.append(row)
    return json.dumps(rows, ensure_ascii=False)
