"""`Idempotency-Key` on `POST /agent/submit`: a client that sends a submission again (its
answer lost, a 503) gets the run the first one stored, not a second run. The key names
the run for as long as the run exists; reused for another request it is refused."""

from __future__ import annotations

import hashlib
import uuid

import orjson

from app.api.schemas import RunCreate
from app.errors import InvalidRequest
from app.store.idempotency import KeyedRun


class KeyTaken(Exception):
    """A concurrent submission with the same key stored its run first."""


def request_digest(body: RunCreate) -> str:
    """sha256 of the request as parsed (key order and spacing do not matter)."""
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def replayed_run(earlier: KeyedRun, digest: str, key: str) -> uuid.UUID:
    """The run an earlier submission with `key` stored, if it was this same request."""
    if earlier.request_digest != digest:
        raise InvalidRequest(
            f"Idempotency-Key {key!r} was already used for another request: use a new key"
        )
    return earlier.run_id
