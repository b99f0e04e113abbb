#!/usr/bin/env python3
"""Top-level module dependency graph of src/ (from `crate::<module>` paths) and its cycles.

Usage: scripts/lib/module_cycles.py [src]  -- prints edges and every cycle; exit 1 if any.
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = set()
for name in os.listdir(src):
    if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
        mods.add(name[:-3])
    elif os.path.isdir(os.path.join(src, name)):
        mods.add(name)

edges = {m: set() for m in mods}
for m in mods:
    paths = [os.path.join(src, m + ".rs")]
    d = os.path.join(src, m)
    if os.path.isdir(d):
        # A module's `tests.rs` is its `#[cfg(test)] mod tests;`, left out as below.
        paths = [
            os.path.join(r, f)
            for r, _, fs in os.walk(d)
            for f in fs
            if f.endswith(".rs") and f != "tests.rs"
        ]
    for p in paths:
        if not os.path.exists(p):
            continue
        text = open(p).read()
        # Test modules may reach anywhere; the graph is of the shipped code.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        for dep in re.findall(r"crate::([a-z_]+)", text):
            if dep in mods and dep != m:
                edges[m].add(dep)
        for group in re.findall(r"use crate::\{([^}]*)\}", text):
            for dep in re.findall(r"\b([a-z_]+)(?:::|\b)", group):
                if dep in mods and dep != m:
                    edges[m].add(dep)

index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = n[0]
    n[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


for v in sorted(mods):
    if v not in index:
        visit(v)
for m in sorted(edges):
    print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
print(f"cycles: {len(sccs)}")
for c in sccs:
    print("  cycle among:", ", ".join(c))
sys.exit(1 if sccs else 0)
