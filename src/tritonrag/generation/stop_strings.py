"""Stop strings applied to a stream of text deltas."""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Turn a stream of text deltas into safe-to-send text, cutting at the first stop string.

    Text that could still turn into a stop string is held back until it cannot, so a stop string is
    never sent, even when it arrives split over several tokens.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text that is now certain to be part of the answer."""
        if self.stopped:
            return ""
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of generation, release held-back text that never became a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
