"""What every benchmark records beside its numbers: the exact command, the code version, the hardware, the date;
and the one way they time a call and write their JSON and markdown."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"


def command() -> str:
    """The command that is running, as typed from the project root: ``python benchmarks/X.py ARGS``."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "python " + shlex.join([str(script), *sys.argv[1:]])


CODE = ("src", "benchmarks", "pyproject.toml")  # what a measurement depends on (not the docs it writes)


def code_version() -> str:
    """The git commit of the checkout (``+dirty`` when the code differs from it), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict:
    """The machine: CPU model, cores, torch threads, GPU, bfloat16 instructions, torch and Python versions."""
    import torch

    from siamdiff.training.loop import cpu_has_bf16_instructions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "cpu_bf16": cpu_has_bf16_instructions(), "torch": torch.__version__,
            "python": platform.python_version()}


def describe(hw: dict) -> str:
    """One line for a markdown header."""
    return (f"{hw['cpu']}, {hw['cores']} cores{', GPU ' + hw['gpu'] if hw['gpu'] else ', no GPU'}; "
            f"torch {hw['torch']}")


def provenance() -> dict:
    """The fields every result file starts with."""
    return {"command": command(), "code_version": code_version(), "hardware": hardware(),
            "date": time.strftime("%Y-%m-%d")}


def time_calls(fn, repeats: int, digits: int = 3) -> dict:
    """Median and quartiles (ms) of ``repeats`` calls of ``fn`` after 10 warm-up calls."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    q = np.percentile(times, [25, 50, 75])
    return {"median_ms": round(float(q[1]), digits), "p25_ms": round(float(q[0]), digits),
            "p75_ms": round(float(q[2]), digits)}


def write(result: dict, markdown: str, out: Path, name: str) -> None:
    """``out/name.json`` and ``out/name.md``, each written whole (a stopped run leaves the previous files)."""
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{name}.json", json.dumps(result, indent=2) + "\n"), (out / f"{name}.md", markdown)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def card(kind: str, name: str) -> dict | None:
    """The model card of a shipped model, or None."""
    from siamdiff.core.registry import shipped_path

    path = shipped_path(kind, name).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None
