"""What a hostile job file costs `etl validate` to refuse: seconds and peak memory (each case in
a fresh process), for the shapes a security probe used against the loader (alias bombs,
deep nesting, huge values), and what masking costs on long values.

    .venv/bin/python benchmarks/hostile_jobs.py        # part of `make fuzz`

Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

JOB = "name: j\nsource: {type: generate, rows: 1}\nsink: {type: duckdb, path: x.duckdb, table: t}\n"


def _bomb(levels: int, width: int = 10) -> str:
    lines = ["name: bomb", "a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


CASES = {
    "a valid job (baseline)": JOB,
    "alias bomb, 10^6 values": _bomb(6),
    "alias bomb, 10^7 values": _bomb(7),
    "alias bomb, 10^9 values": _bomb(9),
    "recursive alias": "name: x\nsource: &r [*r]\n",
    "1,000 lists in lists": "name: x\nsource: " + "[" * 1000 + "]" * 1000 + "\n",
    "50,001 values written": "x: [" + "1," * 50_001 + "]\n",
    "a 5,000-digit integer": "name: x\nchunk_size: " + "9" * 5000 + "\n",
    "a 999,000-character name": "name: " + "a" * 999_000 + "\n",
    "a 50,000-character name (masking)": JOB.replace("name: j", "name: " + "a" * 50_000),
    "200,000 unclosed ${ references": JOB.replace("x.duckdb", "'" + "${" * 200_000 + "'"),
}


def measure(name: str) -> dict[str, float]:
    from etl.errors import ConfigErrors
    from etl.jobs import load
    from etl.manager import get_plugin_manager

    pm = get_plugin_manager()
    started = time.perf_counter()
    try:
        load(None, text=CASES[name], params={}, sets=(), env={}, pm=pm)
        outcome = "valid"
    except ConfigErrors as exc:
        outcome = exc.errors[0].message[:70]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_mib": peak, "outcome": outcome}


def mask_figures() -> None:
    from etl.masking import mask_urls

    for size in (10_000, 40_000, 200_000, 1_000_000):
        for label, text in [("no URL", "a" * size), ("'a://u:' repeated", "a://u:" * (size // 6))]:
            started = time.perf_counter()
            mask_urls(text)
            print(f"  mask_urls, {size:>9,} characters, {label:<18} {time.perf_counter() - started:8.4f} s")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        print(json.dumps(measure(sys.argv[2])))
        return
    print("etl validate's loading of hostile job files (each in a fresh process; peak RSS includes the imports)")
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True)
        figures = json.loads(out.stdout)
        print(f"  {name:<36} {figures['seconds']:7.2f} s {figures['peak_mib']:7.0f} MiB  {figures['outcome']}")
    mask_figures()


if __name__ == "__main__":
    main()
