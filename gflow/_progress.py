"""Progress on stderr: a sweep's bar ticks per finished chunk of runs, never per step; a long
single step (an ODE solve) shows its elapsed time (`Activity`).

A sweep's unit of work is a chunk (a fixed number of runs: seeds × hyper-parameter points,
computed by one compiled program); the bar advances when a chunk is on disk, so no Python
callback ever enters the compiled loop. On a terminal the bar is redrawn in place; otherwise
(a log file, CI) a plain line is printed at most every ``min_interval`` seconds and at the end.

Example:
    >>> bar = Progress(4, label="sweep", stream=io.StringIO())  # doctest: +SKIP
    >>> for _ in range(4): bar.update()  # doctest: +SKIP
    >>> bar.close()  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

_BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` / ``4.2s``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A bar with rate and ETA over ``total`` units (chunks).

    Args:
        total: units of work in this invocation.
        label: shown before the bar.
        unit: name of a unit (``"chunk"``).
        done_before: units already finished in an earlier invocation (shown, not timed).
        enabled: False prints nothing (``--quiet``).
        stream: where to write (default ``sys.stderr``).
        min_interval: seconds between plain lines when ``stream`` is not a terminal.
        clock: monotonic clock (seconds).
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "",
        unit: str = "chunk",
        done_before: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = int(total)
        self.label = label
        self.unit = unit
        self.done_before = int(done_before)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = float(min_interval)
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_print = -float("inf")
        self._note = ""
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())

    @property
    def rate(self) -> float:
        """Units per second in this invocation."""
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else float("nan")

    @property
    def eta(self) -> float:
        """Seconds until the remaining units are done, at the current rate."""
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        return remaining / self.rate if self.done else float("nan")

    def line(self) -> str:
        """The current state as one line."""
        all_total = self.total + self.done_before
        all_done = self.done + self.done_before
        fraction = all_done / all_total if all_total else 1.0
        filled = int(round(fraction * _BAR_WIDTH))
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        before = f" ({self.done_before} from before)" if self.done_before else ""
        rate = self.rate
        speed = f"{1 / rate:.2f}s/{self.unit}" if self.done and rate > 0 else f"–/{self.unit}"
        elapsed = format_duration(self.clock() - self.started)
        text = (
            f"{self.label} [{bar}] {all_done}/{all_total} {self.unit}s{before} | {speed} | "
            f"elapsed {elapsed} | ETA {format_duration(self.eta)}"
        )
        return f"{text} | {self._note}" if self._note else text

    def note(self, text: str) -> None:
        """Show a short status (``compiling``...) next to the bar."""
        self._note = text
        if text:
            self._emit(force=True)

    def start(self) -> None:
        """Restart the clock (call after compilation so the rate counts compute only)."""
        self.started = self.clock()

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more units are finished."""
        self.done += n
        self._note = note
        self._emit(force=self.done >= self.total)

    def close(self) -> None:
        """Final line (and newline on a terminal)."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _emit(self, *, force: bool) -> None:
        if not self.enabled:
            return
        t = self.clock()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()
            return
        if force or t - self._last_print >= self.min_interval:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_print = t


class Activity:
    """A status line for one long step that reports no progress of its own (a compiled ODE
    solve, a training loop inside one XLA call): while the ``with`` block runs, a background
    thread writes the elapsed time every ``interval`` seconds; on exit, the duration.

    Nothing enters the compiled computation. On a terminal the line is redrawn in place.

    Args:
        label: what is running (``"ODE solve, t = 0..230"``).
        enabled: False prints nothing (``--quiet``).
        stream: where to write (default ``sys.stderr``).
        interval: seconds between lines.
    """

    def __init__(
        self,
        label: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 5.0,
    ):
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def _write(self, text: str, *, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            elapsed = format_duration(time.monotonic() - self._started)
            self._write(f"{self.label}: running, {elapsed} elapsed")

    def __enter__(self) -> Activity:
        self._started = time.monotonic()
        if self.enabled:
            self._write(f"{self.label}: started")
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.seconds = time.monotonic() - self._started
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            state = "done" if kind is None else "stopped"
            self._write(f"{self.label}: {state} in {format_duration(self.seconds)}", final=True)
