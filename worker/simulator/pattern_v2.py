"""PatternV2 playback on one simulated toy: the stored pattern, what plays, and InitPlay's queue.

Pure: no I/O and no clock of its own (callers pass ``now_ms``). Lovense
documents the operations (Setup, Play, InitPlay, Stop) and, for InitPlay,
``stopPrevious``: with 0 (the default) the new pattern is queued behind a
running one, with 1 it replaces it. How long a pattern runs and how the queue
behaves otherwise is not documented; each choice made here is named in a comment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

Points = tuple[tuple[int, int], ...]

#: Not documented: how many InitPlays may wait behind a running pattern (more are refused, 404).
MAX_QUEUED: Final = 16


@dataclass(frozen=True, slots=True)
class Playback:
    """One pattern to play: its (ts, pos) points, where to start, the client's offset, its time."""

    actions: Points
    start_ms: int = 0
    offset_ms: int = 0
    time_ms: float | None = None

    @property
    def length_ms(self) -> float:
        """Return how long it plays.

        Not documented: a pattern plays once, from ``startTime`` to its last point,
        or for ``timeMs`` when that is given.
        """
        if self.time_ms is not None:
            return self.time_ms
        return max(0, self.actions[-1][0] - self.start_ms) if self.actions else 0


@dataclass(slots=True)
class PatternPlayer:
    """Hold a toy's stored PatternV2 pattern, whether and since when it plays, and the queue."""

    actions: Points = ()
    playing: bool = False
    start_ms: int = 0
    offset_ms: int = 0
    since_ms: float = 0
    length_ms: float = 0
    queue: list[Playback] = field(default_factory=list)

    def setup(self, actions: Points) -> str:
        """Store a pattern, replacing the previous one; nothing plays and nothing waits."""
        self.actions = actions
        self.playing = False
        self.queue.clear()  # not documented: Setup, Play and Stop drop the queued InitPlays
        return f"PatternV2 set up ({len(actions)} actions)"

    def play(self, start_ms: int, offset_ms: int, now_ms: int, time_ms: float | None = None) -> str:
        """Play the stored pattern from ``start_ms`` now, dropping what was queued."""
        self.queue.clear()
        self._start(Playback(self.actions, start_ms, offset_ms, time_ms), now_ms)
        return f"PatternV2 playing from {start_ms} ms (offset {offset_ms} ms)"

    def init_play(self, playback: Playback, stop_previous: bool, now_ms: int) -> str:
        """Set up and play ``playback`` now, or after the running one with stopPrevious 0."""
        if not stop_previous and self.running(now_ms):
            self.queue.append(playback)
            return (
                f"PatternV2 queued ({len(playback.actions)} actions, "
                f"{len(self.queue)} waiting behind the running pattern)"
            )
        self.queue.clear()
        self.actions = playback.actions
        self._start(playback, now_ms)
        return (
            f"PatternV2 playing {len(playback.actions)} actions from {playback.start_ms} ms "
            f"(offset {playback.offset_ms} ms)"
        )

    def stop(self) -> str:
        """Stop playback and drop the queued patterns."""
        self.playing = False
        self.queue.clear()
        return "PatternV2 stopped"

    def running(self, now_ms: float) -> bool:
        """Tell whether a pattern plays at ``now_ms``, after starting any queued one that is due."""
        self.advance(now_ms)
        return self.playing

    def advance(self, now_ms: float) -> None:
        """End a pattern whose time is up; the next queued one starts where it ended."""
        while self.playing and now_ms >= self.since_ms + self.length_ms:
            ended = self.since_ms + self.length_ms
            if not self.queue:
                self.playing = False
                return
            following = self.queue.pop(0)
            self.actions = following.actions
            self._start(following, ended)

    def snapshot(self, now_ms: float) -> dict[str, Any]:
        """Return the playback state as plain JSON-ready data."""
        self.advance(now_ms)
        return {
            "actions": len(self.actions),
            "playing": self.playing,
            "startTime": self.start_ms,
            "offsetTime": self.offset_ms,
            "queued": len(self.queue),
        }

    def _start(self, playback: Playback, at_ms: float) -> None:
        self.playing = True
        self.start_ms, self.offset_ms = playback.start_ms, playback.offset_ms
        self.since_ms, self.length_ms = at_ms, playback.length_ms
