"""Leader election on Redis, so that of several instances exactly one consumes
the stream, and a deposed one can do no harm.

- Acquiring is one atomic ``SET key value NX PX ttl``, in a script that also
  increments the fencing epoch: each acquisition gets a larger epoch.
- The leader renews with compare-and-extend every ``renew_interval``, and
  holds a lease that ends ``margin`` before the lock could expire, measured on
  the monotonic clock from when its last successful renewal was *sent*. Past
  that deadline it stops consuming, whatever Redis says later.
- Writes of the resume token carry the epoch and the holder, and are refused
  once a newer leader exists, or another holder of the same epoch (see
  ``stores.mongo.RedisTokenStore`` and ``SqliteStore.fence``), so a leader paused past
  its TTL cannot overwrite its successor's progress.
- The store remembers the epoch it was last claimed under, which Redis may
  forget (a restart without persistence starts the counter again): a leader
  whose claim the store refuses while it still holds the lock raises the
  counter past the store's epoch in one step (``advance``), and claims again.
- A clean shutdown releases the lock with compare-and-delete, so a standby
  takes over within one renew interval instead of one TTL.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import redis

from processor.periodic import Periodic

log = logging.getLogger(__name__)

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCR', KEYS[2])
end
return 0
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Raises the epoch past one a store holds, in one step, for the holder alone.
ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2])) + 1
redis.call('SET', KEYS[2], epoch)
return epoch
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def epoch_key(lock_key: str) -> str:
    return f"{lock_key}:epoch"


class LeaderLock:
    def __init__(
        self,
        client: redis.Redis,
        key: str,
        instance_id: str,
        *,
        ttl: float,
        renew_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if renew_interval * 2 >= ttl:
            raise ValueError("the renew interval must be less than half the lock's TTL")
        self._client = client
        self.key = key
        self.instance_id = instance_id
        self.ttl = ttl
        self.renew_interval = renew_interval
        # The lease ends this long before the lock could: room for a renewal in
        # flight and for clocks that run at slightly different rates.
        self.margin = max(renew_interval, ttl / 5)
        self._clock = clock
        self._value = ""
        self.epoch: int | None = None
        self._deadline = 0.0
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._advance = client.register_script(ADVANCE)

    @property
    def holder(self) -> str:
        """This acquisition's value in the lock: the instance, and a token of its own."""
        return self._value

    def held(self) -> bool:
        """Whether this instance may act as leader now."""
        return self.epoch is not None and self._clock() < self._deadline

    def try_acquire(self) -> bool:
        sent = self._clock()
        value = f"{self.instance_id} {secrets.token_hex(8)}"
        try:
            epoch = int(self._acquire(keys=[self.key, epoch_key(self.key)], args=[value, self._ttl_ms]))
        except redis.RedisError as error:
            log.warning("leader lock: cannot reach Redis to acquire (%s)", error)
            return False
        if not epoch:
            return False
        self._value, self.epoch, self._deadline = value, epoch, sent + self.ttl - self.margin
        log.info("leader lock %s acquired by %s, epoch %d", self.key, self.instance_id, epoch)
        return True

    def advance(self, past: int) -> bool:
        """Take an epoch above ``past``, one a store holds, while still holding the
        lock: Redis lost its data (the counter started again), and only a leader
        from before that can have written ``past``. One step, whatever ``past``."""
        if not self.held():
            return False
        try:
            epoch = int(self._advance(keys=[self.key, epoch_key(self.key)], args=[self._value, past]))
        except redis.RedisError as error:
            log.warning("leader lock: cannot reach Redis to raise the epoch (%s)", error)
            return False
        if not epoch:
            return False
        log.warning(
            "leader lock %s: the store was claimed under epoch %d, which this lock's %s does not "
            "exceed (Redis lost its data?): epoch raised to %d",
            self.key,
            past,
            self.epoch,
            epoch,
        )
        self.epoch = epoch
        return True

    def renew(self) -> bool:
        """Extend the lock; False once it is lost (another holds it) or the lease ran out."""
        if self.epoch is None:
            return False
        sent = self._clock()
        try:
            renewed = bool(self._renew(keys=[self.key], args=[self._value, self._ttl_ms]))
        except redis.RedisError as error:
            log.warning("leader lock: renewal failed (%s); the lease ends in %.1fs", error, self._left())
            return self.held()
        if not renewed:
            log.warning("leader lock %s is held by another instance now: stepping down", self.key)
            self.epoch = None
            return False
        self._deadline = sent + self.ttl - self.margin
        return True

    def release(self) -> None:
        if self.epoch is None:
            return
        self.epoch = None
        try:
            self._release(keys=[self.key], args=[self._value])
            log.info("leader lock %s released", self.key)
        except redis.RedisError as error:
            log.warning("leader lock: release failed (%s); it expires on its own", error)

    def _left(self) -> float:
        return max(0.0, self._deadline - self._clock())

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)


class Renewer(Periodic):
    """Renews the lock in the background while the leader works, and only while
    it works: a leader whose processing has stalled lets the lock lapse, so that
    a standby takes over instead of waiting on it for ever."""

    def __init__(self, lock: LeaderLock, stall: Callable[[], str | None] = lambda: None) -> None:
        super().__init__(lock.renew_interval, "leader-renewer")
        self._lock = lock
        self._stall = stall

    def tick(self) -> bool:
        stall = self._stall()
        if stall is not None:
            log.error("processing %s: no longer renewing the leader lock, a standby takes over", stall)
            return False
        return self._lock.renew() or self._lock.held()
