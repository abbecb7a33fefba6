#!/usr/bin/env python3
"""Compares the driver suite's runs with the direct one.

Usage: compare.py --results DIR [--expected RUN=FILE ...] [--retried DIR]

DIR holds direct.jsonl and one RUN.jsonl per gateway run (asyncpg_runner.py
output). A test that passes in direct.jsonl must pass in each gateway run
unless RUN's expected file lists it. Expected files have one entry a line:

    TEST ID (or a class/module prefix) | reason [| match REGEX]

With `match`, the test must fail in that run with a message matching REGEX
(a refusal that must be the clear one); an entry without it may fail in any
way. A listed test that now passes is reported as stale (a warning, or an
error when it has `match`), unless the entry says `| may-pass` (a difference
that depends on timing, such as a debug build's slower connection setup).
A run during which custody serve died fails, whatever the lists say. Prints a table of every difference and the counts
per run; exits 1 on any unexpected difference.
"""

import argparse
import collections
import json
import os
import re
import sys

DIED = {}
OUTCOMES = ('pass', 'fail', 'error', 'timeout', 'skip', 'xfail', 'xpass')


def load(path):
    res = {}
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get('event') == 'gateway-died':
                    DIED.setdefault(os.path.basename(path), []).append(
                        rec['during'])
                elif 'id' in rec:
                    res[rec['id']] = rec
    return res


def load_expected(path):
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            parts = [p.strip() for p in line.split('|')]
            if len(parts) < 2 or not parts[1]:
                sys.exit(f'{path}:{n}: an entry needs "TEST ID | reason"')
            match, may_pass = None, False
            for extra in parts[2:]:
                if extra.startswith('match '):
                    match = re.compile(extra[len('match '):].strip())
                elif extra == 'may-pass':
                    may_pass = True
                else:
                    sys.exit(f'{path}:{n}: unknown field {extra!r}')
            entries.append({'id': parts[0], 'reason': parts[1],
                            'match': match, 'may_pass': may_pass,
                            'line': n, 'used': False})
    return entries


def find_entry(entries, test_id):
    best = None
    for e in entries:
        if test_id == e['id'] or test_id.startswith(e['id'] + '.'):
            if best is None or len(e['id']) > len(best['id']):
                best = e
    return best


def short_id(test_id):
    return test_id[len('tests.'):] if test_id.startswith('tests.') else test_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--results', required=True)
    ap.add_argument('--expected', action='append', default=[])
    args = ap.parse_args()

    direct = load(os.path.join(args.results, 'direct.jsonl'))
    if direct is None:
        sys.exit('no direct run to compare with')
    expected = {}
    for spec in args.expected:
        run, path = spec.split('=', 1)
        expected[run] = (path, load_expected(path))
    runs = {}
    for run in ('custody', 'detectors'):
        r = load(os.path.join(args.results, run + '.jsonl'))
        if r is not None:
            runs[run] = r

    print('counts (tests that ran):')
    header = '  {:<10}' + ' {:>7}' * len(OUTCOMES) + ' {:>7}'
    print(header.format('run', *OUTCOMES, 'total'))
    for name, res in [('direct', direct)] + list(runs.items()):
        c = collections.Counter(r['outcome'] for r in res.values())
        print(header.format(name, *[c.get(o, 0) for o in OUTCOMES],
                            len(res)))

    bad = 0
    for run, res in runs.items():
        path, entries = expected.get(run, (None, []))
        rows = []
        for test_id, d in sorted(direct.items()):
            got = res.get(test_id)
            g_out = got['outcome'] if got else 'missing'
            if d['outcome'] == g_out:
                continue
            entry = find_entry(entries, test_id)
            msg = got['message'] if got else ''
            if d['outcome'] != 'pass':
                verdict = 'info'          # did not pass directly: not judged
                why = f"direct: {d['message'][:90]}"
            elif entry is None:
                verdict = 'UNEXPECTED'
                why = msg
            elif entry['match'] and not entry['match'].search(msg):
                verdict = 'WRONG-REFUSAL'
                why = f"wanted /{entry['match'].pattern}/, got: {msg}"
            else:
                verdict = 'expected'
                why = entry['reason']
            if entry is not None and d['outcome'] == 'pass':
                entry['used'] = True
            rows.append((verdict, test_id, d['outcome'], g_out, why))
        # Tests that ran here but not directly (should not happen).
        for test_id in sorted(set(res) - set(direct)):
            rows.append(('info', test_id, 'missing', res[test_id]['outcome'],
                         'not in the direct run'))

        print(f'\n{run} vs direct ({path or "no expected list"}):')
        if not rows:
            print('  no differences')
        order = {'UNEXPECTED': 0, 'WRONG-REFUSAL': 1, 'expected': 2, 'info': 3}
        for verdict, test_id, a, b, why in sorted(
                rows, key=lambda r: (order[r[0]], r[1])):
            print(f'  {verdict:<13} {short_id(test_id):<70} '
                  f'{a:>7} -> {b:<7} {why[:200]}')
            if verdict in ('UNEXPECTED', 'WRONG-REFUSAL'):
                bad += 1
        for e in entries:
            if e['used']:
                continue
            # A listed test that passes in this run: the entry is stale.
            matched = [t for t in res if t == e['id']
                       or t.startswith(e['id'] + '.')]
            if not matched:
                print(f'  warning: {path}:{e["line"]}: {e["id"]} did not run')
            elif e['may_pass']:
                continue
            elif e['match']:
                print(f'  STALE         {e["id"]}: must fail with '
                      f'/{e["match"].pattern}/ but did not')
                bad += 1
            else:
                print(f'  warning: {path}:{e["line"]}: {e["id"]} no longer '
                      f'differs; remove the entry')
    for name, tests in DIED.items():
        for t in tests:
            print(f'\nCUSTODY SERVE DIED in run {name[:-6]} during {t} '
                  f'(restarted to finish the run; see the gateway log)')
            bad += 1
    if bad:
        print(f'\n{bad} unexpected difference(s)')
        return 1
    print('\nno unexpected differences')
    return 0


if __name__ == '__main__':
    sys.exit(main())
