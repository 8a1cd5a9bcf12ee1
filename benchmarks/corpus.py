"""The benchmark corpus: patterns and event types shaped like real subscriptions.

Wildcards sit mostly on the right (``orders:fulfillment:*:*``), a handful on the
left (``*:*:*:archived``), and each event type matches about one pattern whatever
the number of patterns, so the figures measure lookup cost, not result size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LEFT_WILDCARDS = (
    "*:*:*:archived",
    "*:*:audit:*",
    "*:compliance:*:*",
    "*:*:*:purged",
    "*:*:gdpr:erased",
)


@dataclass(frozen=True)
class Corpus:
    patterns: list[str]
    event_types: list[str]  # all different
    repeated: list[str]  # a few hot types, repeated as in real traffic


def make_corpus(pattern_count: int, event_count: int = 20_000, seed: int = 9535) -> Corpus:
    rng = random.Random(seed)
    domains = [f"domain{d}" for d in range(max(10, pattern_count // 500))]
    shapes = []  # (pattern, number of wildcards on the right)
    for i in range(pattern_count - len(LEFT_WILDCARDS)):
        domain = rng.choice(domains)
        roll = rng.random()
        if roll < 0.40:
            shapes.append((f"{domain}:category{i}:resource{i}:action{i % 50}", 0))
        elif roll < 0.70:
            shapes.append((f"{domain}:category{i}:resource{i}:*", 1))
        elif roll < 0.95:
            shapes.append((f"{domain}:category{i}:*:*", 2))
        else:
            shapes.append((f"solo{i}:*:*:*", 3))
    event_types = []
    for j in range(event_count):
        pattern, wild = shapes[rng.randrange(len(shapes))]
        head = pattern.split(":")[: 4 - wild]
        tail = [f"x{j}"] * wild if wild else []
        if not wild:  # make exact types distinct too, by a sibling action nobody subscribes to
            head[3] = f"{head[3]}" if j % 2 else f"{head[3]}.v{j}"
        event_types.append(":".join(head + tail))
    hot = event_types[:50]
    repeated = [hot[rng.randrange(len(hot))] for _ in range(event_count)]
    return Corpus(
        patterns=[p for p, _ in shapes] + list(LEFT_WILDCARDS),
        event_types=event_types,
        repeated=repeated,
    )
