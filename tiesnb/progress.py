"""Where a long run is, shown on the terminal that started it.

papermill executes each notebook in a kernel whose output lands in the executed notebook, so a
study run would otherwise show only papermill's cell counter. ``tiesnb run`` sets
``TIESNB_PROGRESS`` to a file before starting the kernel; the package appends one line per event
to it (which step, which seed and task, training steps, sweep points) and the parent prints new
lines as they arrive. Without the variable (JupyterLab, a plain script) nothing is written and the
usual tqdm bars show instead.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
ENV = "TIESNB_PROGRESS"
EVERY = 15.0  # seconds between two lines of the same bar


def note(message: str) -> None:
    """One line on the terminal of ``tiesnb run`` (nothing elsewhere)."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')}  {message}\n")
    except OSError:
        pass  # progress is a courtesy: never fail a run for it


class Bar:
    """A tqdm bar that also reports to the terminal: at the start, every ``EVERY`` seconds, and at
    the end, with the count, the rate and whatever ``postfix`` was set last."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None = None, disable: bool = False):
        self.desc = desc
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.bar = tqdm(iterable, desc=desc, total=self.total, disable=disable, leave=False)
        self.postfix = ""
        self.t0 = self.last = time.time()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())
        self.bar.set_postfix(**kw)

    def _line(self, i: int) -> str:
        total = f"/{self.total}" if self.total else ""
        elapsed = time.time() - self.t0
        eta = ""
        if self.total and 0 < i < self.total:
            eta = f", ~{(self.total - i) * elapsed / i:.0f} s left"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {i}{total} ({elapsed:.0f} s{eta}{extra})"

    def __iter__(self) -> Iterator[T]:
        note(f"{self.desc}: start" + (f" ({self.total})" if self.total else ""))
        i = 0
        for item in self.bar:
            yield item
            i += 1
            if time.time() - self.last >= EVERY:
                self.last = time.time()
                note(self._line(i))
        note(self._line(i).replace(f": {i}", ": done, " + str(i), 1))


def bar(iterable: Iterable[T], desc: str, total: int | None = None, disable: bool = False) -> Bar:
    return Bar(iterable, desc, total, disable)


class Relay:
    """In the parent: print the lines the kernel appends to the progress file, prefixed with the
    run's name, until stopped."""

    def __init__(self, path: Path, prefix: str, stream=sys.stderr):
        self.path, self.prefix, self.stream = Path(path), prefix, stream
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Relay":
        os.environ[ENV] = str(self.path)
        self._thread.start()
        return self

    def _run(self) -> None:
        pos = 0
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            for line in chunk.splitlines():
                print(f"[{self.prefix}] {line}", file=self.stream, flush=True)
            if stopping:
                return
            self._stop.wait(1.0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.environ.pop(ENV, None)
        self.path.unlink(missing_ok=True)
