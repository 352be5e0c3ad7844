"""A real MCP client (the official Python SDK, `mcp` pinned in tests/requirements.txt) that
drives `mandate mcp` over stdio for tests/mcp.rs and tests/canary.rs.

Usage: mcp_client.py STEPS.json STDERR_FILE -- COMMAND [ARGS...]

STEPS.json is a list of steps, run in order in one MCP session:
  {"call": TOOL, "args": {...}, "progress": true}   call a tool (with a progress token if asked)
  {"run": [ARGV...]}                                 run a command (an approver's CLI, say)
In any string of a step, "$pending" stands for the request id of the last pending answer and
"$first_pending" for that of the first.

Prints one JSON document on stdout: the server's name, its tools (name, input schema, whether
the schema is a valid JSON Schema, and whether it rejects an object missing a required
argument), and for each step its arguments as sent and the result (isError, the text content,
the structured content, the progress notifications received), or the command's exit code and
output.
"""

import asyncio
import json
import sys

import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def substitute(value, pending):
    if isinstance(value, str):
        first, last = (pending[0], pending[-1]) if pending else ("", "")
        return value.replace("$first_pending", first).replace("$pending", last)
    if isinstance(value, list):
        return [substitute(v, pending) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, pending) for k, v in value.items()}
    return value


def schema_report(tool):
    schema = tool.input_schema
    cls = jsonschema.validators.validator_for(schema)
    report = {"name": tool.name, "description": tool.description, "input_schema": schema}
    try:
        cls.check_schema(schema)
        report["schema_valid"] = True
    except jsonschema.SchemaError as e:
        report["schema_valid"] = False
        report["schema_error"] = str(e)
        return report
    required = schema.get("required", [])
    if required:
        # An object without its first required argument must not validate.
        report["rejects_missing_required"] = not cls(schema).is_valid({})
    return report


async def main():
    steps_file, errlog_file = sys.argv[1], sys.argv[2]
    command = sys.argv[sys.argv.index("--") + 1 :]
    with open(steps_file, encoding="utf-8") as f:
        steps = json.load(f)
    params = StdioServerParameters(command=command[0], args=command[1:], env={})
    out = {"steps": []}
    with open(errlog_file, "w", encoding="utf-8") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                out["server"] = init.server_info.name
                out["protocol_version"] = str(init.protocol_version)
                listed = await session.list_tools()
                tools = {t.name: t for t in listed.tools}
                out["tools"] = [schema_report(t) for t in listed.tools]
                pending = []
                for step in steps:
                    step = substitute(step, pending)
                    if "run" in step:
                        proc = await asyncio.create_subprocess_exec(
                            *step["run"],
                            stdout=asyncio.subprocess.PIPE,
                            stderr=asyncio.subprocess.PIPE,
                        )
                        o, e = await proc.communicate()
                        out["steps"].append(
                            {
                                "run": step["run"],
                                "code": proc.returncode,
                                "stdout": o.decode(),
                                "stderr": e.decode(),
                            }
                        )
                        continue
                    name, args = step["call"], step.get("args", {})
                    tool = tools[name]
                    cls = jsonschema.validators.validator_for(tool.input_schema)
                    progress = []

                    async def on_progress(p, total, message, progress=progress):
                        progress.append({"progress": p, "total": total, "message": message})

                    result = await session.call_tool(
                        name,
                        args,
                        read_timeout_seconds=400,
                        progress_callback=on_progress if step.get("progress") else None,
                    )
                    text = "".join(c.text for c in result.content if c.type == "text")
                    structured = result.structured_content
                    if structured and structured.get("status") == "pending":
                        pending.append(structured.get("request_id"))
                    out["steps"].append(
                        {
                            "call": name,
                            "args_valid": cls(tool.input_schema).is_valid(args),
                            "is_error": bool(result.is_error),
                            "text": text,
                            "structured": structured,
                            "progress": progress,
                        }
                    )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
