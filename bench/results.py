#!/usr/bin/env python3
"""Put one bench/run result into docs/performance.md, replacing the section of the same size.

    bench/results.py N < table.md

docs/performance.md keeps free text at the top (up to the first "## " heading) and one
"## N people" section per size measured; the new section replaces the old one of that size.
"""
import re
import sys

n = int(sys.argv[1])
path = "docs/performance.md"
body = sys.stdin.read().strip() + "\n"
try:
    text = open(path, encoding="utf-8").read()
except FileNotFoundError:
    text = "# dirbridge performance\n\n"
head, *rest = re.split(r"(?m)^(?=## )", text)
sections = {}
for s in rest:
    m = re.match(r"## ([0-9,]+) people", s)
    if m:
        sections[int(m.group(1).replace(",", ""))] = s.rstrip() + "\n"
sections[n] = f"## {n:,} people\n\n{body}"
out = head.rstrip() + "\n\n" + "\n".join(sections[k] for k in sorted(sections))
open(path, "w", encoding="utf-8").write(out)
