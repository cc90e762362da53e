"""Median wall time of a command over 15 runs: `python bench/timeit_cmd.py CMD ARGS...`."""
import statistics
import subprocess
import sys
import time

times = []
for _ in range(15):
    t = time.perf_counter()
    subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times.append((time.perf_counter() - t) * 1000)
print(f"median {statistics.median(times):.1f} ms  min {min(times):.1f}  max {max(times):.1f}")
