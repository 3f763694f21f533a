#!/usr/bin/env python3
"""Turn the Markdown man pages of docs/ into roff for man(1).

    scripts/man.py docs/dirbridge.8.md > dirbridge.8

Handles what those pages use: a `# name(N) — title` heading, `##` sections, paragraphs, fenced
code blocks, definition lists (a term line, then lines starting with `:   `), tables (kept as
preformatted text), `code` and **bold**.
"""
import re
import sys


def inline(text):
    text = text.replace("\\", "\\e")
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    # a line starting with . or ' would be a roff request
    return re.sub(r"^([.'])", r"\\&\1", text)


def main(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    out = []
    title = lines[0].lstrip("# ").strip()
    m = re.match(r"([\w.-]+)\((\d)\)\s*[—-]\s*(.*)", title)
    if not m:
        sys.exit(f"{path}: the first line must be '# name(N) — description'")
    name, section, desc = m.groups()
    out.append(f'.TH "{name.upper()}" "{section}" "" "dirbridge" "dirbridge"')
    out.append(".SH NAME")
    out.append(f"{name} \\- {inline(desc)}")
    i = 1
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.append(inline(" ".join(para)))
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            flush()
            out.append(".SH " + inline(line[3:].strip().upper()))
        elif line.startswith("```"):
            flush()
            out.append(".PP\n.nf\n.RS 4")
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                out.append(inline(lines[i]))
                i += 1
            out.append(".RE\n.fi")
        elif line.startswith("|"):
            flush()
            out.append(".PP\n.nf")
            while i < len(lines) and lines[i].startswith("|"):
                if not re.match(r"^\|[-| ]+\|$", lines[i]):
                    cells = [c.strip() for c in lines[i].strip("|").split("|")]
                    out.append(inline("  ".join(cells)))
                i += 1
            out.append(".fi")
            continue
        elif i + 1 < len(lines) and lines[i + 1].startswith(":   ") and line.strip():
            flush()
            out.append(".TP")
            out.append(inline(line.strip()))
            i += 1
            body = []
            while i < len(lines) and (lines[i].startswith(":   ") or lines[i].startswith("    ")):
                body.append(lines[i][4:].strip())
                i += 1
            out.append(inline(" ".join(body)))
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
