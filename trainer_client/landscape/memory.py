"""Peak memory of a block of code, measured as the process's anonymous resident memory (Linux).

tracemalloc does not see torch's allocations, and total RSS also counts file pages mapped in (the
disk store's mmap reads, shared libraries). RssAnon in /proc/self/status is exactly the memory the
process allocated and touched (heap, torch CPU tensors), so a background thread samples it and keeps
the maximum. On entry the C heap is trimmed (glibc malloc_trim) so that memory freed earlier and
reused inside the block is counted. Elsewhere the sampler falls back to psutil's RSS when available.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")


def anon_rss_bytes() -> int:
    """Anonymous resident memory of this process in bytes (RSS if RssAnon is unavailable)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """`with PeakMemory() as m: ...` then `m.peak_delta` = peak anon RSS minus the value on entry."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, anon_rss_bytes())
            time.sleep(self.interval_s)

    @property
    def peak_delta(self) -> int:
        return max(0, self.peak - self.start)

    def __enter__(self) -> PeakMemory:
        _trim_heap()
        self.start = self.peak = anon_rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, anon_rss_bytes())


def _trim_heap() -> None:
    """Give freed heap pages back to the OS, so memory reused inside the block shows up as growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def model_bytes(model: object) -> int:
    """Bytes of a torch module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:  # type: ignore[attr-defined]
        ptr = t.data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.numel() * t.element_size()
    return total
