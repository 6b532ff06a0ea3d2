"""Capture never takes the workload down: every failure inside capture is caught and counted here.

A hook, the sampler thread, a kernel-backend callback or the writer that raises is stopped at the
boundary of capture code (`Faults.guard`), counted per place, and its first message kept. The model
keeps running; the counts and messages end up in the end-of-run summary and in `runs.notes`.
A place that keeps failing is switched off after `limit` faults (`Faults.disabled`) so that a
broken hook cannot cost an exception per call for the rest of a long run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Fault:
    count: int = 0
    first: str = ""


@dataclass
class Faults:
    """Fault counts per place ('hook.pre', 'sampler', 'writer', ...); thread-safe."""

    limit: int = 100
    places: dict[str, Fault] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, place: str, exc: BaseException) -> None:
        with self._lock:
            f = self.places.setdefault(place, Fault())
            f.count += 1
            if not f.first:
                text = str(exc).strip().splitlines()
                f.first = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

    def disabled(self, place: str) -> bool:
        """True once `place` failed `limit` times: callers stop trying it."""
        f = self.places.get(place)
        return f is not None and f.count >= self.limit

    @property
    def total(self) -> int:
        return sum(f.count for f in self.places.values())

    def as_dict(self) -> dict[str, dict]:
        with self._lock:
            return {p: {"count": f.count, "first": f.first} for p, f in sorted(self.places.items())}

    def guard(self, place: str) -> _Guard:
        """`with faults.guard('sampler'): ...` swallows and records any Exception raised inside."""
        return _Guard(self, place)


class _Guard:
    __slots__ = ("faults", "place")

    def __init__(self, faults: Faults, place: str):
        self.faults, self.place = faults, place

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # KeyboardInterrupt / SystemExit belong to the workload
        self.faults.record(self.place, exc)
        return True
