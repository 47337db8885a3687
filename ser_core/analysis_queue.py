"""A fair line for analyses shared by every visitor of one server (pure Python, no Streamlit).

At most ``slots`` analyses run at once; the others wait their turn, first come, first served.
A waiting request can ask its place and an estimated wait (from the mean duration of the last
runs); a running one is stopped cooperatively: the work receives ``should_stop`` and asks it
between its steps (``Analyzer.analyze(..., should_stop=...)`` does, raising :class:`Cancelled`).

    line = AnalysisQueue(slots=1, is_active=lambda session: session in open_tabs)
    result = line.run("session-42", lambda should_stop: analyzer.analyze(clip, should_stop=should_stop),
                      on_wait=lambda place: print(place.message()))

Rules:

* **One request per session.** A second submit from the same session *replaces* the first: a
  waiting first request is cancelled and the new one takes over its place in line (pressing
  Analyze again never sends you to the back); a running first request is stopped at its next
  step and the new one joins the end of the line.
* **A session that goes away leaves.** ``is_active(session)`` (optional) is asked whenever the
  line moves and by ``should_stop``: a closed tab's waiting request is dropped and its running
  one stops at its next step, freeing the slot. ``cancel(session)`` does the same on demand.
* A slot is freed when the work returns or raises (``finish``), not when it is cancelled:
  cancelled work still uses the CPU until it reaches its next step.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

WAITING, RUNNING, DONE, CANCELLED = "waiting", "running", "done", "cancelled"

STOPPED = "This analysis was stopped before it finished."
REPLACED = "You asked for a new analysis, so the earlier one was stopped."
GONE = "The browser tab that asked for this analysis was closed."


class Cancelled(Exception):
    """An analysis stopped before it finished; the message says why, in plain words."""

    def __init__(self, reason: str = STOPPED) -> None:
        super().__init__(reason)


@dataclass(frozen=True)
class Place:
    """Where a waiting request stands: how many analyses go before it, and about how long."""

    ahead: int
    wait_s: float

    def message(self) -> str:
        """E.g. "Waiting: 2 ahead of you, about 12 s." (for the page's status box)."""
        when = "any moment now" if self.wait_s < 1.5 else f"about {round(self.wait_s)} s"
        return f"Waiting: {self.ahead} ahead of you, {when}."


class Ticket:
    """One session's request: its state in the line and its cancellation token."""

    def __init__(self, session: str, line: "AnalysisQueue") -> None:
        self.session = session
        self.state = WAITING
        self.reason = STOPPED
        self.started: float | None = None
        self._line = line

    @property
    def cancelled(self) -> bool:
        return self.state == CANCELLED

    def should_stop(self) -> bool:
        """True once this request was cancelled or its session went away (the work's check)."""
        if self.state == CANCELLED:
            return True
        if not self._line.session_is_active(self.session):
            self._line.cancel_ticket(self, GONE)
            return True
        return False


class AnalysisQueue:
    """At most ``slots`` analyses at once, the rest in FIFO order (see the module docstring)."""

    def __init__(
        self,
        slots: int = 1,
        is_active: Callable[[str], bool] | None = None,
        first_guess_s: float = 10.0,
        history: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.slots = int(slots)
        self._is_active = is_active
        self._first_guess_s = float(first_guess_s)
        self._durations: deque[float] = deque(maxlen=history)
        self._clock = clock
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._changed = threading.Condition()

    # --- what a session does ------------------------------------------------------------------

    def submit(self, session: str) -> Ticket:
        """A new request for ``session``, replacing the session's earlier one (module rules)."""
        ticket = Ticket(session, self)
        with self._changed:
            earlier = self._ticket_of(session)
            if earlier is not None and earlier.state == WAITING:
                self._waiting[self._waiting.index(earlier)] = ticket
                self._mark_cancelled(earlier, REPLACED)
            else:
                if earlier is not None:
                    self._mark_cancelled(earlier, REPLACED)
                self._waiting.append(ticket)
            self._move_line(changed=True)
        return ticket

    def wait_turn(self, ticket: Ticket, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``ticket``'s turn: True once it may run, False while it
        still waits; raises Cancelled when it was cancelled or its session went away."""
        with self._changed:
            self._move_line()
            if ticket.state == WAITING and timeout > 0:
                self._changed.wait(timeout)
                self._move_line()
            if ticket.state == CANCELLED:
                raise Cancelled(ticket.reason)
            return ticket.state == RUNNING

    def place(self, ticket: Ticket) -> Place | None:
        """``ticket``'s place and estimated wait (None once it is no longer waiting)."""
        with self._changed:
            if ticket.state != WAITING:
                return None
            index = self._waiting.index(ticket)
            return Place(ahead=len(self._running) + index, wait_s=self._estimate(index))

    def finish(self, ticket: Ticket, completed: bool = False) -> None:
        """``ticket``'s work returned or raised: free its slot (or its place in line). The run's
        duration counts towards the estimates when it ``completed``."""
        with self._changed:
            if ticket in self._running:
                self._running.remove(ticket)
                if completed and ticket.started is not None:
                    self._durations.append(self._clock() - ticket.started)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            if ticket.state != CANCELLED:
                ticket.state = DONE
            self._move_line(changed=True)

    def run(self, session: str, work: Callable[[Callable[[], bool]], T],
            on_wait: Callable[[Place], None] | None = None, poll_s: float = 0.3) -> T:
        """Submit, wait for the turn (calling ``on_wait(place)`` about every ``poll_s`` s), then
        return ``work(should_stop)``. The slot is freed however the work ends; Cancelled raised
        by the work comes out with the reason the request was cancelled for."""
        ticket = self.submit(session)
        completed = False
        try:
            timeout = 0.0  # the first place is shown at once
            while not self.wait_turn(ticket, timeout):
                place = self.place(ticket)
                if on_wait is not None and place is not None:
                    on_wait(place)
                timeout = poll_s
            result = work(ticket.should_stop)
            completed = True
            return result
        except Cancelled:
            raise Cancelled(ticket.reason) from None  # the queue knows why: say it
        finally:
            self.finish(ticket, completed)

    # --- what the server does ------------------------------------------------------------------

    def cancel(self, session: str, reason: str = STOPPED) -> bool:
        """Cancel ``session``'s request: a waiting one leaves the line (those behind move up), a
        running one stops at its next step. False when the session has none."""
        with self._changed:
            ticket = self._ticket_of(session)
            if ticket is None:
                return False
            self._cancel(ticket, reason)
            return True

    def cancel_ticket(self, ticket: Ticket, reason: str = STOPPED) -> None:
        """Cancel one request (see ``cancel``)."""
        with self._changed:
            self._cancel(ticket, reason)

    def session_is_active(self, session: str) -> bool:
        """Whether ``session`` is still there (always True without an ``is_active`` callback)."""
        return self._is_active is None or bool(self._is_active(session))

    def mean_seconds(self) -> float:
        """The mean duration of the recent completed runs (a first guess before any)."""
        with self._changed:
            return self._mean()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._changed:
            return len(self._running), len(self._waiting)

    # --- inside the lock ---------------------------------------------------------------------

    def _ticket_of(self, session: str) -> Ticket | None:
        for ticket in self._running + self._waiting:
            if ticket.session == session and ticket.state != CANCELLED:
                return ticket
        return None

    def _mark_cancelled(self, ticket: Ticket, reason: str) -> None:
        """Flag ``ticket`` cancelled; a waiting one is also taken out of the line."""
        if ticket.state in (DONE, CANCELLED):
            return
        ticket.state, ticket.reason = CANCELLED, reason
        if ticket in self._waiting:
            self._waiting.remove(ticket)

    def _cancel(self, ticket: Ticket, reason: str) -> None:
        self._mark_cancelled(ticket, reason)
        self._move_line(changed=True)

    def _move_line(self, changed: bool = False) -> None:
        """Drop waiting requests whose session went away, start the first ones while slots are
        free, and, when the line changed (or ``changed`` says the caller changed it), wake every
        waiter to look at its ticket. Waking them when nothing changed would make each woken
        waiter wake all the others again: a loop that keeps the CPU busy while nobody moves."""
        for ticket in [t for t in self._waiting if not self.session_is_active(t.session)]:
            self._mark_cancelled(ticket, GONE)
            changed = True
        while self._waiting and len(self._running) < self.slots:
            ticket = self._waiting.pop(0)
            ticket.state, ticket.started = RUNNING, self._clock()
            self._running.append(ticket)
            changed = True
        if changed:
            self._changed.notify_all()

    def _mean(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else self._first_guess_s

    def _estimate(self, index: int) -> float:
        """Seconds until the request at ``index`` in line starts: each slot finishes its current
        run after about the mean duration, then takes the next waiting request."""
        mean, now = self._mean(), self._clock()
        free_at = [max(mean - (now - t.started), 0.0) for t in self._running if t.started is not None]
        free_at += [0.0] * (self.slots - len(free_at))
        heapq.heapify(free_at)
        for _ in range(index):  # the requests ahead of this one take the earliest free slots
            heapq.heappush(free_at, heapq.heappop(free_at) + mean)
        return free_at[0]
