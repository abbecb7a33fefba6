"""An agent as tests/mcp.rs needs one: the official MCP Python SDK (`mcp` on
PyPI) connecting to Custody, then doing one thing and printing it as JSON.

    agent.py http URL [--mode auto|legacy] [--name N] tools
    agent.py http URL call TOOL '{"arg": ...}'
    agent.py stdio 'custody mcp ...' call TOOL '{...}'

The bearer token comes from MCP_TOKEN and a delegation from MCP_DELEGATION,
as an agent's configuration would put them in headers.
"""

import argparse
import asyncio
import json
import os
import shlex
import sys

import httpx2

from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import Implementation


def headers():
    h = {}
    if os.environ.get("MCP_TOKEN"):
        h["Authorization"] = "Bearer " + os.environ["MCP_TOKEN"]
    if os.environ.get("MCP_DELEGATION"):
        h["X-Custody-Delegation"] = os.environ["MCP_DELEGATION"]
    return h


def result_json(r):
    text = "\n".join(getattr(c, "text", "") for c in r.content)
    return {"is_error": bool(r.is_error), "structured": r.structured_content, "text": text}


async def act(client, args):
    if args.action == "tools":
        tools = await client.list_tools()
        return {"tools": [{"name": t.name, "schema": t.input_schema} for t in tools.tools]}
    r = await client.call_tool(args.tool, json.loads(args.arguments))
    return result_json(r)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("transport", choices=["http", "stdio"])
    p.add_argument("target")
    p.add_argument("--mode", default="auto")
    p.add_argument("--name", default="custody-test-agent")
    # A new TCP connection per request, so a round-robin balancer spreads them.
    p.add_argument("--no-keepalive", action="store_true")
    p.add_argument("action", choices=["tools", "call"])
    p.add_argument("tool", nargs="?")
    p.add_argument("arguments", nargs="?", default="{}")
    args = p.parse_args()
    info = Implementation(name=args.name, version="1.2.3")
    if args.transport == "http":
        http = create_mcp_http_client(headers=headers())
        if args.no_keepalive:
            http = httpx2.AsyncClient(
                headers=headers(),
                timeout=httpx2.Timeout(30, read=300),
                limits=httpx2.Limits(max_keepalive_connections=0),
            )
        async with http:
            server = streamable_http_client(args.target, http_client=http)
            async with Client(server, client_info=info, mode=args.mode) as client:
                out = await act(client, args)
    else:
        cmd = shlex.split(args.target)
        params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
        async with Client(params, client_info=info, mode=args.mode) as client:
            out = await act(client, args)
    json.dump(out, sys.stdout)


def leaves(e):
    if isinstance(e, BaseExceptionGroup):
        return [x for sub in e.exceptions for x in leaves(sub)]
    return [f"{type(e).__name__}: {e}"]


try:
    asyncio.run(main())
except BaseException as e:  # the test reads why the SDK gave up
    json.dump({"error": "; ".join(leaves(e))}, sys.stdout)
    sys.exit(1)
