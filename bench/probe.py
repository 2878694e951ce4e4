"""Timing medtune's parts from outside: wrap chosen functions while a benchmark runs.

medtune itself is not changed for a benchmark; a `Probe` replaces functions and methods with
timed wrappers for the length of a `with` block and puts the originals back afterwards.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_MISSING = object()
PROJECT = ("search", "models", "datasets")  # medtune's packages


class Probe:
    """Wall time per label of the wrapped calls.

    A *component* is credited only when no other component is running on the same thread, so
    an MLflow call made by the per-epoch logger counts once, as per-epoch logging. A
    *container* (e.g. `fit`) is timed whole, components inside it are still credited, and
    `totals["inner:<container>"]` adds up the component time spent inside it (so `fit` minus
    its callbacks is `totals["fit"] - totals["inner:fit"]`, wherever the callbacks moved).
    """

    def __init__(self) -> None:
        self.totals: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._undo: list[Callable[[], None]] = []
        self._local = threading.local()

    def wrap(self, owner: Any, attr: str, label: str, *, container: bool = False) -> None:
        """Time `owner.attr` (a module function, or a class's method) under `label`."""
        own = vars(owner).get(attr, _MISSING)
        if own is _MISSING and not hasattr(owner, attr):
            return  # not in this version of the library: nothing to time
        kind = type(own) if isinstance(own, classmethod | staticmethod) else None
        target = own.__func__ if kind else getattr(owner, attr)
        timed = self._timed(target, label, container)
        setattr(owner, attr, kind(timed) if kind else timed)
        self._undo.append(
            (lambda: delattr(owner, attr)) if own is _MISSING
            else (lambda: setattr(owner, attr, own))
        )

    def wrap_all(self, owner: type, names: list[str], label: str) -> None:
        for name in names:
            self.wrap(owner, name, label)

    def wrap_everywhere(self, module: Any, name: str, label: str) -> None:
        """Time function `module.name` in its module and in every medtune module that imported
        it by name (`from module import name`), so a refactoring does not lose the timer."""
        function = getattr(module, name, None)
        if function is None:
            return
        for other in list(sys.modules.values()):
            top = getattr(other, "__name__", "").split(".")[0]
            if other is module or (top in PROJECT and vars(other).get(name) is function):
                self.wrap(other, name, label)

    def wrap_result(self, owner: Any, attr: str, label: str, *, container: bool = True) -> None:
        """Time the function that `owner.attr(...)` returns (e.g. the objective a factory makes)."""
        factory = getattr(owner, attr)

        @functools.wraps(factory)
        def make(*args: Any, **kwargs: Any) -> Any:
            return self._timed(factory(*args, **kwargs), label, container)

        setattr(owner, attr, make)
        self._undo.append(lambda: setattr(owner, attr, factory))

    def _timed(self, function: Callable, label: str, container: bool) -> Callable:
        local = self._local

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not hasattr(local, "open"):
                local.busy, local.open = False, []
            if local.busy and not container:
                return function(*args, **kwargs)
            if container:
                local.open.append(label)
            else:
                local.busy = True
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                self.totals[label] += seconds
                self.calls[label] += 1
                if container:
                    local.open.pop()
                else:
                    local.busy = False
                    for outer in set(local.open):
                        self.totals[f"inner:{outer}"] += seconds

        return timed

    @contextmanager
    def section(self, label: str) -> Iterator[None]:
        """Time a block of the benchmark's own code as a component."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[label] += time.perf_counter() - started
            self.calls[label] += 1

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, ... of a process in bytes, from /proc (Linux); {} where unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
            values[name] = int(parts[0]) * 1024
    return values


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory now, MiB."""
    return proc_status(pid).get("VmRSS", 0) / 2**20


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident memory so far (VmHWM), MiB."""
    return proc_status(pid).get("VmHWM", 0) / 2**20


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue  # the process ended while we looked
    return found


def project_subclasses(base: type, exclude: tuple[str, ...] = ()) -> list[type]:
    """Subclasses of `base` defined in medtune's packages (e.g. its Keras callbacks), so new
    ones (checkpoints, ...) are timed without naming them here."""
    found, todo = [], list(base.__subclasses__())
    while todo:
        kind = todo.pop()
        todo.extend(kind.__subclasses__())
        if kind.__module__.split(".")[0] in PROJECT and kind.__name__ not in exclude:
            found.append(kind)
    return found


def hooks(kind: type) -> list[str]:
    """The `on_*` methods a class defines itself."""
    return [name for name in vars(kind) if name.startswith("on_")]
