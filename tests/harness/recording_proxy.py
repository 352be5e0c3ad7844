"""Recording and fault-injecting HTTP proxy in front of moto (test-only).

usage: recording_proxy.py LISTEN_PORT UPSTREAM_PORT LOG_FILE FAULT_FILE [CANARY_FILE]

Every request whose form body has Action=AssumeRole is appended to LOG_FILE as one JSON line
with the decoded form parameters, so tests can assert exactly what reached "STS". If FAULT_FILE
exists, it holds {"status": 503, "code": "ServiceUnavailable", "count": N, "delay": S}: the next
N AssumeRole requests get that error (or, with "delay", a response after S seconds) instead of
being forwarded. With CANARY_FILE, every SecretAccessKey and SessionToken in an AssumeRole
answer is replaced by a unique canary value, appended to CANARY_FILE (one per line), so a test
can search everything else for them. Binds 127.0.0.1 only.
"""
import http.client
import json
import re
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN, UPSTREAM, LOG, FAULTS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
CANARIES = sys.argv[5] if len(sys.argv) > 5 else None


def canary(data):
    """Swap the secrets in an AssumeRole response for fresh canaries and record them."""
    text = data.decode()
    found = []

    def swap(m):
        value = f"CANARY{m.group(1).upper()}{secrets.token_hex(12)}"
        found.append(value)
        return f"<{m.group(1)}>{value}</{m.group(1)}>"

    text = re.sub(r"<(SecretAccessKey|SessionToken)>[^<]*</(?:SecretAccessKey|SessionToken)>", swap, text)
    with lock, open(CANARIES, "a") as f:
        f.write("".join(v + "\n" for v in found))
    return text.encode()
lock = threading.Lock()


def take_fault():
    with lock:
        try:
            with open(FAULTS) as f:
                fault = json.load(f)
        except (FileNotFoundError, ValueError):
            return None
        if fault.get("count", 0) <= 0:
            return None
        fault["count"] -= 1
        with open(FAULTS, "w") as f:
            json.dump(fault, f)
        return fault


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.forward(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        if form.get("Action") == ["AssumeRole"]:
            with lock, open(LOG, "a") as f:
                f.write(json.dumps({k: v if len(v) > 1 else v[0] for k, v in form.items()}) + "\n")
            fault = take_fault()
            if fault:
                if fault.get("delay"):
                    time.sleep(fault["delay"])
                else:
                    code = fault.get("code", "ServiceUnavailable")
                    err = (
                        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                        f"<Type>Sender</Type><Code>{code}</Code><Message>{code} (injected)</Message>"
                        "</Error><RequestId>injected</RequestId></ErrorResponse>"
                    ).encode()
                    self.send_response(fault.get("status", 503))
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
        self.forward(body, assume_role=form.get("Action") == ["AssumeRole"])

    def forward(self, body, assume_role=False):
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if assume_role and CANARIES and resp.status == 200:
            data = canary(data)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", LISTEN), Handler).serve_forever()
