"""Prints BENCHMARKS.md's long-horizon tables from a harness run's results folder.

    python summarize.py /path/to/results/custom-...   (needs pandas)

Per phase: median completion rate, claim p99 (median and peak of the rolling-30 s p99
samples), end-to-end p99, queue depth, dead tuples of the event tables, and the harness's
recovery figures. Then, per fault, the seconds from the fault's end until claim p99 is back
within 2x the clean phase's median (`p99 back`), and the longest run of zero-completion
samples (`zero for`), which the harness's summary does not compute.
"""

import json
import sys
from pathlib import Path

import pandas as pd

run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
raw = pd.read_csv(run / "raw.csv")


def fmt(v, nd=1):
    return "-" if v is None or v != v else f"{v:,.{nd}f}"


for system, data in summary["systems"].items():
    print(f"\n{system}\n")
    print("| phase | completed/s | claim p99 median / peak (ms) | e2e p99 (ms) | depth median / peak | dead tuples median / peak | recovery |")
    print("|---|---|---|---|---|---|---|")
    for label, p in data["phases"].items():
        m = p.get("metrics", {})
        claim = m.get("claim_p99_ms", {})
        depth = m.get("queue_depth", {})
        extra = []
        if p.get("recovery_to_baseline_s") is not None:
            extra.append(f"dead tuples to baseline {fmt(p['recovery_to_baseline_s'], 0)} s")
        if p.get("chaos_recovery_time_s") is not None:
            extra.append(f"throughput back {fmt(p['chaos_recovery_time_s'], 0)} s")
        if p.get("jobs_lost") is not None:
            extra.append(f"lost {fmt(p['jobs_lost'], 0)}")
        print(
            f"| {label} | {fmt(p.get('median_throughput_per_s'))} | "
            f"{fmt(claim.get('median'), 2)} / {fmt(claim.get('peak'), 2)} | "
            f"{fmt(p.get('median_end_to_end_p99_ms'), 2)} | "
            f"{fmt(depth.get('median'), 0)} / {fmt(depth.get('peak'), 0)} | "
            f"{fmt(p.get('median_dead_tup'), 0)} / {fmt(p.get('peak_dead_tup'), 0)} | "
            f"{'; '.join(extra) or '-'} |"
        )

    mine = raw[(raw.system == system) & (raw.subject_kind == "adapter")]
    series = mine.pivot_table(index="elapsed_s", columns="metric", values="value", aggfunc="max")
    phase = mine.groupby("elapsed_s").phase_label.first()
    ptype = mine.groupby("elapsed_s").phase_type.first()
    clean = series.claim_p99_ms[phase == "clean_1"].median()
    print(f"\nclean claim p99 median {clean:.2f} ms")
    faults = [l for l in dict.fromkeys(phase) if ptype[phase == l].iloc[0] in (
        "idle-in-tx", "pg-backend-kill", "postgres-restart", "high-load")]
    starts = [phase.index[phase == l].min() for l in faults] + [float("inf")]
    for i, label in enumerate(faults):
        times = phase.index[phase == label]
        end = times.max()
        # Up to 60 s after the phase, but never into the next fault.
        until = min(end + 60, starts[i + 1] - 0.01)
        after = series.claim_p99_ms[(series.index > end)].dropna()
        back = after[after <= 2 * clean]
        back_s = "never" if back.empty else f"{back.index[0] - end:.0f} s"
        done = series.completion_rate[(series.index >= times.min()) & (series.index <= until)].dropna()
        zero, longest, prev = 0.0, 0.0, None
        for t, v in done.items():
            zero = zero + (t - prev if prev is not None else 0) if v == 0 else 0.0
            longest = max(longest, zero)
            prev = t
        print(f"- {label}: p99 back within 2x clean {back_s} after the phase; "
              f"completion at zero for {longest:.0f} s at most")
