#!/usr/bin/env python3
"""Put one bench/run result into docs/performance.md, replacing the section of the same size.

    bench/results.py N [LABEL] < table.md

docs/performance.md keeps free text at the top (up to the first "## " heading) and one
"## N people" section per size measured (or "## N people, LABEL" for a run with a non-default
setting, e.g. "transaction-size 1000"); the new section replaces the old one of the same heading.
"""
import re
import sys

n = int(sys.argv[1])
label = sys.argv[2] if len(sys.argv) > 2 else ""
path = "docs/performance.md"
body = sys.stdin.read().strip() + "\n"
try:
    text = open(path, encoding="utf-8").read()
except FileNotFoundError:
    text = "# dirbridge performance\n\n"
head, *rest = re.split(r"(?m)^(?=## )", text)
sections = {}
for s in rest:
    m = re.match(r"## ([0-9,]+) people(?:, (.*))?\n", s)
    if m:
        sections[(int(m.group(1).replace(",", "")), m.group(2) or "")] = s.rstrip() + "\n"
title = f"{n:,} people" + (f", {label}" if label else "")
sections[(n, label)] = f"## {title}\n\n{body}"
out = head.rstrip() + "\n\n" + "\n".join(sections[k] for k in sorted(sections))
open(path, "w", encoding="utf-8").write(out)
