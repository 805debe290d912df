"""Two processes that share 2 cores: how much a 2-thread backbone run slows down beside another one, by OpenMP policy.

    python benchmarks/omp_oversubscription.py [--forwards 10]

`make test` runs nbval (its kernels use every core) beside other pytest runs. This measures why those others run on
one thread: a "main" process (2 threads, float64 forwards of the offline DINOv2-S/14 on 2 images at 224, as the
feature cache does) is timed alone, then beside a competitor that runs the same forwards with 1 or 2 threads, with
libgomp's default wait policy (threads spin a while at each barrier) and with OMP_WAIT_POLICY=PASSIVE (they sleep).
Each configuration runs in fresh processes; the printed times are the main process's wall time for its forwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORK = """
import sys, time, torch
from hpnb.backbones import load_backbone
net = load_backbone("dinov2_vits14_imgfocus").double().eval()
x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
n = int(sys.argv[1])
with torch.no_grad():
    net(x)  # warm-up
    print("ready", flush=True)
    start = time.perf_counter()
    for _ in range(n):
        net(x)
print(f"{time.perf_counter() - start:.2f}", flush=True)
"""


def _start(threads: int, policy: str | None, forwards: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return subprocess.Popen(
        [sys.executable, "-c", WORK, str(forwards)], env=env, stdout=subprocess.PIPE, text=True, bufsize=1
    )


def _seconds(proc: subprocess.Popen) -> float:
    out = proc.communicate()[0].split()
    return float(out[-1])


def main_time(policy: str | None, competitor: int | None, forwards: int) -> float:
    """Wall time of the main process's forwards, alone (competitor None) or beside a competitor with that many
    threads that is already running and outlasts it."""
    other = None
    if competitor:
        other = _start(competitor, policy, forwards * 6)
        assert other.stdout.readline().strip() == "ready"
    main = _start(2, policy, forwards)
    main.stdout.readline()
    seconds = _seconds(main)
    if other:
        other.kill()
        other.wait()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forwards", type=int, default=10)
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}; main: 2 threads, {args.forwards} fwd"
    )
    print(f"{'wait policy':<12} {'competitor':<18} {'main wall (s)':>13}")
    for policy in (None, "PASSIVE"):
        for competitor in (None, 1, 2):
            t = main_time(policy, competitor, args.forwards)
            who = "none" if competitor is None else f"{competitor} thread{'s' * (competitor > 1)}"
            print(f"{policy or 'default':<12} {who:<18} {t:>13.1f}", flush=True)
            time.sleep(1)


if __name__ == "__main__":
    main()
