"""What every benchmark shares: thread setup, the machine description, logging, median timing, markdown output.

Each benchmark is one command (`python -m bench.quality | speed | walltime [--quick]`) that measures side by side
in one run and writes `bench/results/<name>.md` (or `<name>-quick.md` for a smoke run) with the exact command,
the machine and the date above its tables.

    args = parse_args("speed", __doc__)          # --quick, --threads, --out
    setup_threads(args.threads)                  # torch.set_num_threads; warns unless OMP_WAIT_POLICY=PASSIVE
    t = interleaved_medians({"a": fa, "b": fb}, rounds=5)   # {name: median seconds}, round-robin
    run = start()                                # machine + start time
    write_result(args, title, sections, run)     # header (command, machine, date) + the sections, as markdown
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_T0 = time.perf_counter()


# -- command line ------------------------------------------------------------------------------------------------
def parse_args(name: str, doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """--quick (smoke run, written to <name>-quick.md), --threads (default 2), --out (a markdown path)."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, written to <name>-quick.md")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=None, help="markdown file to write (default bench/results/...)")
    if extra:
        extra(p)
    args = p.parse_args()
    args.name = name
    if args.out is None:
        args.out = RESULTS_DIR / f"{name}{'-quick' if args.quick else ''}.md"
    return args


def setup_threads(threads: int) -> None:
    """Pin torch's intra-op threads. Waiting OpenMP threads spin unless OMP_WAIT_POLICY=PASSIVE, which on a shared
    2-core machine costs 3-4x in wall time; the variable must be set before the process starts, so only warn."""
    torch.set_num_threads(threads)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        log("warning: OMP_WAIT_POLICY is not PASSIVE; on a shared machine prefix the command with "
            "OMP_WAIT_POLICY=PASSIVE")


def log(msg: str) -> None:
    """A progress line on stderr with the seconds since the benchmark started (benchmarks may print; the library
    may not)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- machine -----------------------------------------------------------------------------------------------------
def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def machine() -> dict[str, str]:
    """CPU model, cores, ISA features that matter for matmuls, torch / transformers versions, threads, load."""
    import transformers
    cpu = _lscpu()
    flags = set(cpu.get("Flags", "").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "cpu": cpu.get("Model name", platform.processor() or "?"),
        "cores": f"{os.cpu_count()} logical ({cpu.get('Core(s) per socket', '?')} per socket, "
                 f"{cpu.get('Thread(s) per core', '?')} thread(s) per core)",
        "isa": ", ".join(isa) or "-",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": str(torch.get_num_threads()),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load average at start (1/5/15 min)": load,
    }


def command_line() -> str:
    env = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} " if "OMP_WAIT_POLICY" in os.environ else ""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"{env}PYTHONPATH=. python -m {_module_name()} {args}".rstrip()


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


# -- timing ------------------------------------------------------------------------------------------------------
def interleaved_medians(fns: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of every function, timed round-robin (order reversed on odd rounds) so that changes in
    machine load hit all of them alike; `warmup` untimed rounds first."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(warmup + rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            dt_s = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt_s)
    return {k: statistics.median(v) for k, v in times.items()}


# -- markdown ----------------------------------------------------------------------------------------------------
def fmt(v, digits: int = 3) -> str:
    """Numbers for tables: ints with thousands separators, floats to `digits` significant-ish places."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; cells go through `fmt` unless they are already strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(lines)


def start() -> dict:
    """The machine (load taken now, before the benchmark adds its own) and the start time, for `write_result`."""
    return {"machine": machine(), "started": dt.datetime.now().astimezone(), "t0": time.perf_counter()}


def write_result(args, title: str, sections: Sequence[str], run: dict) -> Path:
    """Write `title`, the command, the machine, the date and wall time, then `sections`, to `args.out`."""
    m, started, seconds = run["machine"], run["started"], time.perf_counter() - run["t0"]
    head = [f"# {title}", "",
            ("**Smoke run (`--quick`)**: tiny budgets, for checking that the benchmark runs; the figures mean "
             "nothing.\n" if args.quick else ""),
            "```", command_line(), "```", "",
            table(["machine", ""], [[k, v] for k, v in m.items()]), "",
            f"Started {started.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} (UTC offset "
            f"{started.strftime('%z') or 'n/a'}); the benchmark took {seconds / 60:.1f} min of wall time.", ""]
    text = "\n".join(head) + "\n" + "\n\n".join(s.strip() for s in sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"wrote {args.out}")
    return args.out
