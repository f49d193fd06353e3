"""Start-up of a big run, and of the CLI itself (issue 14, goals 2 and 3). Prints JSON.

* ``new_run_first_request_s``: a new ``ledger run`` of an N-item JSONL (default 1,000,000,
  ~83 bytes a record): seconds from starting the CLI process to the first request the
  simulator receives. The simulator runs in its own process (``ledger simulate
  --request-log``); the figure is the first logged request's wall time (``t``) minus the wall
  time just before the CLI was spawned, so it includes interpreter start, imports,
  validating the whole dataset, opening the run and planning.
* That run is killed with SIGKILL once ``--kill-after`` requests (default 15,000) reached the
  simulator, then ``ledger resume`` is started: ``resume_first_request_s`` is measured the
  same way (first request logged after the resume was spawned). ``*_cpu_at_first_request_s``:
  the CPU time the CLI process had used when its first request was seen (what the start
  costs, less inflated than the wall time on a busy machine). The resume then runs for
  ``--resume-seconds`` and is stopped with SIGINT; ``resume_peak_rss_mb`` is its peak RSS
  (``os.wait4`` on that one process: ru_maxrss, so neither the simulator nor the first run
  count).
* ``help_s``, ``status_s``: wall time of ``ledger --help`` and ``ledger status RUN`` (the
  resumed run), median of ``--repeat`` runs; ``*_cpu_s`` their CPU time (user + system),
  which a busy machine inflates less (``load_average_1min`` says how busy it was).

Each figure comes with its target and whether it was met. ``--src DIR`` runs the CLI from
another checkout (a directory holding ``llm_ledger/{ledger,runners,...}``, put first on
PYTHONPATH): how the figures before a change are measured in the same session.

    python bench/startup.py [--items 1000000] [--kill-after 15000] [--src DIR] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from simproc import free_port, start_simulator

TARGETS = {"new_run_first_request_s": 4.0, "resume_first_request_s": 2.0, "resume_peak_rss_mb": 300.0,
           "help_s": 0.3, "status_s": 0.3}


def write_dataset(path: str, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt": f"What is {i} plus {i % 97}? Answer:",
                                "expected": str(i + i % 97)}) + "\n")


class RequestLog:
    """The simulator's request log, read as it grows."""

    def __init__(self, path: str, since: float = 0.0) -> None:
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self.since = since  # requests logged before (a killed run's last ones) are not counted
        self.count = 0
        self.first: float | None = None

    def poll(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            t = json.loads(line)["t"]
            if t < self.since:
                continue
            if self.first is None:
                self.first = t
            self.count += 1
        self.offset += end


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llm_ledger.cli", *args]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_request(cmd: list[str], log: RequestLog, env: dict[str, str], until: int, timeout: float = 300.0
                  ) -> tuple[subprocess.Popen, float, float]:
    """Spawn ``cmd``; once ``until`` requests arrived, return it, the seconds to the first
    request and the CPU seconds the process had used when it was seen (polled every 10 ms)."""
    t0 = log.since = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    cpu = None
    while log.count < until:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[3]} exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[3]}: {log.count} requests after {timeout} s")
        time.sleep(0.01)
        log.poll()
        if cpu is None and log.first is not None:
            cpu = round(cpu_seconds(proc.pid), 2)
    assert log.first is not None and cpu is not None
    return proc, log.first - t0, cpu


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``cmd``: on a busy machine the
    CPU time says what the command costs, the wall time what a user waits."""
    times, cpus = [], []
    for _ in range(repeat):
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(times), round(statistics.median(cpus), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--kill-after", type=int, default=15_000, help="requests before the first run is killed")
    ap.add_argument("--resume-seconds", type=float, default=5.0, help="how long the resume runs after its first request")
    ap.add_argument("--repeat", type=int, default=5, help="runs of --help and status (median)")
    ap.add_argument("--src", default="", help="run the CLI from this tree (PYTHONPATH), e.g. a checkout before a change")
    ap.add_argument("--dir", default="", help="working directory (default: a temporary one); the dataset is kept there")
    args = ap.parse_args()

    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.path.abspath(args.src) + os.pathsep + env.get("PYTHONPATH", "")
    work = args.dir or tempfile.mkdtemp(prefix="ledger-startup-")
    os.makedirs(work, exist_ok=True)
    dataset = os.path.join(work, f"sums-{args.items}.jsonl")
    if not os.path.exists(dataset):
        write_dataset(dataset, args.items)
    runs = tempfile.mkdtemp(prefix="runs-", dir=work)
    request_log = os.path.join(work, f"requests-{os.getpid()}.jsonl")
    port = free_port()
    sim = start_simulator(port, "--request-log", request_log, env=env)
    result: dict[str, object] = {"items": args.items, "dataset_mb": round(os.path.getsize(dataset) / 1e6, 1),
                                 "src": args.src or "installed", "measured_at": "simulator request log (first request's t)"}
    try:
        log = RequestLog(request_log)
        run = cli("run", dataset, "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "sim-1", "--run-id", "big",
                  "--runs-dir", runs, "--no-preflight")
        proc, result["new_run_first_request_s"], result["new_run_cpu_at_first_request_s"] = first_request(
            run, log, env, args.kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)  # requests already on their way are logged before the resume starts
        log.poll()
        result["requests_before_kill"] = log.count

        log = RequestLog(request_log)
        proc, result["resume_first_request_s"], result["resume_cpu_at_first_request_s"] = first_request(
            cli("resume", "big", "--runs-dir", runs), log, env, 1)
        time.sleep(args.resume_seconds)
        proc.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        result["resume_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)

        result["help_s"], result["help_cpu_s"] = timed(cli("--help"), env, args.repeat)
        result["status_s"], result["status_cpu_s"] = timed(cli("status", "big", "--runs-dir", runs), env, args.repeat)
        result["load_average_1min"] = os.getloadavg()[0]
    finally:
        sim.terminate()
        sim.wait()
    for name, target in TARGETS.items():
        value = result[name]
        assert isinstance(value, float)
        result[name] = round(value, 3)
        result[f"{name}_target"] = target
        result[f"{name}_met"] = value < target
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
