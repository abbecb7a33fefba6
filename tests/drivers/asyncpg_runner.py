#!/usr/bin/env python3
"""Runs asyncpg's own unittest suite and writes one JSON line per test.

Usage: asyncpg_runner.py --tests DIR --out FILE.jsonl [--exclude FILE]
                         [--timeout SECS] [--resume] [MODULE ...]

DIR holds asyncpg's `tests/` package, extracted from the source distribution
outside any source tree, so `import asyncpg` is the installed wheel (which
ships asyncpg/_testbase). The cluster comes from the environment: with PGHOST
set, asyncpg's _testbase uses the running server (RunningCluster) and asyncpg
reads PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE itself.

Every finished test appends {"id", "outcome", "seconds", "message"} to FILE
(outcome: pass, fail, error, skip, xfail, xpass, timeout). With --health, a
test that does not pass is followed by a check of the gateway; if it is gone,
{"event": "gateway-died", "during": ID} is appended and the runner exits 4. A test still
running after --timeout + 30 s is a hang: the runner dumps every thread's
stack (faulthandler), records "timeout" and exits 3; with --resume the next
run skips what FILE already holds, so the caller can loop on exit code 3.
Async tests also get asyncpg's own per-test timeout (TestCaseMeta.TEST_TIMEOUT).
"""

import argparse
import faulthandler
import json
import os
import sys
import threading
import time
import traceback
import unittest


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument('--tests', required=True,
                   help="directory that contains asyncpg's tests/ package")
    p.add_argument('--out', required=True)
    p.add_argument('--exclude', help='file of test id prefixes not to run')
    p.add_argument('--timeout', type=float, default=60.0)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--health',
                   help='URL answering 200 while the gateway runs; checked '
                        'after each test that does not pass (exit 4 if down)')
    p.add_argument('modules', nargs='*',
                   help='tests.test_x modules (default: all)')
    return p.parse_args()


def read_prefixes(path):
    out = []
    if not path:
        return out
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                out.append(line.split('|', 1)[0].strip())
    return out


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def short(text, limit=600):
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit] + '...'


def last_exception_line(err):
    exc_type, exc, _tb = err
    lines = traceback.format_exception_only(exc_type, exc)
    return short(''.join(lines))


class JsonResult(unittest.TestResult):
    """Appends each outcome to the output file as soon as it is known."""

    def __init__(self, out, watchdog, timeout, health):
        super().__init__()
        self.out = out
        self.watchdog = watchdog
        self.timeout = timeout
        self.health = health
        self.gateway_died = False
        self.started = {}
        self.seen = set()
        self.class_errors = {}
        self.subfails = {}
        self.last = None

    def write(self, test_id, outcome, message='', seconds=0.0):
        if test_id in self.seen:
            return
        self.seen.add(test_id)
        rec = {'id': test_id, 'outcome': outcome,
               'seconds': round(seconds, 3), 'message': message}
        self.last = rec
        self.out.write(json.dumps(rec) + '\n')
        self.out.flush()
        mark = {'pass': '.', 'skip': 's', 'xfail': 'x'}.get(outcome, 'F')
        sys.stderr.write(mark)
        sys.stderr.flush()

    def elapsed(self, test):
        return time.monotonic() - self.started.get(test.id(), time.monotonic())

    def startTest(self, test):
        super().startTest(test)
        self.started[test.id()] = time.monotonic()
        self.watchdog.arm(test.id())

    def stopTest(self, test):
        self.watchdog.disarm()
        subs = self.subfails.pop(test.id(), None)
        if subs and test.id() not in self.seen:
            outcome = 'error' if any(k == 'error' for k, _ in subs) else 'fail'
            msg = f'{len(subs)} subtest(s) failed: ' + ' || '.join(
                m for _, m in subs)
            self.write(test.id(), outcome, short(msg, 4000), self.elapsed(test))
        super().stopTest(test)
        rec = self.last
        if self.health and rec and rec['id'] == test.id() \
                and rec['outcome'] not in ('pass', 'skip') \
                and not healthy(self.health):
            # The gateway process is gone: every later test would fail the
            # same way. Say so and stop; the caller restarts it and resumes.
            self.out.write(json.dumps({'event': 'gateway-died',
                                       'during': test.id()}) + '\n')
            self.out.flush()
            sys.stderr.write(f'\ncustody serve died during {test.id()}\n')
            self.gateway_died = True
            self.stop()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.write(test.id(), 'pass', '', self.elapsed(test))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        msg = last_exception_line(err)
        outcome = 'fail'
        if 'test timed out after' in msg:
            # asyncpg's wrapper turns any asyncio.TimeoutError escaping the
            # test into this message, also one the test's own short timeout
            # (pool.acquire(timeout=0.1), ...) raised long before ours.
            if self.elapsed(test) >= self.timeout * 0.95:
                outcome = 'timeout'
            else:
                msg = (f'asyncio.TimeoutError raised inside the test after '
                       f'{self.elapsed(test):.2f}s (a timeout of its own, '
                       f'not the per-test limit)')
        self.write(test.id(), outcome, msg, self.elapsed(test))

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.suite._ErrorHolder):
            # setUpClass/tearDownClass/module fixtures: remembered and given to
            # each test of that class that has no outcome of its own.
            self.class_errors[test.description] = last_exception_line(err)
            return
        self.write(test.id(), 'error', last_exception_line(err),
                   self.elapsed(test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.write(test.id(), 'skip', short(str(reason)), self.elapsed(test))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.write(test.id(), 'xfail', last_exception_line(err),
                   self.elapsed(test))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.write(test.id(), 'xpass', '', self.elapsed(test))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            # Every failing subtest is kept; the test's record (written when
            # it stops) lists them, an error outranking a failure.
            kind = 'fail' if issubclass(err[0], test.failureException) \
                else 'error'
            self.subfails.setdefault(test.id(), []).append(
                (kind, f'{subtest._subDescription()}: '
                       + last_exception_line(err)))


def healthy(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except Exception:
        return False


class Watchdog:
    """Ends the process when one test runs far past its timeout."""

    def __init__(self, limit, out):
        self.limit = limit
        self.out = out
        self.lock = threading.Lock()
        self.current = None
        self.since = 0.0
        threading.Thread(target=self.run, daemon=True).start()

    def arm(self, test_id):
        with self.lock:
            self.current, self.since = test_id, time.monotonic()

    def disarm(self):
        with self.lock:
            self.current = None

    def run(self):
        while True:
            time.sleep(1)
            with self.lock:
                cur, since = self.current, self.since
            if cur and time.monotonic() - since > self.limit:
                sys.stderr.write(f'\n{cur} still running after '
                                 f'{self.limit:.0f}s; stacks:\n')
                faulthandler.dump_traceback(all_threads=True)
                rec = {'id': cur, 'outcome': 'timeout',
                       'seconds': round(time.monotonic() - since, 3),
                       'message': f'hung: no result after {self.limit:.0f}s'}
                self.out.write(json.dumps(rec) + '\n')
                self.out.flush()
                os._exit(3)


def main():
    args = parse_args()
    sys.path.insert(0, os.path.abspath(args.tests))
    os.chdir(args.tests)

    from asyncpg import _testbase as tb
    # asyncpg's own per-test timeout for coroutine tests (None upstream).
    tb.TestCaseMeta.TEST_TIMEOUT = args.timeout

    loader = unittest.TestLoader()
    if args.modules:
        suite = loader.loadTestsFromNames(args.modules)
    else:
        suite = loader.discover(os.path.join(args.tests, 'tests'),
                                pattern='test_*.py',
                                top_level_dir=args.tests)

    excluded = read_prefixes(args.exclude)
    done = set()
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            done = {json.loads(line).get('id') for line in f if line.strip()}

    def keep(test_id):
        if test_id in done:
            return False
        return not any(test_id == p or test_id.startswith(p + '.')
                       for p in excluded)

    tests = [t for t in iter_tests(suite) if keep(t.id())]
    # Loader failures (an import error) are tests too: they must show up.
    selected = unittest.TestSuite(tests)

    with open(args.out, 'a') as out:
        watchdog = Watchdog(args.timeout + 30, out)
        result = JsonResult(out, watchdog, args.timeout, args.health)
        selected.run(result)
        if result.gateway_died:
            sys.stderr.write('\n')
            return 4
        # Tests whose class (or module) setup failed never started.
        for t in tests:
            if t.id() in result.seen:
                continue
            cls = type(t)
            name = f'({cls.__module__}.{cls.__qualname__})'
            reason = next((msg for desc, msg in result.class_errors.items()
                           if name in desc or cls.__module__ in desc),
                          'not run')
            result.write(t.id(), 'error', 'class setup: ' + reason)
        for desc, msg in result.class_errors.items():
            if 'tearDown' in desc:
                sys.stderr.write(f'\n{desc}: {msg}\n')
    sys.stderr.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
