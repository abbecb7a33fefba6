"""Round trip of one MCP `query` tool call against `POST /v1/exec` for the
same statement, on one gateway, interleaved so both see the same machine
(called by `scripts/bench.sh mcp`).

    bench-mcp.py GATEWAY_URL TOKEN [CALLS]

Both paths keep their HTTP connection open; each call is one recorded
session. Prints the median and 90th percentile in milliseconds and the
ratio mcp/exec.
"""

import asyncio
import json
import statistics
import sys
import time

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

SQL = "select 1 as one"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def main():
    gateway, token = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    headers = {"Authorization": f"Bearer {token}"}
    exec_ms, mcp_ms = [], []
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        transport = streamable_http_client(f"{gateway}/mcp", http_client=http)
        async with Client(transport) as agent:
            for i in range(calls + 10):
                t0 = time.perf_counter()
                r = await http.post(f"{gateway}/v1/exec/pg", json={"input": SQL})
                t1 = time.perf_counter()
                res = await agent.call_tool("query", {"connection": "pg", "sql": SQL})
                t2 = time.perf_counter()
                if r.status_code != 200 or res.is_error:
                    sys.exit(f"bench-mcp: a call failed: exec {r.status_code} {r.text[:200]}; mcp {res.content}")
                if i >= 10:  # the first ten warm both paths up
                    exec_ms.append((t1 - t0) * 1000)
                    mcp_ms.append((t2 - t1) * 1000)
    e, m = statistics.median(exec_ms), statistics.median(mcp_ms)
    print(f"custody bench mcp: {calls} calls each of {SQL!r}, interleaved, one keep-alive connection per path")
    print(f"{'path':<22} {'median_ms':>10} {'p90_ms':>10}")
    print(f"{'POST /v1/exec':<22} {e:>10.2f} {pct(exec_ms, 0.9):>10.2f}")
    print(f"{'MCP tools/call query':<22} {m:>10.2f} {pct(mcp_ms, 0.9):>10.2f}")
    print(f"mcp/exec median ratio {m / e:.2f} (+{m - e:.2f} ms per call)")


asyncio.run(main())
