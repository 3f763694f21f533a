#!/usr/bin/env python3
"""A recording, fault-injecting HTTP proxy in front of the test SCIM server.

    scim-proxy.py --upstream http://127.0.0.1:PORT --log FILE [--port N] [--faults FILE]

Every request is forwarded as is (method, path, headers, body) and recorded as one JSON line in
the log: {"t": monotonic seconds, "method", "path", "body" (parsed JSON or null), "status"}.
Also recorded: "if_match" (the If-Match header). With "no_patch": true in the faults file the
proxy plays a service without PATCH: ServiceProviderConfig says patch.supported = false and a
PATCH is answered 501.
The faults file (JSON, re-read on every request) may say:
    {"status": 429, "retry_after": 2, "count": 1, "methods": ["PATCH"]}
meaning: answer the next `count` requests whose method is in `methods` with that status (and a
Retry-After header when retry_after is set) instead of forwarding them. The count left is written
back to the file. Prints "PORT=<n>" on stdout once it listens (a port below 32768).
"""
import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--faults")
    ap.add_argument("--watch-pid", type=int)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    up = urllib.parse.urlsplit(a.upstream)

    def spec_now():
        if not a.faults or not os.path.exists(a.faults):
            return {}
        with LOCK:
            try:
                with open(a.faults) as f:
                    return json.load(f)
            except ValueError:
                return {}

    def fault(method):
        if not a.faults or not os.path.exists(a.faults):
            return None
        with LOCK:
            try:
                with open(a.faults) as f:
                    spec = json.load(f)
            except ValueError:
                return None
            if spec.get("count", 0) <= 0 or method not in spec.get("methods", [method]):
                return None
            spec["count"] -= 1
            with open(a.faults, "w") as f:
                json.dump(spec, f)
            return spec

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_any(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            rec = {"t": time.monotonic(), "method": self.command, "path": self.path,
                   "if_match": self.headers.get("If-Match")}
            no_patch = spec_now().get("no_patch", False)
            if no_patch and self.command == "PATCH":
                self.send_response(501)
                self.send_header("Content-Length", "0")
                self.end_headers()
                rec["status"] = 501
                rec["injected"] = True
                with LOCK:
                    with open(a.log, "a") as lf:
                        lf.write(json.dumps(rec) + "\n")
                return
            try:
                rec["body"] = json.loads(body) if body else None
            except ValueError:
                rec["body"] = body.decode("utf-8", "replace")
            f = fault(self.command)
            if f is not None and f.get("forward"):
                # The server applies the request, but its answer is lost.
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length")}
                try:
                    c.request(self.command, self.path, body=body or None, headers=headers)
                    c.getresponse().read()
                finally:
                    c.close()
            if f is not None:
                status = f.get("status", 503)
                data = json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                                   "status": str(status), "detail": "injected by scim-proxy"}).encode()
                self.send_response(status)
                if f.get("retry_after") is not None:
                    self.send_header("Retry-After", str(f["retry_after"]))
                self.send_header("Content-Type", "application/scim+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                rec["status"] = status
                rec["injected"] = True
            else:
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length")}
                try:
                    c.request(self.command, self.path, body=body or None, headers=headers)
                    r = c.getresponse()
                    data = r.read()
                    if no_patch and self.path.endswith("/ServiceProviderConfig") and r.status == 200:
                        spc = json.loads(data)
                        spc["patch"] = {"supported": False}
                        data = json.dumps(spc).encode()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("connection", "content-length", "transfer-encoding", "server", "date"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    rec["status"] = r.status
                except OSError as e:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    rec["status"] = 502
                    rec["error"] = str(e)
                finally:
                    c.close()
            with LOCK:
                with open(a.log, "a") as lf:
                    lf.write(json.dumps(rec) + "\n")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    srv = None
    if a.port:
        for _ in range(100):
            try:
                srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
                break
            except OSError:
                time.sleep(0.1)
    else:
        start = 20000 + (os.getpid() % 600) * 20
        for p in list(range(start, 32000)) + list(range(20000, start)):
            try:
                srv = ThreadingHTTPServer(("127.0.0.1", p), H)
                break
            except OSError:
                continue
    if srv is None:
        print("scim-proxy: no port", file=sys.stderr)
        sys.exit(1)
    srv.daemon_threads = True
    if a.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    if a.watch_pid:
        def watch():
            while True:
                try:
                    os.kill(a.watch_pid, 0)
                except OSError:
                    os._exit(0)
                time.sleep(0.5)
        threading.Thread(target=watch, daemon=True).start()
    print(f"PORT={srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
