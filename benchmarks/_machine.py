"""Machine facts every benchmark prints in its header, so each figure names where it was measured."""

from __future__ import annotations


def cpu_and_ram() -> tuple[str, int]:
    """(CPU model name, total RAM in KiB) from /proc."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for raw in fh:
            if raw.startswith("model name"):
                cpu = raw.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for raw in fh:
            if raw.startswith("MemTotal:"):
                ram_kib = int(raw.split()[1])
    return cpu, ram_kib
