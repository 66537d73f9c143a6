"""API keys: configured ones and stored ones (HMAC-SHA256 keyed by the secret key)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from app.errors import Forbidden
from app.settings import Role
from app.store import keys as key_store
from app.store.db import Database
from app.store.runs import Owner

KEY_PREFIX = "ak_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    user_id: str
    role: Role
    key_id: str = ""
    """Names the API key without revealing it (a prefix of its keyed hash): rate limits count
    per key."""

    @property
    def owner(self) -> Owner:
        return Owner(user_id=self.user_id, is_admin=self.role == "admin")

    def require_admin(self, refusal: str) -> None:
        """Raise Forbidden(`refusal`) unless the caller is an admin."""
        if self.role != "admin":
            raise Forbidden(refusal)

    @property
    def can_approve(self) -> bool:
        return self.role in ("approver", "admin")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """Resolves a bearer key to a Principal.

    Stored keys are looked up by their keyed hash and cached for `cache_ttl_s`
    (also misses, so a flood of wrong keys does not reach the database); a revoked
    key therefore stops working within that time.
    """

    def __init__(
        self,
        *,
        secret: str,
        db: Database,
        static_keys: tuple[tuple[str, str, Role], ...] = (),
        cache_ttl_s: float = 30.0,
        cache_size: int = 10_000,
    ) -> None:
        self._secret = secret.encode()
        self._db = db
        hashed = {self.hash_key(key): (user, role) for user, key, role in static_keys}
        self._static = {d: Principal(u, r, _key_id(d)) for d, (u, r) in hashed.items()}
        self._cache: OrderedDict[str, tuple[Principal | None, float]] = OrderedDict()
        self._ttl = cache_ttl_s
        self._size = cache_size

    def hash_key(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    async def authenticate(self, key: str) -> Principal | None:
        digest = self.hash_key(key)
        static = self._static.get(digest)
        if static is not None:
            return static
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._db.transaction() as conn:
            found = await key_store.find_key(conn, digest)
        principal = None if found is None else Principal(found[0], _role(found[1]), _key_id(digest))
        self._cache[digest] = (principal, now + self._ttl)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return principal

    async def create_key(self, *, user_id: str, role: Role) -> str:
        """Store a new key for `user_id` and return it; it is never shown again."""
        key, _ = await self.issue_key(user_id=user_id, role=role)
        return key

    async def issue_key(self, *, user_id: str, role: Role) -> tuple[str, key_store.KeyRecord]:
        """Store a new key for `user_id`: the key (shown this once) and its record."""
        key = new_api_key()
        async with self._db.transaction() as conn:
            record = await key_store.insert_key(
                conn, user_id=user_id, key_hash=self.hash_key(key), role=role
            )
        return key, record

    async def revoke_key(self, key_or_id: str) -> key_store.KeyRecord | None:
        """Revoke a stored key, named by the key itself or by its id (`keys list`); None
        when no stored key matches. Replicas stop taking it within `cache_ttl_s`."""
        now = datetime.now(UTC)
        async with self._db.transaction() as conn:
            if key_or_id.startswith(KEY_PREFIX):
                return await key_store.revoke_key(conn, now=now, key_hash=self.hash_key(key_or_id))
            try:
                key_id = uuid.UUID(key_or_id)
            except ValueError:
                return None
            return await key_store.revoke_key(conn, now=now, key_id=key_id)


def _key_id(digest: str) -> str:
    return digest[:32]


def _role(value: str) -> Role:
    if value == "admin":
        return "admin"
    if value == "approver":
        return "approver"
    return "user"
