"""Circuit breakers: open after failures, one trial after the cool-down, close on success."""

from __future__ import annotations

from worker.breaker import Breakers


class Clock:
    s = 0.0

    def __call__(self) -> float:
        return self.s


def test_opens_after_consecutive_failures_and_closes_after_a_good_trial() -> None:
    """Three failures open the circuit; after the cool-down one trial passes and success closes."""
    clock = Clock()
    breakers = Breakers(failures=3, cooldown_s=30, clock=clock)
    assert [breakers.failure("a") for _ in range(3)] == [False, False, True]
    assert (breakers.state("a"), breakers.allow("a"), breakers.open_count()) == ("open", False, 1)
    clock.s = 30
    assert breakers.state("a") == "half-open"
    assert (breakers.allow("a"), breakers.allow("a")) == (True, False)
    breakers.success("a")
    assert (breakers.state("a"), breakers.allow("a"), breakers.open_count()) == ("closed", True, 0)


def test_failed_trial_reopens_for_another_cool_down() -> None:
    """A failing half-open trial opens the circuit again from now."""
    clock = Clock()
    breakers = Breakers(failures=1, cooldown_s=10, clock=clock)
    breakers.failure("a")
    clock.s = 10
    assert breakers.allow("a") is True
    breakers.failure("a")
    assert breakers.state("a") == "open"
    clock.s = 19
    assert breakers.state("a") == "open"
    clock.s = 20
    assert breakers.state("a") == "half-open"


def test_success_resets_the_failure_count() -> None:
    """Failures must be consecutive to open the circuit."""
    breakers = Breakers(failures=2, cooldown_s=10, clock=Clock())
    breakers.failure("a")
    breakers.success("a")
    assert breakers.failure("a") is False
    assert breakers.state("a") == "closed"
