"""Where the MongoDB store mirrors its resume token: Redis in production, memory
in development (the spec's two options). The store's own checkpoint, in
MongoDB, is the position; this copy is what operators read with ``redis-cli``.

A saved token is a JSON text, readable with ``redis-cli GET``: the change
stream's resume token, and the position of the last processed event, which is
what lets a stream whose history was lost catch up instead of skipping.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Protocol

import redis

from processor.stores.base import Fenced, StoreMisconfigured, StoreUnavailable

log = logging.getLogger(__name__)


class TokenStore(Protocol):
    def load(self) -> str | None: ...

    def save(self, token: str) -> None:
        """Persist ``token``; raise ``StoreUnavailable`` (to be retried) when it could
        not, ``Fenced`` when a newer leader saved one."""

    def fence(self, epoch: int, holder: str) -> None:
        """Save under ``epoch`` from now on, and claim the token at once."""


class MemoryTokenStore:
    """Without Redis: a copy in memory, lost on restart; the store's checkpoint is not."""

    def __init__(self) -> None:
        log.warning(
            "FC_REDIS_URL is not set: the resume token has no mirror in Redis; the position is the "
            "store's own checkpoint (stream_checkpoints), which a restart resumes from"
        )
        self._token: str | None = None

    def load(self) -> str | None:
        return self._token

    def save(self, token: str) -> None:
        self._token = token

    def fence(self, epoch: int, holder: str) -> None:
        """One process, one memory: there is nobody to fence off."""


# Refuses a write under an epoch smaller than the newest acquisition (when the
# lock lives on this Redis) or than the epoch the stored token was written
# under, or under that same epoch by another holder; then returns the epoch it
# holds, negated (0 and up: written).
SAVE = """
local epoch = tonumber(ARGV[1])
if KEYS[2] then
    local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
    if newest > epoch then
        return -newest
    end
end
local current = redis.call('GET', KEYS[1])
if current then
    local ok, saved = pcall(cjson.decode, current)
    if ok and type(saved) == 'table' and tonumber(saved['epoch']) then
        local held = tonumber(saved['epoch'])
        if held > epoch or (held == epoch and epoch > 0 and saved['holder'] ~= ARGV[3]) then
            return -held
        end
    end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class RedisTokenStore:
    """The token under ``key`` as JSON: ``{"epoch", "holder", "instance", "saved_at", "checkpoint"}``."""

    def __init__(
        self, client: redis.Redis, key: str, instance: str = "", epoch_key: str | None = None
    ) -> None:
        self._client = client
        self._key = key
        self._instance = instance
        self._epoch_key = epoch_key  # the lock's epoch counter, when it lives on this Redis
        self._epoch = 0
        self._holder = ""
        self._save = client.register_script(SAVE)

    def load(self) -> str | None:
        try:
            value = self._client.get(self._key)
        except redis.RedisError as error:
            raise StoreUnavailable(f"redis: {error}") from error
        if value is None:
            return None
        try:
            return json.dumps(json.loads(value)["checkpoint"])
        except (ValueError, KeyError, TypeError):
            raise StoreMisconfigured(
                f"redis key {self._key!r} does not hold a resume token saved by this processor"
            ) from None

    def save(self, token: str) -> None:
        value = json.dumps(
            {
                "epoch": self._epoch,
                "holder": self._holder,
                "instance": self._instance,
                "saved_at": datetime.now(UTC).isoformat(),
                "checkpoint": json.loads(token),
            }
        )
        keys = [self._key] if self._epoch_key is None else [self._key, self._epoch_key]
        try:
            saved = int(self._save(keys=keys, args=[self._epoch, value, self._holder]))
        except redis.RedisError as error:
            raise StoreUnavailable(f"redis: {error}") from error
        if saved <= 0:
            raise Fenced(
                f"resume token {self._key!r}: saved under epoch {-saved} by another leader; "
                f"this instance writes under {self._epoch}",
                -saved,
            )

    def fence(self, epoch: int, holder: str) -> None:
        self._epoch, self._holder = epoch, holder
        token = self.load()
        if token is not None:
            self.save(token)
