"""Which level of a queue with priorities takes a worker's free slots next (the rule: contract/priorities.py).

Stride scheduling over the levels' consumer loops (fetch.ConsumerLoop, one per level and partition): each level has
a pass, moved on by 1/weight for each call it starts. A loop that wants slots while loops of other levels wait for
them gets them only if its level's pass is the lowest of the waiting levels; else it waits too. So while levels
wait, calls start in the ratio of their weights (4 : 2 : 1), and a level with nothing to fetch waits for nothing:
its turns go to the others (work-conserving). A level that has calls again after a time without starts
level with the lowest pass of the levels that have calls, not with the credit of its idle time: it cannot then
hold the others back.

Only loops with work ask (a loop whose last fetch found calls; one that found none, even with calls still running,
is idle again): an idle loop looks for its next call without a turn and without holding a slot (fetch.py), so a
level with nothing queued holds no slot another level could use. A loop given a turn asks the server briefly while
other levels have calls, so its slots come back at once when its stream is empty.
"""

from __future__ import annotations

from collections import Counter

from jetqueue.contract.priorities import LEVELS, WEIGHTS, Priority


class Turns:
    """The passes of one worker's levels, which levels have calls (active) and which wait for slots now."""

    def __init__(self) -> None:
        self.passes: dict[Priority, float] = dict.fromkeys(LEVELS, 0.0)
        self.active: Counter[Priority] = Counter()  # loops of each level that have calls
        self.waiting: Counter[Priority] = Counter()  # loops of each level refused a turn, waiting for one
        self.started: Counter[Priority] = Counter()  # calls started per level (the tests read it)
        self.clock = 0.0  # the pass of the last level given a turn: where a level coming back starts

    def turn(self, level: Priority) -> Turn:
        return Turn(self, level)

    def _activate(self, level: Priority) -> None:
        """A level has calls again: it starts level with the others that have (or with the last turn given, when
        none has), not with the credit of its time without calls."""
        if not self.active[level]:
            others = [self.passes[other] for other, n in self.active.items() if n and other is not level]
            self.passes[level] = max(self.passes[level], self.clock, min(others, default=self.clock))
        self.active[level] += 1

    def _may(self, level: Priority) -> bool:
        others = [self.passes[other] for other, n in self.waiting.items() if n and other is not level]
        return not others or self.passes[level] <= min(others)

    def _took(self, level: Priority, n: int) -> None:
        self.clock = max(self.clock, self.passes[level])
        self.passes[level] += n / WEIGHTS[level]
        self.started[level] += n


class Turn:
    """One consumer loop's side of the turns: may it reserve slots now, and what it started."""

    def __init__(self, turns: Turns, level: Priority) -> None:
        self.turns = turns
        self.level = level
        self._active = False
        self._waiting = False

    def may(self, free: bool = True) -> bool:
        """True: reserve the free slots now. False: wait, as a level that wants slots (`free`: there are some now;
        a loop waiting for a slot counts as waiting, so that the next free one goes by the turns)."""
        if not self._active:
            self._active = True
            self.turns._activate(self.level)
        if free and self.turns._may(self.level):
            self._leave()
            return True
        if not self._waiting:
            self._waiting = True
            self.turns.waiting[self.level] += 1
        return False

    def took(self, n: int) -> None:
        if n:
            self.turns._took(self.level, n)

    def idle(self) -> None:
        """The loop has no calls (it looks for one without a turn), or stops."""
        self._leave()
        if self._active:
            self._active = False
            self.turns.active[self.level] -= 1

    def _leave(self) -> None:
        if self._waiting:
            self._waiting = False
            self.turns.waiting[self.level] -= 1
