#!/usr/bin/env python3
"""Summarises scripts/bench.sh pg rounds: medians per script and target, the
custody/socat-chain and custody/direct ratios taken within each round (then
their median, with the spread), and the latency custody adds per query.

Input: a TSV of round, script, target, tps, latency_ms, relay_cpu_s.
"""
import statistics
import sys

SCRIPTS = ["select", "tpcb", "select-ext", "masked", "latency"]
TARGETS = ["direct", "socat-chain", "custody"]
# What issue 18 asks of each ratio (custody/socat-chain).
TARGET_RATIO = {"select": 0.97, "tpcb": 0.97, "select-ext": 0.97, "masked": 0.92}
TARGET_ADDED_US = 15.0


def num(v):
    try:
        return float(v)
    except ValueError:
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(path):
    rows = {}  # (script, target) -> list of (round, tps, lat, cpu)
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 6:
            continue
        rnd, script, target, tps, lat, cpu = parts
        rows.setdefault((script, target), []).append((rnd, num(tps), num(lat), num(cpu)))

    print(f"{'script':<11} {'target':<12} {'tps':>10} {'latency_ms':>11} {'relay_cpu_s':>12}")
    for s in SCRIPTS:
        for t in TARGETS:
            r = rows.get((s, t), [])
            if not r:
                continue
            tps = median([x[1] for x in r])
            lat = median([x[2] for x in r])
            cpu = median([x[3] for x in r])
            print(f"{s:<11} {t:<12} {fmt(tps, '.0f'):>10} {fmt(lat, '.3f'):>11} {fmt(cpu, '.2f'):>12}")
    print()

    def per_round(script, target, base, field):
        a = {x[0]: x[field] for x in rows.get((script, target), [])}
        b = {x[0]: x[field] for x in rows.get((script, base), [])}
        return [(a[k], b[k]) for k in a if k in b and a[k] is not None and b[k] is not None]

    print(f"{'script':<11} {'custody/socat-chain':>20} {'(min-max)':>12} {'target':>7} {'custody/direct':>15}")
    for s in SCRIPTS:
        pairs = per_round(s, "custody", "socat-chain", 1)
        ratios = [a / b for a, b in pairs if b > 0]
        direct = [a / b for a, b in per_round(s, "custody", "direct", 1) if b > 0]
        if not ratios and not direct:
            continue
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        want = TARGET_RATIO.get(s)
        mark = "" if want is None or not ratios else ("ok" if median(ratios) >= want else "MISS")
        want_s = f">={want:.2f}" if want else ""
        print(f"{s:<11} {fmt(median(ratios), '.2f'):>20} {spread:>12} {want_s:>7} {fmt(median(direct), '.2f'):>15} {mark}")

    added = [(a - b) * 1000.0 for a, b in per_round("latency", "custody", "socat-chain", 2)]
    over_direct = [(a - b) * 1000.0 for a, b in per_round("latency", "custody", "direct", 2)]
    if added:
        m = median(added)
        mark = "ok" if m <= TARGET_ADDED_US else "MISS"
        print(
            f"latency added per query (pgbench -S -c 1): {m:.0f} us over the socat chain "
            f"(rounds {min(added):.0f} to {max(added):.0f}; target <= {TARGET_ADDED_US:.0f} us) {mark}, "
            f"{median(over_direct):.0f} us over direct"
        )


if __name__ == "__main__":
    main(sys.argv[1])
