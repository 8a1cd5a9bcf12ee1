"""The pure-Python segment trie: the compiled trie's twin, for where no compiler is.

Same structure as ``_ctrie.pyx``: one node per segment, literal children in a
dict and the ``*`` child apart, leaves holding a dict used as an ordered set of
keys, and a bounded result cache that ``add`` and ``remove`` empty.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from fastmatch._contract import EVENT_TYPE_RE, SEPARATOR, WILDCARD, explain, validate_pattern

K = TypeVar("K", bound=Hashable)


class _Node(Generic[K]):
    __slots__ = ("children", "keys", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.star: _Node[K] | None = None
        self.keys: dict[K, None] | None = None  # leaves only

    def is_empty(self) -> bool:
        return not self.children and self.star is None and self.keys is None


class PatternIndex(Generic[K]):
    """Event-type patterns mapped to keys, matched by a segment trie."""

    __slots__ = ("_cache", "_cache_size", "_entries", "_root")

    def __init__(self, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._root: _Node[K] = _Node()
        self._entries = 0
        self._cache: dict[str, dict[K, None]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return self._entries

    def __repr__(self) -> str:
        return f"<PatternIndex (python) entries={self._entries}>"

    def add(self, pattern: str, key: K) -> None:
        """Map ``pattern`` to ``key``; adding a pair that is already there changes nothing."""
        segments = _split_pattern(pattern)
        hash(key)  # an unhashable key must fail before the trie changes
        node = self._root
        for segment in segments:
            if segment == WILDCARD:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                node = node.children.setdefault(segment, _Node())
        if node.keys is None:
            node.keys = {}
        elif key in node.keys:
            return
        node.keys[key] = None
        self._entries += 1
        self._cache.clear()

    def remove(self, pattern: str, key: K) -> None:
        """Unmap ``key`` from ``pattern``; ``KeyError`` if that pair is not there."""
        segments = _split_pattern(pattern)
        path = [self._root]
        for segment in segments:
            parent = path[-1]
            child = parent.star if segment == WILDCARD else parent.children.get(segment)
            if child is None:
                raise KeyError((pattern, key))
            path.append(child)
        leaf = path[-1]
        if leaf.keys is None or key not in leaf.keys:
            raise KeyError((pattern, key))
        del leaf.keys[key]
        self._entries -= 1
        self._cache.clear()
        if not leaf.keys:
            leaf.keys = None
        # Prune the branch bottom-up while it holds nothing.
        for level in range(len(segments), 0, -1):
            if not path[level].is_empty():
                break
            if segments[level - 1] == WILDCARD:
                path[level - 1].star = None
            else:
                del path[level - 1].children[segments[level - 1]]

    def match(self, event_type: str, /) -> list[K]:
        """The keys of every pattern that matches ``event_type``, each key once."""
        if self._cache_size and isinstance(event_type, str):
            hit = self._cache.get(event_type)
            if hit is not None:
                return list(hit)
        if not isinstance(event_type, str) or EVENT_TYPE_RE.fullmatch(event_type) is None:
            raise explain(event_type, what="event type")
        frontier = [self._root]
        for segment in event_type.split(SEPARATOR):
            reached = []
            for node in frontier:
                child = node.children.get(segment)
                if child is not None:
                    reached.append(child)
                if node.star is not None:
                    reached.append(node.star)
            frontier = reached
            if not frontier:
                break
        keys: dict[K, None]
        if len(frontier) == 1:
            keys = frontier[0].keys or {}
        else:
            keys = {}
            for leaf in frontier:
                keys.update(leaf.keys or {})
        if self._cache_size:
            self._remember(event_type, keys)
        return list(keys)

    def match_many(self, event_types: Iterable[str], /) -> list[list[K]]:
        """``match`` for each event type of a batch, in one call."""
        return [self.match(event_type) for event_type in event_types]

    def _remember(self, event_type: str, keys: dict[K, None]) -> None:
        """Cache ``keys`` for ``event_type``; a full cache starts over, which costs
        less than tracking age and loses only a moment's hits. Subscriptions change
        rarely, so ``add`` and ``remove`` simply empty the cache."""
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[event_type] = keys


def _split_pattern(pattern: str) -> list[str]:
    return validate_pattern(pattern).split(SEPARATOR)
