#!/usr/bin/env python3
"""Side-by-side latency comparison: Lockbox against bubblewrap and an OCI runtime.

Every tool runs the same command on the same root filesystem. Runs are
interleaved (one run of each tool, rotating the order every round) so that
background noise on a shared machine hits every tool alike. The result is a
Markdown table (docs/benchmarks.md) and a latency plot (docs/benchmarks.png).

Standard library only; matplotlib is optional and used only for the plot.
Run it through `make bench-compare`, which prepares the root filesystems,
the OCI bundles' inputs, the Lockbox driver and a venv with matplotlib.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# The same PATH inside every sandbox, so every tool resolves `echo` and
# `python3` to the same binaries of the root filesystem.
GUEST_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

# A run that takes longer than this is hung: it is killed and counted as a
# failure, so that one stuck tool cannot stall the whole comparison.
RUN_TIMEOUT_S = 120

# After this many failed runs a tool is dropped from a case and reported as
# failing, with the last error, instead of being retried forever.
MAX_FAILURES = 3


class Unavailable(Exception):
    """A tool cannot run on this machine; the message says why."""


class RunFailed(Exception):
    """One run went wrong (bad exit code or unexpected output)."""


@dataclass
class Sample:
    first_ns: int  # start of the request -> first byte of output
    done_ns: int  # start of the request -> everything finished
    create_ns: int = 0  # Lockbox cold cases: when CreateSandbox returned


@dataclass
class Result:
    label: str
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0
    status: str = "ok"  # "ok", or why there are no numbers

    def values_ms(self, metric: str) -> list[float]:
        return [getattr(s, metric) / 1e6 for s in self.samples]


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------- runners


class ProcessRunner:
    """Times a child process from spawn to its first stdout byte and exit.

    The spawn itself (fork/exec of the runtime binary) is part of the time:
    it is what a user of these tools pays on every run.
    """

    def __init__(self, label: str, argv_fn, expect: bytes):
        self.label = label
        self.argv_fn = argv_fn  # run number -> argv
        self.expect = expect
        self.count = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def after_run(self, run_id: str) -> None:
        pass

    def run_once(self) -> Sample:
        self.count += 1
        run_id = f"lbxbench-{os.getpid()}-{self.count}"
        argv = self.argv_fn(run_id)
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter_ns()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err)
            fd = proc.stdout.fileno()
            first = read_or_kill(proc, fd)
            t1 = time.perf_counter_ns()
            out = first
            while chunk := read_or_kill(proc, fd):
                out += chunk
            rc = proc.wait()
            t2 = time.perf_counter_ns()
            proc.stdout.close()
            self.after_run(run_id)
            if rc != 0 or out != self.expect:
                err.seek(0)
                msg = err.read().decode(errors="replace").strip()
                raise RunFailed(f"exit {rc}, stdout {out!r}, stderr {msg[:300]!r}")
        return Sample(t1 - t0, t2 - t0)


def read_or_kill(proc: subprocess.Popen, fd: int) -> bytes:
    """os.read with a deadline; a hung tool is killed, not waited for."""
    ready, _, _ = select.select([fd], [], [], RUN_TIMEOUT_S)
    if not ready:
        proc.kill()
        proc.wait()
        raise RunFailed(f"no output within {RUN_TIMEOUT_S} s; killed")
    return os.read(fd, 65536)


class OciRunner(ProcessRunner):
    """`<runtime> run` of a fresh container per run (create, start, delete)."""

    def __init__(self, runtime: str, state: Path, bundle: Path, expect: bytes):
        super().__init__(runtime, lambda rid: [runtime, "--root", str(state), "run",
                                               "--bundle", str(bundle), rid], expect)
        self.runtime, self.state = runtime, state

    def after_run(self, run_id: str) -> None:
        # `run` deletes the container when it exits; this only matters after
        # a failure, and costs nothing in the timed part.
        subprocess.run([self.runtime, "--root", str(self.state), "delete", "-f", run_id],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class OciExecRunner(ProcessRunner):
    """`<runtime> exec` into one running container (a long `sleep`)."""

    def __init__(self, runtime: str, state: Path, bundle: Path, expect: bytes):
        self.cid = f"lbxbench-exec-{os.getpid()}"
        super().__init__(runtime, lambda rid: [runtime, "--root", str(state), "exec",
                                               self.cid, "echo", "hi"], expect)
        self.runtime, self.state, self.bundle = runtime, state, bundle

    def start(self) -> None:
        # The detached container inherits our stdio: a pipe would stay open
        # for as long as it runs, so its errors go to a file.
        with tempfile.TemporaryFile() as err:
            p = subprocess.run([self.runtime, "--root", str(self.state), "run", "-d",
                                "--bundle", str(self.bundle), self.cid],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=err, timeout=60)
            if p.returncode != 0:
                err.seek(0)
                raise Unavailable(f"{self.runtime} run -d failed: "
                                  f"{err.read().decode(errors='replace').strip()}")

    def stop(self) -> None:
        subprocess.run([self.runtime, "--root", str(self.state), "delete", "-f", self.cid],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class LockboxRunner:
    """Drives bench/lockbox (a Go program on the public API) step by step.

    The driver prints one JSON line when it is ready (or why it is not), then
    one JSON line per newline it reads on stdin. Its clock starts at the API
    call, so Go's start-up and library loading are not in the figures: a Go
    program pays those once, not per sandbox.
    """

    def __init__(self, driver: Path | None, why_missing: str, case: str,
                 rootfs: Path, env: dict[str, str]):
        self.label = "lockbox"
        self.driver, self.why_missing = driver, why_missing
        self.case, self.rootfs, self.env = case, rootfs, env
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        if self.driver is None or not self.driver.exists():
            raise Unavailable(self.why_missing or "the Lockbox driver was not built")
        self.proc = subprocess.Popen(
            [str(self.driver), "-case", self.case, "-rootfs", str(self.rootfs.resolve()), "-stdin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip()
            self.proc.wait()
            raise Unavailable(f"driver exited before it was ready: {err[-400:]}")
        msg = json.loads(line)
        if not msg.get("ready"):
            self.stop()
            raise Unavailable(msg.get("error", "driver not ready"))
        self.info = msg

    def run_once(self) -> Sample:
        assert self.proc is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        # One request, one line back: nothing sits in the pipe's buffer, so
        # select sees the line's arrival.
        ready, _, _ = select.select([self.proc.stdout], [], [], RUN_TIMEOUT_S)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise RunFailed(f"the driver did not answer within {RUN_TIMEOUT_S} s; killed")
        line = self.proc.stdout.readline()
        if not line:
            raise RunFailed("driver exited: " + self.proc.stderr.read().strip()[-400:])
        msg = json.loads(line)
        if not msg.get("ok"):
            raise RunFailed(msg.get("error", "unknown error"))
        return Sample(int(msg["first_ns"]), int(msg["done_ns"]), int(msg.get("create_ns", 0)))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------- the setup


def bwrap_argv(rootfs: Path, cmd: list[str]) -> list[str]:
    # Every namespace bwrap has, no capabilities, a clean environment, the
    # root filesystem read-only: as close to Lockbox's isolation as bwrap's
    # flags go (bwrap has no seccomp policy or cgroup limits of its own).
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--cap-drop", "ALL", "--clearenv",
            "--setenv", "PATH", GUEST_PATH, *cmd]


def write_bundle(bundle: Path, rootfs: Path, args: list[str]) -> None:
    """An OCI bundle from `runc spec --rootless`, adjusted to match the others.

    The rootless template has a user namespace; we add the network and cgroup
    namespaces (the template leaves them out because rootless runc cannot
    always create them) so that the container is as isolated as the others.
    """
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").unlink(missing_ok=True)
    subprocess.run(["runc", "spec", "--rootless", "--bundle", str(bundle)], check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"] = {"path": str(rootfs.resolve()), "readonly": True}
    cfg["process"]["args"] = args
    cfg["process"]["terminal"] = False
    cfg["process"]["env"] = [f"PATH={GUEST_PATH}"]
    cfg["hostname"] = "bench"
    have = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    for ns in ("pid", "network", "ipc", "uts", "mount", "user", "cgroup"):
        if ns not in have:
            cfg["linux"]["namespaces"].append({"type": ns})
    (bundle / "config.json").write_text(json.dumps(cfg, indent=2))


def probe_oci(runtime: str, state: Path, bundle: Path) -> str | None:
    """None if the runtime runs a container here, else its error message."""
    if shutil.which(runtime) is None:
        return f"{runtime} is not installed"
    p = subprocess.run([runtime, "--root", str(state), "run", "--bundle", str(bundle),
                        f"lbxbench-probe-{os.getpid()}"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    subprocess.run([runtime, "--root", str(state), "delete", "-f", f"lbxbench-probe-{os.getpid()}"],
                   capture_output=True)
    if p.returncode != 0 or p.stdout != b"hi\n":
        msg = (p.stderr or p.stdout).decode(errors="replace").strip()
        return f"exit {p.returncode}: {msg}"
    return None


@dataclass
class Case:
    key: str
    title: str
    metric: str  # which Sample field the table ranks by
    metric_name: str
    runners: list
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    results: list[Result] = field(default_factory=list)
    trace: Path | None = None  # LOCKBOX_TRACE file of the Lockbox runs (cold cases)


def run_case(case: Case, runs: int, warmup: int) -> None:
    live = []
    for r in case.runners:
        res = Result(r.label)
        case.results.append(res)
        try:
            r.start()
            for _ in range(warmup):  # page in binaries; not recorded
                r.run_once()
            live.append((r, res))
        except (Unavailable, RunFailed, OSError, subprocess.SubprocessError) as e:
            res.status = f"not available: {e}"
            r.stop()
    print(f"[{case.key}] {runs} interleaved runs of: "
          + ", ".join(r.label for r, _ in live), flush=True)
    for i in range(runs):
        if not live:
            break
        k = i % len(live)
        for r, res in live[k:] + live[:k]:
            if res.status != "ok":
                continue
            try:
                res.samples.append(r.run_once())
            except (RunFailed, OSError, ValueError) as e:
                res.failures += 1
                if res.failures >= MAX_FAILURES:
                    res.status = f"failed {res.failures} times, last: {e}"
        if (i + 1) % 50 == 0:
            print(f"[{case.key}] {i + 1}/{runs}", flush=True)
    for r, _ in live:
        r.stop()


# --------------------------------------------------------------- reports

SDK_LINE = re.compile(r"^Benchmark(\S+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op"
                      r"(?:\s+([\d.]+) MB/s)?\s+(\d+) B/op\s+(\d+) allocs/op")

SDK_MEANING = {
    "NoopCall": "LibraryVersion: JSON request, C ABI call, JSON reply; no sandbox",
    "ExecTrue": "Exec(`true`) on a running sandbox",
    "FSWriteRead1MiB": "FS().WriteFile then ReadFile of 1 MiB (MB/s counts both ways)",
}


def sdk_section(path: Path | None) -> list[str]:
    """The Go testing.B results of bench/sdk_test.go as a table."""
    out = ["## SDK overhead (Go testing.B, bench/sdk_test.go)", ""]
    if path is None or not path.exists():
        return out + ["Not run (`make bench-sdk`).", ""]
    text = path.read_text()
    rows = []
    for line in text.splitlines():
        m = SDK_LINE.match(line.strip())
        if m:
            name, n, ns, mbs, bop, aop = m.groups()
            rows.append(f"| {name} | {SDK_MEANING.get(name, '')} | {n} | "
                        f"{float(ns) / 1000:.1f} µs | {mbs + ' MB/s' if mbs else ''} | "
                        f"{int(bop)} | {aop} |")
    if not rows:
        skipped = [ln.strip() for ln in text.splitlines() if "SKIP" in ln or "skip" in ln]
        why = skipped[0] if skipped else text.strip().splitlines()[-1] if text.strip() else "no output"
        return out + [f"No figures: `{why}`", ""]
    return out + ["| benchmark | what | iterations | time/op | throughput | B/op | allocs/op |",
                  "|---|---|---:|---:|---:|---:|---:|", *rows, ""]



BENCH_NAME = re.compile(r"^Benchmark(\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$")
METRIC = re.compile(r"([\d.]+) (\S+)")


def bench_metrics(path: Path | None) -> dict[str, dict[str, float]]:
    """Every `value unit` pair of each Go benchmark line, by benchmark name."""
    out: dict[str, dict[str, float]] = {}
    if path is None or not path.exists():
        return out
    for line in path.read_text().splitlines():
        m = BENCH_NAME.match(line.strip())
        if m:
            out[m.group(1)] = {u: float(v) for v, u in METRIC.findall(m.group(3))}
    return out


def case_median(cases: list[Case], key: str, label: str) -> float | None:
    c = next((c for c in cases if c.key == key and not c.skipped), None)
    if c is None:
        return None
    r = next((r for r in c.results if r.label == label and r.samples), None)
    return statistics.median(r.values_ms(c.metric)) if r else None


def issue13_section(cases: list[Case], sdk: Path | None, reflink: Path | None,
                    reflink_note: str) -> list[str]:
    """Issue 13's figures from this one run: the cold and exec medians of
    the cases above, the SDK benchmarks' medians (bench/snapshot_test.go,
    bench/idle_test.go) and the reflink run's, each with its target and,
    for the times, its ratio to bubblewrap's and runc's cold `echo`."""
    m = bench_metrics(sdk)
    x = bench_metrics(reflink)
    bw = case_median(cases, "echo", "bwrap")
    rc = case_median(cases, "echo", "runc")

    def ratio(v: float | None, peer: float | None) -> str:
        return f"{v / peer:.2f}×" if v is not None and peer else "—"

    def ms(v: float | None) -> str:
        return "not measured" if v is None else (f"{v:.3f} ms" if v < 1 else f"{v:.1f} ms")

    def met(v: float | None, target: float | None) -> str:
        if v is None or target is None:
            return ""
        return " (met)" if v <= target else " (not met)"

    def get(src, bench, unit):
        return src.get(bench, {}).get(unit)

    cold = case_median(cases, "echo", "lockbox")
    exec_rt = case_median(cases, "exec", "lockbox")
    rows = [
        ("Cold create → first output of `echo`", cold, "≤ 1.2× bwrap",
         (cold / bw <= 1.2) if cold is not None and bw else None),
        ("Exec round trip p50 (`echo hi`, the exec table above)", exec_rt, "≤ 1 ms", None),
        ("`Pool.Get` p50 (pool kept full)", get(m, "PoolGet", "p50-ms"), "≤ 1 ms", None),
        ("`Fork(ctx, 1)` of a sandbox that wrote 100 MiB, tmpfs layer → this disk, p50",
         get(m, "Fork100MiB", "p50-ms"), "< 20 ms", None),
        ("… the first fork after the write", get(m, "Fork100MiB", "first-ms"), "", None),
        ("`Fork(ctx, 1)`, `WithDisk(0)` layer on this disk's filesystem, p50",
         get(m, "Fork100MiBDiskLayer", "p50-ms"), "< 20 ms", None),
        ("`Fork(ctx, 1)`, `WithDisk(0)` layer on xfs with reflink=1 (loop mount), p50",
         get(x, "Fork100MiBDiskLayer", "p50-ms"), "< 20 ms", None),
        ("… the first fork after the write (xfs: the write reaches the disk first)",
         get(x, "Fork100MiBDiskLayer", "first-ms"), "", None),
        ("`Snapshot` of 100 MiB of changes p50",
         get(m, "Snapshot100MiBAndCreate", "snapshot-p50-ms"), "reported", None),
        ("Create from that snapshot to first exec p50",
         get(m, "Snapshot100MiBAndCreate", "create-from-it-p50-ms"), "reported", None),
        ("`Resume` of a paused sandbox p50", get(m, "ResumeAfterPause", "resume-p50-ms"),
         "reported", None),
        ("`Resume` until an exec answers p50",
         get(m, "ResumeAfterPause", "resume+exec-p50-ms"), "reported", None),
    ]
    targets = {"≤ 1 ms": 1.0, "< 20 ms": 20.0}
    out = ["## Instant sandboxes (issue 13), this run", "",
           "Every figure below comes from the same `make bench-compare` run: the cold and "
           "exec medians from the tables above, the rest from the Go benchmarks it runs "
           "(bench/snapshot_test.go, bench/idle_test.go; each reports its own median, "
           "not testing.B's mean). The ratios divide by bubblewrap's and runc's median "
           "cold `echo` of this run: what it costs to get a usable sandbox another way.", "",
           "| figure | Lockbox | target | ÷ bwrap cold echo | ÷ runc cold echo |",
           "|---|---:|---|---:|---:|"]
    for name, v, target, ok in rows:
        verdict = (" (met)" if ok else " (not met)") if ok is not None \
            else met(v, targets.get(target))
        out.append(f"| {name} | {ms(v)} | {target}{verdict if v is not None else ''} | "
                   f"{ratio(v, bw)} | {ratio(v, rc)} |")
    pss = get(m, "IdlePSS20", "pss-p50-MiB")
    out.append(f"| Idle memory per sandbox, PSS p50 of 20 (helper + its descendants) | "
               + ("not measured" if pss is None else f"{pss:.2f} MiB")
               + " | ≤ 1 MiB" + ("" if pss is None else (" (met)" if pss <= 1 else " (not met)"))
               + " | | |")
    out += ["", f"- Reflink run: {reflink_note}" if reflink_note else
            "- Reflink run: not made (`make bench-reflink`, root only).", ""]
    return out


def first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not installed"


def load_average() -> str:
    """Other work on a shared machine moves every figure: say how much."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


LOAD_BEFORE = load_average()


def cgroup_layout() -> str:
    try:
        fs = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"],
                            capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    if fs == "cgroup2fs":
        return "v2 (unified)"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "v1 hybrid (v1 controllers, v2 mounted at /sys/fs/cgroup/unified)"
    return "v1 (legacy)"


def machine_details(lockbox_info: dict) -> list[tuple[str, str]]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    distro = "unknown"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("memory", f"{mem_kib / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("distribution", distro),
        ("cgroup layout", cgroup_layout()),
        ("running as", "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"),
        ("load average (1/5/15 min) before → after", f"{LOAD_BEFORE} → {load_average()}"),
        ("bubblewrap", first_line(["bwrap", "--version"])),
        ("runc", first_line(["runc", "--version"])),
        ("crun", first_line(["crun", "--version"])),
        ("lockbox", lockbox_info.get("version", "not available")),
        ("go", first_line(["go", "version"])),
        ("python (harness)", platform.python_version()),
    ]


def fmt_ratio(lb: Result | None, peer: Result, metric: str, pct: float) -> str:
    if lb is None or lb is peer or peer.label.startswith("host") or not lb.samples \
            or not peer.samples:
        return "—"
    a = sorted(lb.values_ms(metric))
    b = sorted(peer.values_ms(metric))
    return f"{percentile(a, pct) / percentile(b, pct):.2f}×"


def table(case: Case) -> list[str]:
    other_name = "until done" if case.metric == "first_ns" else "to first output"
    lines = [f"| tool | runs | median {case.metric_name} | p90 {case.metric_name} | "
             f"median {other_name} | Lockbox ÷ tool (median) | Lockbox ÷ tool (p90) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    other = "done_ns" if case.metric == "first_ns" else "first_ns"
    lb = next((r for r in case.results if r.label == "lockbox"), None)
    for r in case.results:
        if not r.samples:
            lines.append(f"| {r.label} | 0 | {r.status} | | | | |")
            continue
        v = sorted(r.values_ms(case.metric))
        o = sorted(r.values_ms(other))
        status = "" if r.status == "ok" else f" ({r.status})"
        lines.append(f"| {r.label}{status} | {len(v)} | {statistics.median(v):.2f} ms | "
                     f"{percentile(v, 90):.2f} ms | {statistics.median(o):.2f} ms | "
                     f"{fmt_ratio(lb, r, case.metric, 50)} | {fmt_ratio(lb, r, case.metric, 90)} |")
    return lines


def summary(cases: list[Case]) -> list[str]:
    """One line per case, in words: faster or slower than each peer."""
    lines = []
    for c in cases:
        lb = next((r for r in c.results if r.label == "lockbox" and r.samples), None)
        if c.skipped or lb is None:
            continue
        a = statistics.median(lb.values_ms(c.metric))
        parts = []
        for r in c.results:
            if r is lb or not r.samples or r.label.startswith("host"):
                continue
            b = statistics.median(r.values_ms(c.metric))
            parts.append(f"{a / b:.2f}× the time of {r.label} ({b / a:.1f}× faster)" if a < b
                         else f"{a / b:.2f}× the time of {r.label} ({a / b:.1f}× slower)")
        if parts:
            lines.append(f"- {c.title}: Lockbox median {a:.2f} ms, " + "; ".join(parts) + ".")
    if lines:
        lines.append("- Peer figures include spawning the tool's binary from the harness "
                     "(the host spawn floor row); Lockbox's are timed inside one Go process "
                     "and do not. See \"How it is measured\".")
    return ["## Summary", "", *lines, ""] if lines else []


def lockbox_split(case: Case) -> list[str]:
    """Where Lockbox's cold time goes, from the driver's own timestamps."""
    lb = next((r for r in case.results if r.label == "lockbox" and r.samples), None)
    if lb is None or not any(s.create_ns for s in lb.samples):
        return []
    med = lambda m: statistics.median(lb.values_ms(m))
    return [f"Lockbox medians within a run: CreateSandbox returned at {med('create_ns'):.2f} ms, "
            f"first output at {med('first_ns'):.2f} ms, Remove done at {med('done_ns'):.2f} ms."]


# What each traced step covers: the name is the mark that ends it (agent
# setup/trace.rs and engine backend/native.rs write the marks).
STEP_MEANING = {
    "helper_spawned": "engine: launch.json, helper.log, fork/exec of lockbox-helper",
    "helper_main": "helper: exec to main (loader, Rust start-up)",
    "spec_read": "helper: read and parse launch.json",
    "validate_layer_dirs": "helper: validate, create and chown upper/work",
    "cgroup_create": "helper: create the sandbox's cgroup, write limits",
    "socket_bind": "helper: bind the agent socket",
    "clone_namespaces": "helper: clone (user, mount, pid, uts, ipc, net namespaces)",
    "id_maps": "helper: write uid/gid maps",
    "attacher_forked": "helper: fork the attacher (cgroup join, OOM score, user "
                       "namespace quotas; runs beside the next steps)",
    "network": "helper: outbound network (pasta), if asked",
    "prepare_layer_mounts": "helper: detached idmapped clones of layers and volumes",
    "plan_sent": "helper: send mount fds and the plan",
    "cgroup_attach_limits_joined": "helper: wait for the attacher (beside the child's steps)",
    "go_sent": "helper: tell the child the join is done",
    "child_plan_received": "child: receive the plan (from plan_sent)",
    "child_become_root": "child: become root",
    "child_adopt_paths": "child: open path sources",
    "child_host_devices": "child: clone host device nodes",
    "child_proc_sys_fsmount": "child: new proc and sysfs instances",
    "child_overlay_pivot": "child: overlay of the layers, pivot_root",
    "child_dev": "child: /dev (tmpfs, devices, shm, pts)",
    "child_proc_mask": "child: /proc mounted and masked",
    "child_sys": "child: /sys read-only",
    "child_volumes": "child: volumes",
    "child_workdir_hostname_lo": "child: workdir, hostname, loopback up",
    "child_user_resolve": "child: resolve the user in the image's /etc/passwd",
    "child_seccomp_compile": "child: compile the seccomp programs",
    "child_go_received": "child: wait for the helper's go (the cgroup join)",
    "child_cgroupns": "child: cgroup namespace",
    "child_caps_landlock_seccomp": "child: capabilities, no_new_privs, Landlock, seccomp",
    "child_done": "child: done",
    "setup_result_read": "helper: read the child's setup report",
    "status_written": "helper: status line written",
    "status_read": "engine: status line read",
}


def read_trace(path: Path | None) -> list[dict[str, int]]:
    """Per sandbox (in creation order): step name -> its duration in ns.

    Engine and helper lines of one sandbox share its id; their marks are
    CLOCK_MONOTONIC timestamps on one machine, so sorted they form one
    timeline. The sandbox child's marks (child_*) are a lane of their own,
    running beside the helper's after plan_sent: each step is the time
    from the previous mark of its lane (the child's first from the latest
    mark before it) to its own, and the helper's lane resumes from
    child_done. Sandboxes missing either side (a failed launch) are left out.
    """
    if path is None or not path.exists():
        return []
    marks: dict[str, dict[str, list]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        marks.setdefault(rec["id"], {})[rec["who"]] = rec["marks"]
    out = []
    for sides in marks.values():
        if set(sides) != {"engine", "helper"}:
            continue
        timeline = sorted((int(t), name) for name, t in sides["engine"] + sides["helper"])
        steps = {}
        last = {"child": None, "main": None}
        for t, name in timeline:
            lane = "child" if name.startswith("child_") else "main"
            prev = last[lane] if last[lane] is not None else last["main"]
            if prev is not None:
                steps[name] = steps.get(name, 0) + (t - prev)
            last[lane] = t
            if name == "child_done":
                last["main"] = max(t, last["main"] or t)
        steps["launch_total"] = timeline[-1][0] - timeline[0][0]
        out.append(steps)
    return out


def step_breakdown(case: Case) -> list[str]:
    """The per-step table of Lockbox's cold path, medians over the traced runs,
    beside the totals of every tool in the same run."""
    lb = next((r for r in case.results if r.label == "lockbox" and r.samples), None)
    runs = read_trace(case.trace)
    if lb is None or not runs:
        return []
    runs = runs[-len(lb.samples):]  # the recorded runs: warm-ups and probes came first
    ms = lambda ns: ns / 1e6
    first = statistics.median(lb.values_ms("first_ns"))
    created = statistics.median(lb.values_ms("create_ns"))
    launch = ms(statistics.median(r["launch_total"] for r in runs))
    out = [f"### Where Lockbox's cold time goes (LOCKBOX_TRACE, {len(runs)} runs)", "",
           "| step | median | share of first output |", "|---|---:|---:|"]
    order = [k for k in STEP_MEANING if any(k in r for r in runs)]
    order += sorted({k for r in runs for k in r} - set(order) - {"launch_total"})
    for k in order:
        v = ms(statistics.median(r.get(k, 0) for r in runs))
        out.append(f"| `{k}`: {STEP_MEANING.get(k, '')} | {v:.3f} ms | {100 * v / first:.1f}% |")
    out.append(f"| **launch (engine_launch → status_read)** | **{launch:.3f} ms** | "
               f"{100 * launch / first:.1f}% |")
    rest = created - launch
    out.append(f"| rest of CreateSandbox: plan, layers, agent connect and hello "
               f"(difference of medians) | {rest:.3f} ms | {100 * rest / first:.1f}% |")
    ex = first - created
    out.append(f"| CreateSandbox return → first output: exec request, fork/exec in the "
               f"sandbox, output back (difference of medians) | {ex:.3f} ms | "
               f"{100 * ex / first:.1f}% |")
    out.append(f"| **first output (total)** | **{first:.3f} ms** | 100% |")
    for r in case.results:
        if r is lb or not r.samples or r.label.startswith("host"):
            continue
        b = statistics.median(r.values_ms("first_ns"))
        out.append(f"| {r.label}, same run: first output | {b:.3f} ms | "
                   f"Lockbox {first / b:.2f}× |")
    return out + ["", "Steps are medians of each step over the runs, so they need not add "
                  "up exactly to the medians of the totals; the child's steps run beside "
                  "the helper's wait for the attacher, so those shares overlap. Tracing "
                  "adds a few clock reads and, in the engine, one file append before "
                  "CreateSandbox returns.", ""]


def lockbox_isolation(info: dict) -> str:
    """Lockbox's isolation as its own Info() reported it on this machine."""
    if not info:
        return "(Not measured here, so its isolation is not described.)"
    text = "What Info() reported as enforced here: " + (
        ", ".join(f"`{f}`" for f in info.get("enforced") or []) or "nothing") + "."
    missing = info.get("not_enforced") or []
    if missing:
        text += " Not enforced: " + "; ".join(
            f"`{m.get('feature')}` ({m.get('reason')})" for m in missing) + "."
    return text


def write_markdown(path: Path, cases: list[Case], machine, args, plot_note: str,
                   oci_notes: list[str], lockbox_info: dict) -> None:
    out = ["# Benchmarks: Lockbox side by side with bubblewrap and an OCI runtime", "",
           "Generated by `bench/compare.py`; do not edit by hand. Reproduce with:", "",
           "```sh", args.command, "```", "",
           "Each tool runs the same command on the same root filesystem "
           f"(`{args.rootfs_label}`), {args.runs} runs per tool, interleaved "
           "(one run of each tool per round, the order rotating every round) after "
           f"{args.warmup} unrecorded warm-up runs. Median and p90 are nearest-rank. "
           "A ratio below 1 means Lockbox is faster than that tool.", "",
           "The machine is shared and noisy: other builds and tests run beside the "
           f"benchmark (load average {load_average()} when the report was written). "
           "Read the ratios within this one run, not the absolute times across runs."
           + (f" Lockbox figures: commit `{args.measured_commit}`." if args.measured_commit
              else ""), ""]
    out += summary(cases)
    for c in cases:
        out += [f"## {c.title}", ""]
        if c.skipped:
            out += [f"Skipped: {c.skipped}", ""]
            continue
        out += [f"Ranked by **{c.metric_name}**; the other column is "
                + ("time until everything finished (process exited, container deleted, "
                   "sandbox removed)." if c.metric == "first_ns"
                   else "time to the first output byte."), ""]
        out += table(c) + [""]
        out += [f"- {n}" for n in c.notes + lockbox_split(c)] + [""]
        out += step_breakdown(c)
    out += issue13_section(cases, args.sdk, args.reflink, args.reflink_note)
    out += sdk_section(args.sdk)
    out += ["## Which OCI runtime ran", ""] + [f"- {n}" for n in oci_notes] + [""]
    out += ["## How each tool is isolated", "",
            "- **bubblewrap**: `" + " ".join(bwrap_argv(Path("ROOTFS"), ["CMD"])) + "` "
            "(user, mount, pid, net, ipc, uts and cgroup namespaces; no capabilities; "
            "read-only root; no seccomp policy or cgroup limits).",
            "- **OCI runtime**: a bundle made by `runc spec --rootless`, adjusted: "
            "read-only root, `terminal: false`, PATH only, and the network and cgroup "
            "namespaces added to the template's user, mount, pid, ipc and uts. The "
            "runtime's default capabilities, masked /proc paths and cgroup are kept.",
            "- **lockbox**: `CreateSandbox(ctx, WithRootfs(ROOTFS))` then the command "
            "through the public Go API (bench/lockbox/main.go). " + lockbox_isolation(lockbox_info),
            "- **host spawn floor**: `/bin/echo hi` spawned by the harness on the host "
            "with no isolation: the cost of spawning any process from this harness, "
            "which every peer figure includes and the Lockbox figures do not.",
            "",
            "## How it is measured", "",
            "- Peers: the harness (Python) takes the time just before it spawns the "
            "tool, at the first byte read from the tool's stdout pipe, and at the "
            "tool's exit. A peer's figure therefore includes the fork/exec of its "
            "binary, which a user of that tool pays on every run.",
            "- Lockbox: a Go program on the public API is started once; for each run "
            "the harness sends it one line and it times the API calls with Go's "
            "monotonic clock (the first output byte through `Cmd.Stdout` for the "
            "cold cases; the return of `Exec` for the exec round trip). Go start-up "
            "and library loading happen once per program, not per sandbox, and are "
            "not included.",
            "- Cold means a new sandbox/container per run; the page cache is warm.",
            "- Lockbox is this tree's build: `make build`'s target/release/liblockbox.so "
            "(LOCKBOX_LIB) with the lockbox-helper next to it; the version row below names "
            "the commit.",
            "", "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine] + [""]
    out += ["## Plot", "", plot_note, ""]
    path.write_text("\n".join(out))


# One colour per tool across all panels.
COLORS = {"lockbox": "tab:red", "bwrap": "tab:blue", "runc": "tab:orange",
          "crun": "tab:purple", "host spawn floor": "tab:gray"}


def write_plot(path: Path, cases: list[Case]) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return "No plot: matplotlib is not installed (`make bench-compare` installs it in a venv)."
    shown = [c for c in cases if not c.skipped and any(r.samples for r in c.results)]
    if not shown:
        return "No plot: no tool produced figures."
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.5), squeeze=False)
    for ax, c in zip(axes[0], shown):
        for r in c.results:
            if not r.samples:
                continue
            v = sorted(r.values_ms(c.metric))
            ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post",
                    color=COLORS.get(r.label, "tab:gray"),
                    label=f"{r.label} (median {statistics.median(v):.2f} ms)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{c.metric_name}, ms (log scale)")
        ax.set_ylabel("fraction of runs at or below")
        ax.set_title(c.title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"![latency distributions (cumulative)]({path.name})"


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rootfs", type=Path, required=True)
    ap.add_argument("--python-rootfs", type=Path)
    ap.add_argument("--lockbox-driver", type=Path)
    ap.add_argument("--lockbox-missing", default="",
                    help="why the Lockbox driver is missing, for the table")
    ap.add_argument("--workdir", type=Path, default=Path("build/bench"))
    ap.add_argument("--md", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--png", type=Path, default=Path("docs/benchmarks.png"))
    ap.add_argument("--command", default="make bench-compare")
    ap.add_argument("--sdk", type=Path, help="output of the Go SDK benchmarks to include")
    ap.add_argument("--only", default="", help="comma-separated case keys to run")
    ap.add_argument("--reflink", type=Path,
                    help="output of the fork benchmarks run on a reflink filesystem")
    ap.add_argument("--reflink-note", default="",
                    help="how the reflink run was made (or why it was not)")
    ap.add_argument("--measured-commit", default="",
                    help="the commit the Lockbox figures come from")
    args = ap.parse_args()
    args.rootfs_label = os.path.relpath(args.rootfs)
    random.seed(0)

    work = args.workdir.resolve()
    state = work / "oci-state"
    state.mkdir(parents=True, exist_ok=True)
    hi = b"hi\n"
    write_bundle(work / "oci" / "echo", args.rootfs, ["echo", "hi"])
    write_bundle(work / "oci" / "sleep", args.rootfs, ["sleep", "100000"])

    # crun first (the lighter runtime), runc as the fallback; we measure every
    # runtime that runs here and report why the others did not.
    oci, oci_notes = [], []
    for rt in ("crun", "runc"):
        err = probe_oci(rt, state, work / "oci" / "echo")
        if err is None:
            oci.append(rt)
            oci_notes.append(f"{first_line([rt, '--version'])}: ran.")
        else:
            oci_notes.append(f"{rt}: refused on this machine ({err}).")

    env = dict(os.environ)
    env.pop("LOCKBOX_TRACE", None)
    traces = {}

    def lb(case: str, rootfs: Path) -> LockboxRunner:
        e = dict(env)
        if case != "exec":
            # The helper's per-step trace of the cold path (a fresh file).
            traces[case] = work / f"trace-{case}.jsonl"
            traces[case].unlink(missing_ok=True)
            e["LOCKBOX_TRACE"] = str(traces[case])
        return LockboxRunner(args.lockbox_driver, args.lockbox_missing, case, rootfs, e)
    floor = ProcessRunner("host spawn floor", lambda _: ["/bin/echo", "hi"], hi)

    cases = [
        Case("echo", "Create to first output of `echo hi` (cold: a new sandbox per run)",
             "first_ns", "to first output",
             [lb("echo", args.rootfs), ProcessRunner("bwrap", lambda _: bwrap_argv(args.rootfs, ["echo", "hi"]), hi)]
             + [OciRunner(rt, state, work / "oci" / "echo", hi) for rt in oci] + [floor]),
        Case("exec", "Exec round trip on a running sandbox (`echo hi`)",
             "done_ns", "round trip",
             [lb("exec", args.rootfs)]
             + [OciExecRunner(rt, state, work / "oci" / "sleep", hi) for rt in oci]
             + [ProcessRunner("host spawn floor", lambda _: ["/bin/echo", "hi"], hi)],
             notes=["bubblewrap has no way to run a command in an existing sandbox, so it is "
                    "not in this table.",
                    "OCI: `<runtime> exec` into a container whose process is `sleep`."]),
    ]
    py_cmd = ["python3", "-c", "print(6*7)"]
    py = Case("python", "Python one-liner, cold (`python3 -c 'print(6*7)'` in a new sandbox)",
              "first_ns", "to first output", [])
    if args.python_rootfs and (args.python_rootfs / "usr/bin/python3").exists():
        write_bundle(work / "oci" / "python", args.python_rootfs, py_cmd)
        py.runners = ([lb("python", args.python_rootfs),
                       ProcessRunner("bwrap", lambda _: bwrap_argv(args.python_rootfs, py_cmd), b"42\n")]
                      + [OciRunner(rt, state, work / "oci" / "python", b"42\n") for rt in oci])
        py.notes = [f"Root filesystem: `{os.path.relpath(args.python_rootfs)}`."]
    else:
        py.skipped = ("no python root filesystem "
                      f"({args.python_rootfs or 'none given'}); `make image-python` builds it.")
    cases.append(py)

    for c in cases:
        c.trace = traces.get(c.key)
    only = set(filter(None, args.only.split(",")))
    lockbox_info: dict = {}
    for c in cases:
        if c.skipped or (only and c.key not in only):
            if not c.skipped:
                c.skipped = "not selected in this run (--only)."
            continue
        run_case(c, args.runs, args.warmup)
        for r in c.runners:
            if isinstance(r, LockboxRunner) and r.info:
                lockbox_info = r.info

    args.md.parent.mkdir(parents=True, exist_ok=True)
    plot_note = write_plot(args.png, cases)
    write_markdown(args.md, cases, machine_details(lockbox_info), args, plot_note, oci_notes,
                   lockbox_info)
    print(args.md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
