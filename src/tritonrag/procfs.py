"""Processes as Linux's /proc shows them: a process's parent and descendants, its threads, and lowering the CPU
priority of every thread of a process tree (on Linux a nice value is a thread's). Used by the generator's engine
([generator] cpu_nice) and the supervisor; no dependency on the serving or deploy layers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
NICE_MAX = 19


def stat_fields(stat: str) -> list[str]:
    """The fields after the command in the text of a /proc/PID/stat file: state, ppid, pgrp, ... (field 3 onwards
    of proc(5)); the command may hold spaces and parentheses, so they start after the last ')'."""
    return stat[stat.rindex(")") + 1:].split()


def parent_pid(stat: str) -> int:
    """The parent's pid in the text of a /proc/PID/stat file."""
    return int(stat_fields(stat)[1])  # state, then ppid


def descendant_pids(pid: int, proc: Path = PROC) -> list[int]:
    """The processes below ``pid`` (children, theirs, and so on), parents before children, from /proc's parent ids;
    processes that end while it reads are skipped."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            children.setdefault(parent_pid((entry / "stat").read_text()), []).append(int(entry.name))
        except (OSError, ValueError):
            continue
    out, todo = [], sorted(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo += sorted(children.get(child, []))
    return out


def thread_ids(pid: int, proc: Path = PROC) -> list[int]:
    """The threads of process ``pid`` (its main thread's id is ``pid``); [] when it has ended."""
    try:
        return sorted(int(t.name) for t in (proc / str(pid) / "task").iterdir() if t.name.isdigit())
    except OSError:
        return []


def lower_priority(pids: Iterable[int], nice: int, proc: Path = PROC) -> int:
    """Raise the nice value of every thread of ``pids`` to at least ``nice`` (0 to 19; a thread already nicer is
    left alone, since only a privileged process may lower one); threads they start later inherit it from the thread
    that starts them. Returns how many threads were changed; threads that end meanwhile are skipped."""
    if not 0 <= nice <= NICE_MAX:
        raise ValueError(f"a nice value is 0 to {NICE_MAX}, got {nice}")
    changed = 0
    for pid in pids:
        for tid in thread_ids(pid, proc):
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    changed += 1
            except (ProcessLookupError, PermissionError):
                continue
    return changed
