"""`stop` sequences: the answer ends before the first one, which is never sent.

Text arrives a token at a time, and a stop sequence can span tokens, so the tail that could
still be the start of one is held back until the next token says whether it is.
"""

from __future__ import annotations


class StopText:
    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text so far that is safe to send now."""
        if not self.stops:
            return text
        self.held += text
        found = [at for at in (self.held.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.stopped = True
            out, self.held = self.held[: min(found)], ""
            return out
        keep = max((n for stop in self.stops for n in range(1, len(stop)) if self.held.endswith(stop[:n])), default=0)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def flush(self) -> str:
        """What was held back, once the answer ended without a stop sequence."""
        out, self.held = self.held, ""
        return out
