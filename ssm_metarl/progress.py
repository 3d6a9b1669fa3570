"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a file or CI log.

A tqdm bar redraws itself with carriage returns; redirected to a file, every refresh becomes another
line. :func:`progress` returns tqdm's bar when stderr is a terminal and otherwise a
:class:`LineProgress`, which has the same loop interface (iterate, ``set_postfix``, ``close``) and
prints one plain line every ``interval`` seconds and one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

DEFAULT_INTERVAL_S = 10.0


class LineProgress:
    """Plain-line progress for a non-terminal stream: no carriage returns, one line per ``interval`` seconds.

    Args:
        iterable: What to loop over.
        desc: A label printed at the start of each line.
        total: The number of iterations when complete (default ``len(iterable)``).
        initial: Iterations already done (a resumed run).
        disable: Print nothing.
        interval: Seconds between lines (the first and the last line are always printed).
        file: Where to write (default ``sys.stderr``).
    """

    def __init__(self, iterable: Iterable[Any], desc: str = "", total: int | None = None, initial: int = 0,
                 disable: bool = False, interval: float = DEFAULT_INTERVAL_S, file: TextIO | None = None) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = initial
        self.initial = initial
        self.disable = disable
        self.interval = interval
        self.file = file
        self.postfix = ""
        self.start = time.perf_counter()
        self.last_print: float | None = None
        self._printed_n = initial
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            if self.last_print is None or time.perf_counter() - self.last_print >= self.interval:
                self._print()
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counts on the next line, as ``key=value``."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Print the final line (once), unless the last line already showed the final count."""
        if self.closed:
            return
        self.closed = True
        if self.last_print is None or self._printed_n != self.n:
            self._print()

    def line(self) -> str:
        """The current progress as one line: counts, percent, elapsed time, rate, ETA and the postfix."""
        elapsed = time.perf_counter() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total:
            parts.append(f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.n}")
        parts.append(f", {_seconds(elapsed)} elapsed, {rate:.2f} it/s")
        if self.total and rate > 0:
            parts.append(f", ETA {_seconds((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(f", {self.postfix}")
        return "".join(parts)

    def _print(self) -> None:
        self.last_print = time.perf_counter()
        self._printed_n = self.n
        if not self.disable:
            stream = self.file if self.file is not None else sys.stderr
            print(self.line(), file=stream, flush=True)


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and CI logs)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable[Any], desc: str = "", total: int | None = None, initial: int = 0,
             disable: bool = False, bar_format: str | None = None, unit: str = "it",
             interval: float = DEFAULT_INTERVAL_S) -> tqdm | LineProgress:
    """A progress display for a loop: tqdm's bar on a terminal, :class:`LineProgress` elsewhere.

    Args:
        iterable: What to loop over.
        desc: A label.
        total: Iterations when complete (default ``len(iterable)``).
        initial: Iterations already done.
        disable: Show nothing.
        bar_format: tqdm's ``bar_format`` (terminal only).
        unit: tqdm's unit (terminal only).
        interval: Seconds between plain lines (non-terminal only).

    Returns:
        An iterable over ``iterable`` with ``set_postfix(**values)`` and ``close()``.
    """
    if is_terminal(sys.stderr):
        return tqdm(iterable, desc=desc, total=total, initial=initial, disable=disable, bar_format=bar_format,
                    unit=unit)
    return LineProgress(iterable, desc=desc, total=total, initial=initial, disable=disable, interval=interval)


__all__ = ["LineProgress", "is_terminal", "progress"]
