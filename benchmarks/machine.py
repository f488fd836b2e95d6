"""The CPU a benchmark ran on: its name and the flags that decide which kernels run (lscpu's),
printed beside every speed table."""

from __future__ import annotations

import subprocess

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx_vnni")


def cpu_flags() -> tuple[str, list[str]]:
    """The CPU's name and which of ``FLAGS_OF_INTEREST`` it has."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", []
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return fields.get("Model name", "unknown").strip(), [f for f in FLAGS_OF_INTEREST if f in flags]


def cpu_line() -> str:
    """``NAME; flags: f1 f2 …``, as the results files print it."""
    name, flags = cpu_flags()
    return f"{name}; flags: {' '.join(flags) or 'none of ' + ', '.join(FLAGS_OF_INTEREST)}"
