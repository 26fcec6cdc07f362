#!/usr/bin/env python3
"""A stand-in for the Kubernetes API's Node endpoints — a MODEL of the API,
not an apiserver — for tests/kube.rs and bench/kube.py.

What it models (what netconverge's client uses, as kube-apiserver does it):
  GET   /api/v1/nodes                    NodeList with metadata.resourceVersion
                                         (`limit`/`continue` accepted, one page)
  GET   /api/v1/nodes?watch=true&resourceVersion=RV
                                         a chunked stream of {"type","object"}
                                         lines: every change after RV, then new
                                         ones as they happen, until
                                         timeoutSeconds; an RV older than the
                                         retained history gets the apiserver's
                                         410 as an ERROR *event* in a 200 stream
  GET   /api/v1/nodes/NAME
  PATCH /api/v1/nodes/NAME/status        application/strategic-merge-patch+json;
                                         merges metadata.annotations (null
                                         deletes), like the status subresource
What it does not model: authentication, field/label selectors, pagination
beyond one page, bookmarks, any other resource.

Driven by JSON lines on stdin, each answered with "ok" on stdout:
  {"op":"put","node":{...}}          create (ADDED) or replace (MODIFIED)
  {"op":"put_silent","node":{...}}   replace with NO event (a change only a
                                     relist can reveal)
  {"op":"delete","name":"N"}         DELETED
  {"op":"expire"}                    forget the event history and end every
                                     watch: a resumed watch gets 410
Logs, in --dir: requests.jsonl (method, path, query), patches.jsonl
(content type and body of each PATCH).
"""

import argparse
import copy
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class State:
    def __init__(self, nodes, rv):
        self.cond = threading.Condition()
        self.rv = rv
        self.nodes = {}
        self.events = []  # (rv, type, object)
        # a watch from an RV below this (minus one) has lost events: 410
        self.oldest = rv
        self.epoch = 0
        for n in nodes:
            self.rv += 1
            n = copy.deepcopy(n)
            n.setdefault("apiVersion", "v1")
            n.setdefault("kind", "Node")
            n["metadata"]["resourceVersion"] = str(self.rv)
            self.nodes[n["metadata"]["name"]] = n
        self.oldest = self.rv + 1

    def change(self, kind, node, silent=False):
        with self.cond:
            self.rv += 1
            node = copy.deepcopy(node)
            node.setdefault("apiVersion", "v1")
            node.setdefault("kind", "Node")
            node["metadata"]["resourceVersion"] = str(self.rv)
            name = node["metadata"]["name"]
            if kind == "DELETED":
                self.nodes.pop(name, None)
            else:
                if kind is None:
                    kind = "MODIFIED" if name in self.nodes else "ADDED"
                self.nodes[name] = node
            if not silent:
                self.events.append((self.rv, kind, node))
            self.cond.notify_all()
            return node

    def expire(self):
        with self.cond:
            self.events = []
            self.oldest = self.rv + 1
            self.epoch += 1
            self.cond.notify_all()


STATE = None
LOG_DIR = None
LOG_LOCK = threading.Lock()


def log(name, rec):
    with LOG_LOCK:
        with open(f"{LOG_DIR}/{name}", "a") as f:
            f.write(json.dumps(rec) + "\n")


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        log("requests.jsonl", {"method": "GET", "path": u.path, "query": q})
        parts = u.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "nodes"]:
            return self.reply(404, status(404, "NotFound", "not modelled"))
        if len(parts) == 4:
            with STATE.cond:
                n = STATE.nodes.get(parts[3])
            if n is None:
                return self.reply(404, status(404, "NotFound", f'nodes "{parts[3]}" not found'))
            return self.reply(200, n)
        if q.get("watch", ["false"])[0] in ("true", "1"):
            return self.watch(q)
        with STATE.cond:
            items = [STATE.nodes[k] for k in sorted(STATE.nodes)]
            rv = STATE.rv
        self.reply(
            200,
            {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def watch(self, q):
        rv = int(q.get("resourceVersion", ["0"])[0] or 0)
        timeout = int(q.get("timeoutSeconds", ["290"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        deadline = time.monotonic() + timeout
        try:
            with STATE.cond:
                gone = rv != 0 and rv < STATE.oldest - 1
                epoch = STATE.epoch
                sent = rv if rv != 0 else STATE.rv
            if gone:
                log("requests.jsonl", {"event": "410", "resourceVersion": rv})
                self.chunk(
                    {
                        "type": "ERROR",
                        "object": status(
                            410, "Expired", f"too old resource version: {rv} ({STATE.oldest})"
                        ),
                    }
                )
            else:
                while True:
                    with STATE.cond:
                        while (
                            not any(e[0] > sent for e in STATE.events)
                            and STATE.epoch == epoch
                            and time.monotonic() < deadline
                        ):
                            STATE.cond.wait(0.5)
                        evs = [e for e in STATE.events if e[0] > sent]
                        ended = STATE.epoch != epoch or time.monotonic() >= deadline
                    for ev_rv, kind, obj in evs:
                        self.chunk({"type": kind, "object": obj})
                        sent = ev_rv
                    if ended:
                        break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_PATCH(self):
        u = urlparse(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        log("requests.jsonl", {"method": "PATCH", "path": u.path})
        parts = u.path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["api", "v1", "nodes"] or parts[4] != "status":
            return self.reply(404, status(404, "NotFound", "not modelled"))
        try:
            body = json.loads(raw)
        except ValueError:
            return self.reply(400, status(400, "BadRequest", "not JSON"))
        log("patches.jsonl", {"content_type": ctype, "node": parts[3], "body": body})
        if ctype != "application/strategic-merge-patch+json":
            return self.reply(415, status(415, "UnsupportedMediaType", ctype))
        with STATE.cond:
            n = STATE.nodes.get(parts[3])
            if n is None:
                return self.reply(404, status(404, "NotFound", f'nodes "{parts[3]}" not found'))
            n = copy.deepcopy(n)
        ann = n["metadata"].setdefault("annotations", {})
        for k, v in (body.get("metadata", {}).get("annotations") or {}).items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        n = STATE.change("MODIFIED", n)
        self.reply(200, n)


def commands():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        c = json.loads(line)
        op = c["op"]
        if op == "put":
            STATE.change(None, c["node"])
        elif op == "put_silent":
            STATE.change(None, c["node"], silent=True)
        elif op == "delete":
            with STATE.cond:
                n = STATE.nodes.get(c["name"])
            if n is not None:
                STATE.change("DELETED", n)
        elif op == "expire":
            STATE.expire()
        print("ok", flush=True)
    # stdin closed: the test is gone
    import os

    os._exit(0)


def main():
    global STATE, LOG_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--nodes", help="JSON file: a list of Node objects")
    ap.add_argument("--rv", type=int, default=1000, help="first resourceVersion")
    a = ap.parse_args()
    LOG_DIR = a.dir
    nodes = json.load(open(a.nodes)) if a.nodes else []
    STATE = State(nodes, a.rv)
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    print(f"listening {a.port}", flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    commands()


if __name__ == "__main__":
    main()
