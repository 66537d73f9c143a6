"""The output filter: remove PII and secrets from texts, JSON values and streams of chunks.

Each value found is replaced by a typed marker such as `[EMAIL_REDACTED]`. What counts as
a value is defined in `app.guards.recognizers`.

A stream must not leak a value cut in two by a chunk boundary, and cannot unsend what it
has sent, so it holds back the tail that later text could still change and emits only
the prefix that is settled. To find that tail it searches a probe built from every
pattern, each one atomic and followed by `(?!)`, with `regex`'s partial matching: the
probe never matches, so the search reports the leftmost position whose match attempt
read past the end of the buffer. Every attempt before that position has the same
outcome whatever follows; if a match found there runs across it, the cut moves back to
that match's start. Hence, for any split of a text into chunks, the pieces returned by
`feed` followed by `flush()` join to exactly `redact(text)`, and ordinary prose flows out
about one word behind.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import regex

from app.guards.recognizers import (
    LOOKBEHIND,
    PRIVATE_KEY_BEGIN,
    PRIVATE_KEY_END,
    PRIVATE_KEY_END_MAX,
    RECOGNIZERS,
    SECRET_NAME,
    Entity,
    Span,
)

__all__ = [
    "ALL_ENTITIES",
    "HOLD_LIMIT",
    "NO_REDACTION",
    "Entity",
    "Redactor",
    "StreamRedactor",
    "parse_entities",
]

ALL_ENTITIES: frozenset[Entity] = frozenset(Entity)
"""Every entity the filter knows."""

HOLD_LIMIT = 16 * 1024
"""Characters a stream may hold back; past it the held value is redacted unseen."""

_CONTEXT = LOOKBEHIND + 6  # emitted raw text kept so lookbehinds see across chunks
_BEGIN = regex.compile(PRIVATE_KEY_BEGIN)
_END = regex.compile(PRIVATE_KEY_END)
_SECRET_FIELD = regex.compile(SECRET_NAME)


def _marker(entity: Entity) -> str:
    return f"[{entity}_REDACTED]"


@dataclass(frozen=True, slots=True)
class _Hit:
    """A pattern match; `value` is the span it replaces, None when its validator refused."""

    start: int
    end: int
    value: Span | None
    rank: int
    entity: Entity


class _Scanner:
    """The compiled recognizers of one set of entities."""

    def __init__(self, entities: frozenset[Entity]) -> None:
        chosen = [r for r in RECOGNIZERS if r.entity in entities]
        self._recognizers = chosen
        self._patterns = [regex.compile(r.pattern) for r in chosen]
        bare = [r.pattern.replace("(?P<v>", "(?:") for r in chosen]
        self._any = regex.compile("|".join(f"(?:{b})" for b in bare))
        self._probe = regex.compile("(?:" + "|".join(f"(?>{b})" for b in bare) + ")(?!)")
        self._probes = [regex.compile(f"(?>{b})(?!)") for b in bare]

    def hits(self, text: str, pos: int) -> list[_Hit]:
        """Every match of every pattern in `text[pos:]`, the end of `text` being final."""
        found: list[_Hit] = []
        for rank, (rec, pattern) in enumerate(zip(self._recognizers, self._patterns, strict=True)):
            for m in pattern.finditer(text, pos):
                start, end = m.span("v") if "v" in pattern.groupindex else m.span()
                value: Span | None = (start, end)
                if rec.validate is not None:
                    sub = rec.validate(text[start:end])
                    value = None if sub is None else (start + sub[0], start + sub[1])
                found.append(_Hit(m.start(), m.end(), value, rank, rec.entity))
        return found

    def settle(self, text: str, pos: int, probe_from: int) -> tuple[int, int, list[_Hit]]:
        """Where `text[pos:]` can be cut so that no later text changes the hits before it.

        Returns the cut, where the probe stopped (a later call may probe from there, as
        every attempt before it is settled) and the hits before the cut.
        """
        probe = self._probe.search(text, probe_from, partial=True)
        unsettled = len(text) if probe is None else probe.start()
        cut = unsettled
        first = self._any.search(text, pos)
        if first is None or first.start() >= cut:
            return cut, unsettled, []
        hits = [h for h in self.hits(text, pos) if h.start < cut]
        while crossing := [h.start for h in hits if h.end > cut]:
            cut = min(crossing)
            hits = [h for h in hits if h.start < cut]
        return cut, unsettled, hits

    def blocker(self, text: str, at: int) -> Entity:
        """The entity whose match, complete or not, starts at `at`."""
        for rec, pattern, probe in zip(
            self._recognizers, self._patterns, self._probes, strict=True
        ):
            if pattern.match(text, at) or probe.match(text, at, partial=True):
                return rec.entity
        return self._recognizers[0].entity


@functools.cache
def _scanner(entities: frozenset[Entity]) -> _Scanner | None:
    return _Scanner(entities) if entities else None


def _render(text: str, start: int, end: int, hits: list[_Hit]) -> str:
    # Where values overlap, the one starting first wins, then the longer, then the
    # earlier recognizer; the same rule whole or streamed keeps both outputs equal.
    chosen = sorted((h.value, h.rank, h.entity) for h in hits if h.value is not None)
    chosen.sort(key=lambda c: (c[0][0], -c[0][1], c[1]))
    parts: list[str] = []
    at = start
    for (value_start, value_end), _, entity in chosen:
        if value_start < at:
            continue
        parts += (text[at:value_start], _marker(entity))
        at = value_end
    parts.append(text[at:end])
    return "".join(parts)


class StreamRedactor:
    """Redacts one stream of chunks; get one from `Redactor.stream()`."""

    def __init__(self, scanner: _Scanner | None) -> None:
        self._scanner = scanner
        self._text = ""
        """Raw text: a little already emitted (for lookbehinds), then the held tail."""
        self._held_from = 0
        self._probe_from = 0
        """Every match attempt before this index of `_text` is settled."""
        self._in_key = False
        """Inside a private key block too long to hold, already replaced by its marker."""

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the redacted text that is safe to emit now."""
        if self._scanner is None:
            return chunk
        self._text += chunk
        if self._in_key:
            return self._skip_key()
        cut, self._probe_from, hits = self._scanner.settle(
            self._text, self._held_from, max(self._held_from, self._probe_from)
        )
        out = _render(self._text, self._held_from, cut, hits)
        if len(self._text) - cut <= HOLD_LIMIT:
            self._advance(cut)
            return out
        # Fail safe: what is held is too long to keep, so it goes out as a marker unseen.
        entity = self._scanner.blocker(self._text, cut)
        out += _marker(entity)
        if entity is Entity.PRIVATE_KEY:
            begin = _BEGIN.match(self._text, cut)
            self._in_key = True
            self._advance(cut if begin is None else begin.end())
            return out + self._skip_key()
        self._advance(len(self._text))
        return out

    @property
    def held(self) -> int:
        """Characters received but not emitted yet."""
        return len(self._text) - self._held_from

    def flush(self) -> str:
        """End the stream: redact and return whatever was held back."""
        if self._scanner is None or self._in_key:
            out = ""
        else:
            hits = self._scanner.hits(self._text, self._held_from)
            out = _render(self._text, self._held_from, len(self._text), hits)
        self._text, self._held_from, self._probe_from, self._in_key = "", 0, 0, False
        return out

    def _advance(self, cut: int) -> None:
        start = max(0, cut - _CONTEXT)
        self._text = self._text[start:]
        self._held_from = cut - start
        self._probe_from = max(self._probe_from - start, self._held_from)

    def _skip_key(self) -> str:
        end = _END.search(self._text, self._held_from)
        if end is None:
            self._advance(max(self._held_from, len(self._text) - PRIVATE_KEY_END_MAX))
            return ""
        self._in_key = False
        self._advance(end.end())
        return self.feed("")


@dataclass(frozen=True, kw_only=True)
class Redactor:
    """Which entities to remove from model output; an empty set removes nothing."""

    entities: frozenset[Entity] = ALL_ENTITIES
    """The entities replaced by their markers."""

    def redact(self, text: str) -> str:
        """Replace every value of the chosen entities by its marker, e.g. `[EMAIL_REDACTED]`.

        An unterminated private key block is redacted to the end of the text.
        """
        scanner = _scanner(self.entities)
        if scanner is None:
            return text
        return _render(text, 0, len(text), scanner.hits(text, 0))

    def redact_json(self, value: object) -> object:
        """A deep copy of a JSON-like value with every string value redacted.

        Dict keys stay as they are; the string under a key named like a secret
        (`password`, `api_key`, `client_secret`…) is replaced whole, as in `redact`'s
        `password=…` rule. Numbers, booleans and None are returned unchanged.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._redact_field(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [self.redact_json(v) for v in value]
            return items if isinstance(value, list) else tuple(items)
        return value

    def stream(self) -> StreamRedactor:
        """A new redactor for one stream of chunks."""
        return StreamRedactor(_scanner(self.entities))

    def _redact_field(self, key: object, value: object) -> object:
        secret = (
            Entity.API_KEY in self.entities
            and isinstance(key, str)
            and isinstance(value, str)
            and value != ""
            and _SECRET_FIELD.fullmatch(key) is not None
        )
        return _marker(Entity.API_KEY) if secret else self.redact_json(value)


NO_REDACTION = Redactor(entities=frozenset())
"""A redactor that changes nothing."""


def parse_entities(names: Iterable[str]) -> frozenset[Entity]:
    """The entities named in a configured list, case-insensitively; blank names are skipped.

    Raises ValueError naming the first unknown entity.
    """
    chosen: set[Entity] = set()
    for name in names:
        key = name.strip().upper()
        if not key:
            continue
        if key not in Entity.__members__:
            known = ", ".join(Entity)
            raise ValueError(f"unknown entity {name.strip()!r}; known entities: {known}")
        chosen.add(Entity[key])
    return frozenset(chosen)
