#!/usr/bin/env python3
"""What is alive at a run's heap peak, by the program's own frames.

    heaptrack_print -f heaptrack.dirbridge.PID.zst --print-peaks 0 --print-allocators 0 \
        --print-temporary 0 --print-leaks 0 --flamegraph-cost-type peak -F peak.folded
    bench/heap-peak.py peak.folded [DEPTH]

Each line of the folded file is one call stack (root first) and the bytes it held at the peak.
The stacks are cut at `run_command` (the CLI's entry), the allocator's and the runtime's own
frames are dropped, and the last DEPTH frames (4 by default) name the allocation site.
Needs a build with the system allocator (`--features system-alloc`).
"""
import collections
import re
import sys

NOISE = re.compile(
    r"^(grow|finish_grow|realloc|alloc|allocate|with_capacity|try_allocate|do_reserve|reserve|"
    r"push|to_vec|to_owned|clone|from|into|new|box_new|extend|fold|spec_|from_iter|collect|_R|"
    r"try_|bulk|insert<>|map<>|\{closure)"
)
RUNTIME = ("tokio", "enter", "block_on", "budget", "scheduler")

depth = int(sys.argv[2]) if len(sys.argv) > 2 else 4
sites = collections.Counter()
for line in open(sys.argv[1], encoding="utf-8"):
    stack, _, n = line.rstrip().rpartition(" ")
    if not n.isdigit():
        continue
    frames = stack.split(";")
    starts = [i for i, f in enumerate(frames) if f.startswith("run_command")]
    frames = frames[starts[-1] + 1 :] if starts else frames
    ours = [
        f
        for f in frames
        if not NOISE.match(f)
        and not any(r in f for r in RUNTIME)
        and not f.startswith(("set<", "with<"))
    ]
    sites[" > ".join(ours[-depth:])] += int(n)
print(f"{sum(sites.values()) / 1e6:8.1f} MB alive at the peak")
for site, n in sites.most_common(30):
    print(f"{n / 1e6:8.1f} MB  {site[:300]}")
