#!/usr/bin/env python3
"""The bench's capture file read from two page-cache states, every tool in
turn (BENCHMARKS.md, issue #4, session 12).

"as-read": the file as `cargo bench -p monitor --bench analyzers` leaves it
(its pages dropped and read back, as from disk: large folios on Linux 6.x
ext4). "4KB": a copy written 4 KB at a time, which the page cache keeps in
4 KB pages (as it kept the file the generator had just written).

    cargo bench -p monitor --bench analyzers -- --analysis-only   # the file, the bench binary
    python3 monitor/benches/model/page_cache_states.py 20          # rounds

Prints each tool's median CPU (user + system, from wait4) in each state,
the median of the per-round ratios between the states, and the pinned
monitor's ratio to each tool within each round. The copy is written to
target/bench/ and removed at the end.
"""
import glob
import os
import random
import resource
import statistics as st
import subprocess
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
target = os.path.join(root, "target")
as_read = os.path.join(target, "bench", "flows-2000000-10000-256.pcap")
copy = os.path.join(target, "bench", "flows-2000000-10000-256-4k.pcap")
bins = [b for b in glob.glob(os.path.join(target, "release", "deps", "analyzers-*"))
        if os.access(b, os.X_OK) and not b.endswith(".d")]
bench = max(bins, key=os.path.getmtime)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20

with open(as_read, "rb") as src, open(copy, "wb") as dst:
    while chunk := src.read(4096):
        dst.write(chunk)
files = {"as-read": as_read, "4KB": copy}


def softflowd(path, table):
    return (["softflowd", "-r", path, "-n", "127.0.0.1:9", "-d"]
            + (["-m", table] if table else [])
            + ["-c", "none", "-p", os.path.join(target, "bench", "softflowd.pid")])


tools = {
    "monitor": lambda f: [bench, "--child", f, "pin", "2000000", os.path.join(target, "bench", "compiled")],
    "tcpdump": lambda f: ["tcpdump", "-r", f, "-w", "/dev/null"],
    "softflowd": lambda f: softflowd(f, None),
    "softflowd -m 1000000": lambda f: softflowd(f, "1000000"),
}
cpu = {}
try:
    # Compile flow-stats into the compiled directory once, outside the rounds.
    subprocess.run(tools["monitor"](as_read), stdout=subprocess.DEVNULL, check=True)
    for _ in range(rounds):
        turns = [(t, s) for t in tools for s in files]
        random.shuffle(turns)
        for tool, state in turns:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(tools[tool](files[state]), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.setdefault((tool, state), []).append(
                after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
finally:
    os.remove(copy)

print(f"{rounds} rounds; CPU medians (s), and as-read / 4KB per round")
for tool in tools:
    a, b = cpu[(tool, "as-read")], cpu[(tool, "4KB")]
    r = sorted(x / y for x, y in zip(a, b))
    print(f"{tool:22} as-read {st.median(a):.3f}  4KB {st.median(b):.3f}  "
          f"ratio median {st.median(r):.3f} (quartiles {r[len(r) // 4]:.3f}-{r[3 * len(r) // 4]:.3f})")
print("pinned monitor's CPU rate vs each tool, within each round")
for state in files:
    for tool in list(tools)[1:]:
        r = sorted(t / m for t, m in zip(cpu[(tool, state)], cpu[("monitor", state)]))
        print(f"{state:8} vs {tool:22} median {st.median(r):.2f}x (lowest {r[0]:.2f}, highest {r[-1]:.2f})")
