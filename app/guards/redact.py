"""The output filter: remove PII and secrets from texts, JSON values and streams of chunks.

Each value found is replaced by a typed marker such as `[EMAIL_REDACTED]`. What counts as
a value is defined in `app.guards.recognizers`.

A stream must not leak a value cut in two by a chunk boundary, and cannot unsend what it
has sent, so it holds back the tail that later text could still change and emits only
the prefix that is settled (`app.guards.scanner` tells where that is): every match
attempt before the cut has the same outcome whatever follows, and no match runs across
it. Hence, for any split of a text into chunks, the pieces returned by `feed` followed by
`flush()` join to exactly `redact(text)`, and ordinary prose flows out about one word
behind. Only a private key block longer than `HOLD_LIMIT` is treated differently: its
marker goes out once the limit is reached and the rest of the block is dropped unseen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import regex

from app.guards.recognizers import (
    LOOKBEHIND,
    PRIVATE_KEY_BEGIN,
    PRIVATE_KEY_END,
    PRIVATE_KEY_END_MAX,
    SECRET_NAME,
    Entity,
)
from app.guards.scanner import Scanner, marker, render, scanner_for

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

_CONTEXT = LOOKBEHIND + 6  # emitted raw text kept, with a margin, for lookbehinds
_BEGIN = regex.compile(PRIVATE_KEY_BEGIN)
_END = regex.compile(PRIVATE_KEY_END)
_SECRET_FIELD = regex.compile(SECRET_NAME)


class StreamRedactor:
    """Redacts one stream of chunks; get one from `Redactor.stream()`."""

    def __init__(self, scanner: Scanner | None) -> None:
        self._scanner = scanner
        self._text = ""
        """Raw text: a little already emitted (for lookbehinds), then the held tail."""
        self._held_from = 0
        self._scanned = 0
        self._open: dict[int, int] = {}
        """Attempts (pattern rank: index in `_text`) that were open when `_text` was
        probed up to `_scanned`; every other attempt before it is settled."""
        self._blocking: int | None = None
        """A pattern whose attempt at the cut was still open at the last full settle."""
        self._in_key = False
        """Inside a private key block too long to hold, already replaced by its marker."""

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the redacted text that is safe to emit now."""
        if self._scanner is None:
            return chunk
        self._text += chunk
        if self._in_key:
            return self._skip_key()
        # The cheap case, most chunks of prose: while that attempt is still open nothing
        # can go out, whatever the other patterns say, so they are left for later.
        if (
            self._blocking is not None
            and self.held <= HOLD_LIMIT
            and self._scanner.is_open(self._text, self._blocking, self._held_from)
        ):
            return ""
        cut, self._open, hits = self._scanner.settle(
            self._text, self._held_from, self._scanned, self._open
        )
        self._scanned = len(self._text)
        self._blocking = next((rank for rank, at in self._open.items() if at == cut), None)
        out = render(self._text, self._held_from, cut, hits)
        if len(self._text) - cut <= HOLD_LIMIT:
            self._advance(cut)
            return out
        # Fail safe: what is held is too long to keep, so it goes out as a marker unseen.
        entity = self._scanner.blocker(self._text, cut)
        out += marker(entity)
        if entity is Entity.PRIVATE_KEY:
            begin = _BEGIN.match(self._text, cut)
            self._in_key, self._blocking = True, None
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
            out = render(self._text, self._held_from, len(self._text), hits)
        self._text, self._held_from, self._in_key, self._blocking = "", 0, False, None
        self._scanned, self._open = 0, {}
        return out

    def _advance(self, cut: int) -> None:
        start = max(0, cut - _CONTEXT)
        self._text = self._text[start:]
        self._held_from = cut - start
        self._scanned = max(self._scanned - start, self._held_from)
        self._open = {rank: max(at - start, self._held_from) for rank, at in self._open.items()}

    def _skip_key(self) -> str:
        end = _END.search(self._text, self._held_from)
        if end is None:
            self._advance(max(self._held_from, len(self._text) - PRIVATE_KEY_END_MAX))
            return ""
        self._in_key = False
        self._advance(end.end())
        self._scanned, self._open = self._held_from, {}
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
        scanner = scanner_for(self.entities)
        if scanner is None:
            return text
        return render(text, 0, len(text), scanner.hits(text, 0))

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
        return StreamRedactor(scanner_for(self.entities))

    def _redact_field(self, key: object, value: object) -> object:
        secret = (
            Entity.API_KEY in self.entities
            and isinstance(key, str)
            and isinstance(value, str)
            and value != ""
            and _SECRET_FIELD.fullmatch(key) is not None
        )
        return marker(Entity.API_KEY) if secret else self.redact_json(value)


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
