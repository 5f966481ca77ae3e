"""`wrk --latency` runs and what they printed, as numbers (the benchmarks' one place for
wrk's command line and its output)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def run(
    url: str,
    script: Path,
    *,
    duration: int,
    connections: int,
    threads: int = 1,
    script_args: tuple[str, ...] = (),
) -> dict:
    """One wrk run with a Lua script (its arguments after `--`); `summary` of it."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    command += ["-s", str(script), url]
    if script_args:
        command += ["--", *script_args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return summary(out)


def summary(out: str) -> dict:
    """Requests per second, requests completed, those answered other than 2xx/3xx,
    socket errors, and the p50 and p99 latencies in ms."""
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "refused": int(refused.group(1)) if refused else 0,
        "errors": sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)),
        "p50_ms": latency_ms(out, "50%"),
        "p99_ms": latency_ms(out, "99%"),
    }


def latency_ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
