"""CPU time per process, from the operating system: ``/proc/<pid>/stat`` utime + stime.

Throughput on shared cores moves with whatever else runs; the CPU a process spent on a phase,
divided by the calls of that phase, moves much less and says *where* the cost is. A process
counts together with its descendants that are alive (a server's worker processes).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, ()))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes have used so far (threads included)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
            # cmajflt utime stime ... (fields 14 and 15 of proc(5), 12 and 13 here, 1-based).
            total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_SECOND


@dataclass
class CpuMeter:
    """CPU seconds of named processes (each with its descendants) between two readings."""

    pids: Mapping[str, int]
    alone: Collection[str] = ()  # names counted without their descendants

    def read(self) -> dict[str, float]:
        return {
            name: cpu_seconds([pid] if name in self.alone else process_tree(pid))
            for name, pid in self.pids.items()
        }

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}
