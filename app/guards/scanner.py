"""Finding the recognizers' matches in a text, and telling which of them are settled.

A stream cannot unsend text, so it needs to know which part of its buffer later text can
no longer change. Each pattern gets a probe: the pattern in an atomic group followed by
`(?!)`, which never matches. Searched with `regex`'s `partial=True`, the probe reports
the leftmost position whose match attempt read past the end of the text: every attempt
before it has the same outcome whatever follows. The atomic group makes the attempt stop
at the match the real search would return, so alternatives tried after it do not count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import regex

from app.guards.recognizers import RECOGNIZERS, Entity, Recognizer, Span


def marker(entity: Entity) -> str:
    """The text that replaces a value of `entity`."""
    return f"[{entity}_REDACTED]"


@dataclass(frozen=True, slots=True)
class Hit:
    """A pattern match; `value` is the span it replaces, None when its validator refused."""

    start: int
    end: int
    value: Span | None
    rank: int
    entity: Entity


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One recognizer, compiled for searching and for settling a stream."""

    rank: int
    recognizer: Recognizer
    pattern: regex.Pattern[str]
    probe: regex.Pattern[str]
    starts: regex.Pattern[str]
    """Finds a character an attempt can begin with; probing skips to the first one."""
    start_chars: frozenset[str]
    """The ASCII characters an attempt can begin with (any other one may, too)."""


def _compile(rank: int, recognizer: Recognizer) -> _Compiled:
    pattern = regex.compile(recognizer.pattern)
    # One probe per pattern: `regex` misreports partial matches of some alternations.
    probe = regex.compile("(?>" + recognizer.pattern.replace("(?P<v>", "(?:") + ")(?!)")
    # An attempt that fails on its first character alone is settled at once, so only
    # text holding one of these needs probing; non-ASCII characters always do, to be safe.
    chars = [chr(c) for c in range(128)]
    chars = [ch for ch in chars if probe.match(ch, partial=True) or pattern.match(ch)]
    escaped = "".join(f"\\x{ord(ch):02x}" for ch in chars)
    starts = regex.compile(f"[{escaped}\\x80-\\U0010ffff]")
    return _Compiled(rank, recognizer, pattern, probe, starts, frozenset(chars))


class Scanner:
    """The compiled recognizers of one set of entities."""

    def __init__(self, entities: frozenset[Entity]) -> None:
        chosen = enumerate(r for r in RECOGNIZERS if r.entity in entities)
        self._compiled = [_compile(rank, r) for rank, r in chosen]
        self._every = (1 << len(self._compiled)) - 1
        self._masks = {
            chr(a): sum(1 << c.rank for c in self._compiled if chr(a) in c.start_chars)
            for a in range(128)
        }
        """For each ASCII character, the patterns whose attempts can begin with it."""

    def hits(self, text: str, pos: int, before: int | None = None) -> list[Hit]:
        """The matches in `text[pos:]`, the end of `text` being final, starting before `before`."""
        found: list[Hit] = []
        # Only the patterns whose attempts can begin with a character of the text: most
        # texts (a model name, a finish reason, prose) rule out half of them or more.
        for c in self._candidates(text, pos, len(text) if before is None else before):
            for m in c.pattern.finditer(text, pos):
                if before is not None and m.start() >= before:
                    break
                start, end = m.span("v") if "v" in c.pattern.groupindex else m.span()
                value: Span | None = (start, end)
                if c.recognizer.validate is not None:
                    sub = c.recognizer.validate(text[start:end])
                    value = None if sub is None else (start + sub[0], start + sub[1])
                found.append(Hit(m.start(), m.end(), value, c.rank, c.recognizer.entity))
        return found

    def settle(
        self, text: str, pos: int, scanned: int, open_at: dict[int, int]
    ) -> tuple[int, dict[int, int], list[Hit]]:
        """Where `text[pos:]` can be cut so that no later text changes the hits before it.

        The last call on this text probed it up to `scanned` and left the attempts in
        `open_at` (pattern rank: position) open; every other attempt before `scanned`
        is settled, so this call probes only from there. Returns the cut, the attempts
        now open (everything else is settled up to the end of `text`) and the hits
        before the cut.
        """
        end = len(text)
        rest = max(pos, scanned)
        now_open: dict[int, int] = {}
        lowest = max(pos, min(open_at.values(), default=rest))
        for c in self._candidates(text, min(rest, lowest), end):
            first = c.starts.search(text, max(pos, open_at.get(c.rank, rest)))
            probe = first and c.probe.search(text, first.start(), partial=True)
            if probe:
                now_open[c.rank] = probe.start()
        cut = min(now_open.values(), default=end)
        hits = self.hits(text, pos, before=cut)
        while crossing := [h.start for h in hits if h.end > cut]:
            cut = min(crossing)
            hits = [h for h in hits if h.start < cut]
        return cut, now_open, hits

    def is_open(self, text: str, rank: int, at: int) -> bool:
        """Whether pattern `rank`'s attempt at `at` reads past the end of `text`."""
        return self._compiled[rank].probe.match(text, at, partial=True) is not None

    def blocker(self, text: str, at: int) -> Entity:
        """The entity whose match, complete or not, starts at `at`."""
        for c in self._compiled:
            if c.pattern.match(text, at) or c.probe.match(text, at, partial=True):
                return c.recognizer.entity
        return self._compiled[0].recognizer.entity

    def _candidates(self, text: str, start: int, end: int) -> list[_Compiled]:
        mask = 0
        for ch in set(text[start:end]):
            mask |= self._masks.get(ch, self._every)
        return [c for c in self._compiled if mask >> c.rank & 1]


@functools.cache
def scanner_for(entities: frozenset[Entity]) -> Scanner | None:
    """The scanner of `entities`, compiled once; None for no entity."""
    return Scanner(entities) if entities else None


def render(text: str, start: int, end: int, hits: list[Hit]) -> str:
    """`text[start:end]` with the values of `hits` replaced by their markers."""
    # Where values overlap, the one starting first wins, then the longer, then the
    # earlier recognizer: one rule for whole texts and streams keeps their outputs equal.
    chosen = [(h.value, h.rank, h.entity) for h in hits if h.value is not None]
    chosen.sort(key=lambda c: (c[0][0], -c[0][1], c[1]))
    parts: list[str] = []
    at = start
    for (value_start, value_end), _, entity in chosen:
        if value_start < at:
            continue
        parts += (text[at:value_start], marker(entity))
        at = value_end
    parts.append(text[at:end])
    return "".join(parts)
