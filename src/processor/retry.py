"""The retry policy: what the processor does when a store operation fails.

The three errors of the store contract say what happened, and so what to do:

- ``StoreUnavailable``: the store cannot be reached, or refused a write for now.
  Retried for as long as the instance may go on, with capped exponential
  backoff and full jitter, so that instances that failed together do not retry
  together.
- ``Fenced``: a newer leader saved progress. Never retried: the lead ends.
- ``StoreMisconfigured``: retrying cannot help, an operator must act. Never
  retried: the process stops.

Anything else is a defect (a ``TypeError`` in a store, say). It is logged with
its traceback and counted like any failure, retried ``UNEXPECTED_ATTEMPTS``
times in all (a driver may raise something odd once), then raised: the
process exits non-zero, its orchestrator restarts it, and the operator sees
it, instead of a loop that backs off for ever and hides it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import tenacity

from processor.stores.base import Fenced, StoreMisconfigured, StoreUnavailable

log = logging.getLogger(__name__)

UNEXPECTED_ATTEMPTS = 5


def _retried(state: tenacity.RetryCallState) -> bool:
    error = state.outcome.exception() if state.outcome else None
    if error is None or isinstance(error, Fenced | StoreMisconfigured):
        return False
    return isinstance(error, StoreUnavailable) or state.attempt_number < UNEXPECTED_ATTEMPTS


def policy(
    operation: str,
    *,
    initial: float,
    cap: float,
    may_continue: Callable[[], bool],
    pause: Callable[[float], None],
    failed: Callable[[str, BaseException | None], None],
) -> tenacity.Retrying:
    """The policy for ``operation``: ``failed`` hears of each failure that will be
    retried, ``pause`` waits, and ``may_continue`` ends the retries once false."""

    def note(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        failed(operation, error)
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(error, StoreUnavailable):
            log.warning(
                "%s failed (attempt %d), retrying in %.2fs: %s", operation, state.attempt_number, wait, error
            )
        else:
            log.error(
                "%s failed unexpectedly (attempt %d of %d), retrying in %.2fs",
                operation,
                state.attempt_number,
                UNEXPECTED_ATTEMPTS,
                wait,
                exc_info=error,
            )

    return tenacity.Retrying(
        retry=_retried,
        wait=tenacity.wait_random_exponential(multiplier=initial, max=cap),
        stop=lambda state: not may_continue(),
        sleep=pause,
        before_sleep=note,
        reraise=True,
    )
