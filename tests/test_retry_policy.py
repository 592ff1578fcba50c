"""oplog.nats_errors.RetryPolicy: which errors are tried again, how often, and what the caller sees."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError

from oplog.nats_errors import TRANSIENT, RetryPolicy


class Flaky:
    """A step that fails with ``errors`` in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def run(policy: RetryPolicy, step: Flaky, seen: list[tuple[str, int]] | None = None) -> str:
    def on_retry(error: BaseException, attempt: int) -> None:
        if seen is not None:
            seen.append((type(error).__name__, attempt))

    return asyncio.run(policy.run(step, on_retry))


def test_transient_errors_are_tried_again_and_each_retry_is_reported() -> None:
    step, seen = Flaky(NatsTimeoutError(), TimeoutError()), []
    assert run(RetryPolicy(first_pause_s=0), step, seen) == "done"
    assert step.calls == 3 and seen == [("TimeoutError", 1), ("TimeoutError", 2)]


def test_a_permanent_error_is_raised_at_once() -> None:
    step = Flaky(BadRequestError())
    with pytest.raises(BadRequestError):
        run(RetryPolicy(first_pause_s=0), step)
    assert step.calls == 1 and not isinstance(BadRequestError(), TRANSIENT)


def test_the_last_failure_is_raised_once_the_attempts_are_used_up() -> None:
    step = Flaky(*[NatsTimeoutError() for _ in range(5)])
    with pytest.raises(NatsTimeoutError):
        run(RetryPolicy(attempts=3, first_pause_s=0), step)
    assert step.calls == 3


def test_a_deadline_that_has_passed_allows_no_second_attempt() -> None:
    step = Flaky(NatsTimeoutError(), NatsTimeoutError())
    with pytest.raises(NatsTimeoutError):
        run(RetryPolicy(deadline_s=0, first_pause_s=0), step)
    assert step.calls == 1


def test_the_caller_chooses_which_errors_are_worth_retrying() -> None:
    class NotYet(Exception):
        pass

    step = Flaky(NotYet(), NotYet())
    assert run(RetryPolicy((NotYet,), first_pause_s=0), step) == "done"
    with pytest.raises(NotYet):
        run(RetryPolicy(first_pause_s=0), Flaky(NotYet()))
