#!/usr/bin/env python3
"""Is a refactor result-neutral? Compares two study run directories (e.g. smoke before and after):
results.json rows without timings, machine and versions, and every node's per-step training `loss`
and `achieved_image_fraction` in metrics.jsonl. Prints IDENTICAL (exit 0) or what differs (exit 1).

    scripts/compare-runs.py RUN_BEFORE RUN_AFTER
"""
import json, sys, pathlib
a, b = map(pathlib.Path, sys.argv[1:3])
DROP = {"wall_time_s", "machine", "versions"}
def rows(run):
    out = json.load(open(run / "results.json"))
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in DROP and not k.endswith("_s")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(out)
ok = True
if rows(a) != rows(b):
    ok = False
    print("results.json differs")
    for ra, rb in zip(rows(a)["rows"], rows(b)["rows"]):
        if ra != rb: print(" ", ra.get("run_id"), "\n   ", ra, "\n   ", rb)
n = 0
for m in sorted((a / "nodes").glob("*/metrics.jsonl")):
    other = b / m.relative_to(a)
    la = [json.loads(l)["loss"] for l in open(m)]
    lb = [json.loads(l)["loss"] for l in open(other)] if other.exists() else None
    n += len(la)
    if la != lb:
        ok = False
        print("losses differ:", m.parent.name)
    fa = [json.loads(l).get("achieved_image_fraction") for l in open(m)]
    fb = [json.loads(l).get("achieved_image_fraction") for l in open(other)] if other.exists() else None
    if fa != fb:
        ok = False
        print("achieved_image_fraction differs:", m.parent.name)
print("IDENTICAL" if ok else "DIFFERENT", f"({len(rows(a)['rows'])} result rows, {n} training losses)")
sys.exit(0 if ok else 1)
