"""Citations: an answer cites the prompt's numbered passages as [n]; only numbers of passages the prompt held count.

``CitationFilter`` passes streamed text through, holding back an unfinished ``[...`` until it can tell whether it is
a citation: a citation of a passage the prompt did not hold is dropped (never shown, never listed), one of a passage
it held is kept and recorded. The final response lists the passages cited, in the order first cited.

One exception keeps first tokens from waiting: an unfinished citation whose number so far names a passage the prompt
held (``[1`` of a prompt with four, its passages in the sources' order) is shown at once, since on a loaded engine
the ``]`` may come seconds later (benchmarks/results/ttft/report.md: half the answers begin with ``[1]``). What
follows is filtered as before (``[1, 9]`` shows as ``[1]``); should the number grow into one the prompt did not hold
(``[12]``), the citation is shown as written but not listed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tritonrag.pipeline.types import Passage

CITATION = re.compile(r"([ \t]*)\[(\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*)\]")
# held back at the end of the text: spaces (a dropped citation may follow) and a citation that may still be arriving
PENDING = re.compile(r"[ \t]*(?:\[[\d\s,;]{0,24})?$")
# a held citation shown before it ends: its first number, so far valid
OPENING = re.compile(r"[ \t]*\[\s*(\d{1,3})")


class CitationFilter:
    """Streams an answer's text with invalid citations removed, recording the valid ones (1..``passages``).

    ``order`` (the prompt's BuiltPrompt.order; empty: the passages as given) maps the number the prompt gave a
    passage to its place among the passages given, best first (the response's sources): a valid citation is
    shown and recorded by that number, so the answer's [n] is the n-th source whatever the prompt's passage order.
    """

    def __init__(self, passages: int, order: Sequence[int] = ()) -> None:
        if order and sorted(order) != list(range(passages)):
            raise ValueError(f"a prompt's passage order must number its {passages} passages once each, got {order}")
        self.passages = passages
        self.order = tuple(order)
        self.cited: list[int] = []
        self._held = ""
        self._shown = ""  # the start of the held text, already shown (an opening citation)
        # an opening citation is shown early only where the prompt numbers passages as the sources do: renumbered,
        # a number that grew invalid could not be shown as written
        self._as_written = self.order in ((), tuple(range(passages)))

    def _replace(self, match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"[,;]", match.group(2))]
        valid = [self._source(n) for n in numbers if 1 <= n <= self.passages]
        for n in valid:
            if n not in self.cited:
                self.cited.append(n)
        return f"{match.group(1)}[{', '.join(map(str, valid))}]" if valid else ""

    def _source(self, n: int) -> int:
        """The source number of the prompt's passage ``n``."""
        return self.order[n - 1] + 1 if self.order else n

    def _clean(self, text: str) -> str:
        text = CITATION.sub(self._replace, text)
        return re.sub(r"[ \t]+([.,;:!?)])", r"\1", text) if text else text  # the space a dropped citation left

    def feed(self, piece: str) -> str:
        """The part of the text so far that is safe to show."""
        text = self._held + piece
        cut = PENDING.search(text).start()
        ready, self._held = text[:cut], text[cut:]
        if self._shown and not ready:
            return ""  # the opening citation is still arriving
        out = self._after_shown(self._clean(ready), ready)
        opening = OPENING.fullmatch(self._held) if self._as_written else None
        if opening and 1 <= int(opening.group(1)) <= self.passages:
            self._shown = self._held
            out += self._held
        return out

    def _after_shown(self, cleaned: str, raw: str) -> str:
        """``cleaned`` without the part already shown (the opening citation); when filtering changed that part (the
        number grew invalid), the rest as written."""
        shown, self._shown = self._shown, ""
        if not shown:
            return cleaned
        return cleaned[len(shown):] if cleaned.startswith(shown) else raw[len(shown):]

    def flush(self) -> str:
        """What is held back at the end of the answer (an unfinished bracket is shown as it is)."""
        text, self._held = self._held, ""
        return self._after_shown(self._clean(text), text)


def citations_json(cited: Sequence[int], passages: Sequence[Passage]) -> str:
    """The ``citations`` output: each cited passage's number, chunk id, score and source fields, as JSON."""
    rows = []
    for n in cited:
        p = passages[n - 1]
        row = {"n": n, "chunk_id": p.chunk_id, "score": round(p.score, 4)}
        row.update({k: p.metadata[k] for k in ("source", "title", "section") if p.metadata.get(k)})
        rows.append(row)
    return json.dumps(rows, ensure_ascii=False)
