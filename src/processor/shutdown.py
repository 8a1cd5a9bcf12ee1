"""The way out when a stop request meets a batch that does not end."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from processor.health import Health

log = logging.getLogger(__name__)


def abandon(health: Health, grace: float, release: Callable[[], None] = lambda: None) -> None:
    """Exit with 1 now, without the batch in hand: nothing is lost, since its
    resume token was not saved, and the next start processes its events again.
    ``release`` gives up what others wait for (the leader lock) first."""
    stall = health.stall()
    log.error(
        "the current batch did not finish within %.0fs of the stop request (FC_SHUTDOWN_GRACE_SECONDS)%s; "
        "exiting without it: its events are processed again at the next start",
        grace,
        f" ({stall})" if stall else "",
    )
    release()  # a standby may lead at once; this instance's writes are fenced from then on
    logging.shutdown()
    os._exit(1)
