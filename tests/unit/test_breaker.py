"""Circuit breakers: open after failures, one trial after the cool-down, close on success."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.breaker import Breakers


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


def test_many_failing_endpoints_keep_at_most_max_circuits() -> None:
    """200,000 distinct endpoints failing once each leave at most the default 100,000 circuits."""
    breakers = Breakers(failures=1, cooldown_s=30, clock=Clock())
    for n in range(200_000):
        breakers.failure(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}:1")
    assert breakers.open_count() == 100_000
    assert len(breakers) == 100_000


def test_the_least_recently_touched_circuit_is_evicted_first() -> None:
    """Past max_circuits the circuit touched longest ago goes; a touched one stays."""
    breakers = Breakers(failures=2, cooldown_s=30, clock=Clock(), max_circuits=2)
    breakers.failure("a")
    breakers.failure("b")
    breakers.allow("a")
    breakers.failure("c")
    assert (len(breakers), breakers.failure("a"), breakers.failure("b")) == (2, True, False)


def test_idle_closed_circuits_are_forgotten() -> None:
    """A closed circuit untouched for longer than the cool-down is dropped, its failures too."""
    clock = Clock()
    breakers = Breakers(failures=3, cooldown_s=10, clock=clock)
    breakers.failure("a")
    breakers.failure("a")
    clock.s = 10.5
    breakers.failure("b")
    assert (breakers.failure("a"), breakers.failure("a"), breakers.state("a")) == (
        False, False, "closed")
    assert len(breakers) == 2


def test_idle_open_circuits_are_kept() -> None:
    """An open circuit is not dropped for idleness: it still allows only one trial."""
    clock = Clock()
    breakers = Breakers(failures=1, cooldown_s=10, clock=clock)
    breakers.failure("a")
    clock.s = 100
    breakers.failure("b")
    assert (len(breakers), breakers.open_count(), breakers.state("a")) == (2, 2, "half-open")
    assert (breakers.allow("a"), breakers.allow("a")) == (True, False)


class NaiveBreakers:
    """The specification, written plainly: a dict scanned in full for every decision."""

    def __init__(self, failures: int, cooldown_s: float, clock: Clock, max_circuits: int) -> None:
        self.threshold, self.cooldown, self.clock = failures, cooldown_s, clock
        self.max = max_circuits
        # endpoint -> [failures, opened_at, trial, touched_at, touch_order]
        self.circuits: dict[str, list[Any]] = {}
        self.order = 0

    def _touch(self, endpoint: str) -> None:
        self.order += 1
        self.circuits[endpoint][3:5] = [self.clock(), self.order]

    def state(self, endpoint: str) -> str:
        c = self.circuits.get(endpoint)
        if c is None or c[1] is None:
            return "closed"
        return "half-open" if self.clock() - c[1] >= self.cooldown else "open"

    def allow(self, endpoint: str) -> bool:
        state = self.state(endpoint)
        if endpoint in self.circuits:
            self._touch(endpoint)
        if state == "closed":
            return True
        if state == "half-open" and not self.circuits[endpoint][2]:
            self.circuits[endpoint][2] = True
            return True
        return False

    def success(self, endpoint: str) -> bool:
        gone = self.circuits.pop(endpoint, None)
        return gone is not None and gone[1] is not None

    def failure(self, endpoint: str) -> bool:
        c = self.circuits.setdefault(endpoint, [0, None, False, 0.0, 0])
        self._touch(endpoint)
        c[0] += 1
        was_open = c[1] is not None
        opened = False
        if c[2] or c[0] >= self.threshold:
            c[1], c[2] = self.clock(), False
            opened = not was_open
        now = self.clock()
        for key, other in list(self.circuits.items()):
            if other[1] is None and now - other[3] > self.cooldown:
                del self.circuits[key]
        while len(self.circuits) > self.max:
            del self.circuits[min(self.circuits, key=lambda k: self.circuits[k][4])]
        return opened

    def open_count(self) -> int:
        return sum(1 for c in self.circuits.values() if c[1] is not None)


_steps = st.lists(
    st.tuples(st.sampled_from(["allow", "success", "failure", "tick"]),
              st.sampled_from("abcdef"), st.sampled_from([0.0, 1.0, 4.0, 6.0])),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(failures=st.integers(1, 3), max_circuits=st.integers(1, 4), steps=_steps)
def test_breakers_match_the_naive_model(
    failures: int, max_circuits: int, steps: list[tuple[str, str, float]]
) -> None:
    """Every answer, open_count and circuit count matches a plain full-scan model, step by step."""
    clock = Clock()
    real = Breakers(failures=failures, cooldown_s=5, clock=clock, max_circuits=max_circuits)
    model = NaiveBreakers(failures, 5, clock, max_circuits)
    for action, endpoint, dt in steps:
        if action == "tick":
            clock.s += dt
            continue
        assert getattr(real, action)(endpoint) == getattr(model, action)(endpoint)
        assert (real.open_count(), len(real)) == (model.open_count(), len(model.circuits))
        assert [real.state(e) for e in "abcdef"] == [model.state(e) for e in "abcdef"]
