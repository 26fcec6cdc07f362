#!/usr/bin/env python3
"""Idle RSS of the daemon: the same 1 000-node IPv6 fleet from a file with a
binary built without the `kubernetes` feature, with it, and from the API
stand-in (feature on). Root needed; reuses bench/kube.py's helpers.

    sudo python3 bench/kube-rss.py --with target/release/netconverge --without /path/to/no-feature/netconverge
"""
import argparse, importlib.util, os, tempfile, time

spec = importlib.util.spec_from_file_location("kb", os.path.join(os.path.dirname(__file__), "kube.py"))
kb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kb)


def rss(pid):
    # `ip netns exec` execs: the pid is the daemon's
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--with", dest="with_", required=True)
    ap.add_argument("--without", required=True)
    ap.add_argument("--nodes", type=int, default=1000)
    a = ap.parse_args()
    ns = kb.Ns()
    try:
        with tempfile.TemporaryDirectory() as d:
            srv = kb.api(ns, d, a.nodes)
            for label, binary, kube in (("file fleet, built without the feature", a.without, False),
                                        ("file fleet, built with the feature", a.with_, False),
                                        ("kubernetes source (list + watch)", a.with_, True)):
                ns.flush()
                p, _, _s = kb.start_daemon(ns, os.path.abspath(binary), kb.config(d, a.nodes, kube), d)
                time.sleep(5)
                print(f"{a.nodes} nodes, idle 5 s, {label}: VmRSS {rss(p.pid)/1024:.1f} MiB")
                kb.stop(p)
            srv.stdin.close()
            srv.wait()
    finally:
        ns.close()


if __name__ == "__main__":
    main()
