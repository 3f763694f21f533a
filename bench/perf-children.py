#!/usr/bin/env python3
"""Where the time under one function goes, from `perf script` output.

    perf record --call-graph dwarf,16384 -F 299 -o perf.data target/release/dirbridge -v daemon
    perf script -i perf.data | bench/perf-children.py 'dirbridge::run::decide' [DEPTH]

Counts the samples whose stack contains FUNCTION, by the dirbridge frame(s) just below it
(DEPTH of them, default 1): the children of that function, heaviest first. Needs a build with
line tables (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only), see docs/DEVELOPING.md.
"""
import collections
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    parent = sys.argv[1]
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    counts = collections.Counter()
    total = 0
    stack = []

    def flush():
        nonlocal total
        for i, frame in enumerate(stack):
            if parent in frame:
                total += 1
                below = [g for g in stack[:i] if "dirbridge::" in g or "<dirbridge" in g]
                key = " < ".join(reversed(below[-depth:])) if below else stack[0]
                counts[key] += 1
                return

    for line in sys.stdin:
        line = line.rstrip()
        if not line:
            flush()
            stack.clear()
            continue
        if line[:1] in "\t ":
            parts = line.strip().split(" ", 1)
            if len(parts) > 1:
                stack.append(parts[1].rsplit(" (", 1)[0].split("+0x")[0])
    flush()
    print(f"samples under {parent}: {total}")
    for key, n in counts.most_common(30):
        print(n, key[:200])


if __name__ == "__main__":
    main()
