#!/usr/bin/env python3
"""Lists functions in src/ longer than a limit (default 80 lines).

Usage: scripts/fn-lengths.py [LIMIT]
A function's length is counted from its `fn` line to its closing brace;
tests (`#[cfg(test)]` modules and `*_tests.rs`, `tests.rs`) are not counted.
"""
import os, re, sys

limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
found = []
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs") or f.endswith("_tests.rs") or f == "tests.rs":
            continue
        path = os.path.join(d, f)
        lines = open(path, encoding="utf-8").read().split("\n")
        i = 0
        while i < len(lines):
            if lines[i].startswith("#[cfg(test)]"):
                break
            m = fn_re.match(lines[i])
            if m:
                depth, j, opened = 0, i, False
                while j < len(lines):
                    code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
                    depth += code.count("{") - code.count("}")
                    opened = opened or "{" in code
                    if opened and depth <= 0:
                        break
                    if not opened and code.rstrip().endswith(";"):
                        break
                    j += 1
                n = j - i + 1
                if n > limit:
                    found.append((n, os.path.relpath(path, os.path.join(root, "..")), i + 1, m.group(6)))
            i += 1
for n, p, l, name in sorted(found, reverse=True):
    print(f"{n:4d}  {p}:{l}  {name}")
sys.exit(1 if found else 0)
