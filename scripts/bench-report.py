#!/usr/bin/env python3
"""Summarises scripts/bench.sh pg rounds: medians per script and target, the
custody/socat-chain and custody/direct ratios taken within each round (then
their median, with the spread), and the latency custody adds per query.

Input: a TSV of round, script, target, tps, latency_ms, relay_cpu_s (and,
when measured, the machine's idle percent and its context switches during
the run), and optionally the seconds of each run, for the relays' CPU and
the machine's context switches per transaction.
"""
import collections
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


# One pgbench run; idle and switches are None in files from older benches.
Run = collections.namedtuple("Run", "round tps lat cpu idle switches")


def per_txn(value, run, seconds):
    """A run's total (CPU seconds, context switches) per transaction."""
    if not seconds or not run.tps or value is None:
        return None
    return value / (run.tps * seconds)


def main(path, seconds=None):
    rows = {}  # (script, target) -> list of Run
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) not in (6, 7, 8):
            continue
        rnd, script, target, tps, lat, cpu = parts[:6]
        idle = num(parts[6]) if len(parts) > 6 else None
        switches = num(parts[7]) if len(parts) > 7 else None
        rows.setdefault((script, target), []).append(Run(rnd, num(tps), num(lat), num(cpu), idle, switches))

    print(
        f"{'script':<11} {'target':<12} {'tps':>10} {'latency_ms':>11} {'relay_cpu_s':>12} {'idle_%':>7} {'switches/txn':>13}"
    )
    for s in SCRIPTS:
        for t in TARGETS:
            r = rows.get((s, t), [])
            if not r:
                continue
            tps = median([x.tps for x in r])
            lat = median([x.lat for x in r])
            cpu = median([x.cpu for x in r])
            idle = median([x.idle for x in r])
            sw = median([per_txn(x.switches, x, seconds) for x in r])
            print(
                f"{s:<11} {t:<12} {fmt(tps, '.0f'):>10} {fmt(lat, '.3f'):>11} {fmt(cpu, '.2f'):>12} {fmt(idle, '.1f'):>7} {fmt(sw, '.2f'):>13}"
            )
    print()

    def per_round(script, target, base, field):
        a = {x.round: getattr(x, field) for x in rows.get((script, target), [])}
        b = {x.round: getattr(x, field) for x in rows.get((script, base), [])}
        return [(a[k], b[k]) for k in a if k in b and a[k] is not None and b[k] is not None]

    print(f"{'script':<11} {'custody/socat-chain':>20} {'(min-max)':>12} {'target':>7} {'custody/direct':>15}")
    for s in SCRIPTS:
        pairs = per_round(s, "custody", "socat-chain", "tps")
        ratios = [a / b for a, b in pairs if b > 0]
        direct = [a / b for a, b in per_round(s, "custody", "direct", "tps") if b > 0]
        if not ratios and not direct:
            continue
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        want = TARGET_RATIO.get(s)
        mark = "" if want is None or not ratios else ("ok" if median(ratios) >= want else "MISS")
        want_s = f">={want:.2f}" if want else ""
        print(f"{s:<11} {fmt(median(ratios), '.2f'):>20} {spread:>12} {want_s:>7} {fmt(median(direct), '.2f'):>15} {mark}")

    if seconds:
        cpu_per_txn(rows, seconds)

    added = [(a - b) * 1000.0 for a, b in per_round("latency", "custody", "socat-chain", "lat")]
    over_direct = [(a - b) * 1000.0 for a, b in per_round("latency", "custody", "direct", "lat")]
    if added:
        m = median(added)
        mark = "ok" if m <= TARGET_ADDED_US else "MISS"
        print(
            f"latency added per query (pgbench -S -c 1): {m:.0f} us over the socat chain "
            f"(rounds {min(added):.0f} to {max(added):.0f}; target <= {TARGET_ADDED_US:.0f} us) {mark}, "
            f"{median(over_direct):.0f} us over direct"
        )


def cpu_per_txn(rows, seconds):
    """The forwarders' CPU per transaction: what a relay costs whatever the
    machine's noise does to throughput (a round's tps moves with the
    scheduler; the CPU each transaction takes moves far less)."""

    def us(script, target):
        per = [per_txn(x.cpu, x, seconds) for x in rows.get((script, target), [])]
        per = [v * 1e6 for v in per if v is not None]
        return median(per)

    print()
    print(f"{'script':<11} {'relay cpu us/txn: socat-chain':>30} {'custody':>9} {'custody/socat-chain':>20}")
    for s in SCRIPTS:
        a, b = us(s, "socat-chain"), us(s, "custody")
        if a is None and b is None:
            continue
        ratio = b / a if a and b is not None else None
        print(f"{s:<11} {fmt(a, '.1f'):>30} {fmt(b, '.1f'):>9} {fmt(ratio, '.2f'):>20}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None)
