"""The machine a benchmark ran on, for its report: CPU model, cores and the flags that decide speed."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def describe() -> str:
    model, flags = platform.processor() or platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    present = [flag for flag in FLAGS if flag in flags] or ["none of " + ", ".join(FLAGS)]
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(present)}"


if __name__ == "__main__":
    print(describe())
