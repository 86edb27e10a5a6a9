"""ratios.py results.tsv -- the issue's speed goals, computed from one run's results."""

import csv
import sys

with open(sys.argv[1]) as fh:
    rows = {r["label"]: r for r in csv.DictReader(fh, delimiter="\t")}


def f(label: str, col: str) -> float:
    return float(rows[label][col]) if label in rows else float("nan")


checks = [
    ("initial sync msgs/s, kmrl / mbsync (goal >= 1.0)",
     f("kmrl-full", "msgs_per_s") / f("mbsync-full", "msgs_per_s"), lambda v: v >= 1.0),
    ("no-change sync, whole kmrl-sync process, s (goal <= 0.3)", f("kmrl-nochange", "wall_s"),
     lambda v: v <= 0.3),
    ("500 new: kmrl wall / mbsync wall (goal <= 1.5)",
     f("kmrl-incr", "wall_s") / f("mbsync-incr", "wall_s"), lambda v: v <= 1.5),
    ("peak RSS of kmrl-sync over all phases, MB (goal <= 150)",
     max(f(f"kmrl-{p}", "rss_mb") for p in ("full", "nochange", "incr")), lambda v: v <= 150),
]
for text, value, ok in checks:
    print(f"{text:62s} {value:8.2f}  {'met' if ok(value) else 'NOT met'}")
