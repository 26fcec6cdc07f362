#!/usr/bin/env python3
"""`[fleet] source = "kubernetes"` at scale, against the API stand-in
(tests/kube_api.py, a model of the API) in a throwaway network namespace.

  1. initial list → converged: `netconverge run` from start to READY=1 with
     N Nodes served by the stand-in, against the baseline measured in the
     same run: the same node's state from a `[fleet]` file (N
     [[fleet.node]] entries with their MACs) — so the ratio is the cost of
     the API (list, JSON, judging) over the file;
  2. one watch event → kernel: with the daemon running at N Nodes, one new
     Node is PUT into the stand-in; the time until `ip monitor route` shows
     its route (median of --events).

IPv6-only (underlays 2001:db8::/32, pods fd00::/48 as /64s), so 5 000
Nodes need no address outside the documentation ranges. Root needed.

    cargo build --release --bin netconverge
    sudo python3 bench/kube.py [--nodes 1000 5000] [--bin target/release/netconverge]
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
API = os.path.join(HERE, "..", "tests", "kube_api.py")
P = "flannel.alpha.coreos.com/"
PORT = 16443


def addr(i):
    return f"2001:db8:{(i >> 16) & 0xffff:x}:{i & 0xffff:x}::1"


def subnet(i):
    return f"fd00:0:0:{i:x}::/64"


def mac(i):
    return f"0a:58:00:{(i >> 16) & 0xff:02x}:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}"


def node(i):
    n = {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": f"node-{i:05}", "creationTimestamp": "2026-11-01T00:00:00Z",
                      "annotations": {}},
         "spec": {"podCIDR": subnet(i), "podCIDRs": [subnet(i)]},
         "status": {"addresses": [{"type": "InternalIP", "address": addr(i)}]}}
    if i != 1:
        n["metadata"]["annotations"] = {
            P + "kube-subnet-manager": "true", P + "backend-type": "vxlan",
            P + "backend-v6-data": json.dumps({"VNI": 1, "VtepMAC": mac(i)}, separators=(",", ":")),
            P + "public-ipv6": addr(i)}
    return n


def sh(*a, **kw):
    return subprocess.run(a, check=True, **kw)


class Ns:
    def __init__(self):
        self.name = f"ncbench-kube-{os.getpid()}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        self.ip("link", "set", "eth0", "up")
        self.ip("link", "set", "eth0p", "up")
        self.ip("addr", "add", f"{addr(1)}/64", "dev", "eth0", "nodad")

    def ip(self, *a):
        sh("ip", "-n", self.name, *a)

    def exec(self, *a, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *a], **kw)

    def flush(self):
        # start each run from an empty node
        subprocess.run(["ip", "-n", self.name, "link", "del", "flannel-v6.1"],
                       stderr=subprocess.DEVNULL)

    def close(self):
        sh("ip", "netns", "del", self.name)


def kubeconfig(d):
    p = os.path.join(d, "kc.yaml")
    open(p, "w").write(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: http://127.0.0.1:{PORT}\n"
        "contexts:\n- name: s\n  context:\n    cluster: s\n    user: u\ncurrent-context: s\nusers:\n- name: u\n  user: {}\n")
    return p


def config(d, n, kube):
    head = ['node_name = "node-00001"', '', '[fleet]', 'ipv6_network = "fd00::/48"']
    if kube:
        head += ['source = "kubernetes"', '', '[fleet.kubernetes]',
                 f'kubeconfig = "{kubeconfig(d)}"', 'publish = false']
    body = []
    if not kube:
        for i in range(1, n + 1):
            body += ['', '[[fleet.node]]', f'name = "node-{i:05}"',
                     f'ipv6_address = "{addr(i)}"', f'ipv6_subnet = "{subnet(i)}"']
            if i != 1:
                body.append(f'mac = "{mac(i)}"')
    tail = ['', '[lease]', f'path = "{d}/subnet.env"', f'state_dir = "{d}/state"']
    p = os.path.join(d, "kube.toml" if kube else "file.toml")
    open(p, "w").write("\n".join(head + body + tail) + "\n")
    return p


def start_daemon(ns, binary, cfg, d):
    sock_path = os.path.join(d, f"notify-{time.monotonic_ns()}.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, NETCONVERGE_STATE_DIR=f"{d}/state")
    t0 = time.perf_counter()
    p = ns.exec(binary, "-c", cfg, "run", env=env, stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(d, "daemon.log"), "a"))
    s.settimeout(300)
    while True:
        m = s.recv(4096).decode()
        if "READY=1" in m:
            return p, time.perf_counter() - t0, s


def stop(p):
    p.terminate()
    p.wait()


def api(ns, d, n):
    f = os.path.join(d, "nodes.json")
    json.dump([node(i) for i in range(1, n + 1)], open(f, "w"))
    p = ns.exec("python3", API, "--port", str(PORT), "--dir", d, "--nodes", f,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("listening")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "netconverge"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--events", type=int, default=5)
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    ns = Ns()
    try:
        for n in a.nodes:
            with tempfile.TemporaryDirectory() as d:
                srv = api(ns, d, n)
                file_t, kube_t = [], []
                for _ in range(a.reps):
                    for kube, out in ((False, file_t), (True, kube_t)):
                        ns.flush()
                        p, t, _s = start_daemon(ns, binary, config(d, n, kube), d)
                        out.append(t)
                        stop(p)
                fm, km = statistics.median(file_t), statistics.median(kube_t)
                print(f"{n} nodes: start → READY=1: file fleet {fm*1000:.0f} ms, "
                      f"kubernetes {km*1000:.0f} ms (×{km/fm:.2f}); reps {a.reps}")
                # one watch event → kernel
                ns.flush()
                p, _, _s = start_daemon(ns, binary, config(d, n, True), d)
                # the kernel's echo of the first converge keeps passes busy
                time.sleep(3)

                def until_route(i, act):
                    mon = ns.exec("ip", "-6", "monitor", "route", stdout=subprocess.PIPE, text=True)
                    time.sleep(0.3)
                    want = subnet(i).split("/")[0]
                    t0 = time.perf_counter()
                    act()
                    for line in mon.stdout:
                        if line.startswith(want) and not line.startswith("Deleted"):
                            dt = time.perf_counter() - t0
                            break
                    mon.terminate()
                    mon.wait()
                    time.sleep(1)
                    return dt

                def put(i):
                    srv.stdin.write(json.dumps({"op": "put", "node": node(i)}) + "\n")
                    srv.stdin.flush()
                    srv.stdout.readline()

                lat, drift = [], []
                for k in range(a.events):
                    lat.append(until_route(n + 1 + k, lambda: put(n + 1 + k)))
                    # baseline: the same daemon repairs a deleted peer route
                    drift.append(until_route(2 + k, lambda: ns.ip("-6", "route", "del", subnet(2 + k))))
                stop(p)
                srv.stdin.close()
                srv.wait()
                lm, dm = statistics.median(lat), statistics.median(drift)
                print(f"{n} nodes: one watch event (a new Node) → its route in the kernel: "
                      f"median {lm*1000:.1f} ms, max {max(lat)*1000:.1f} ms; baseline, a deleted "
                      f"peer route repaired: median {dm*1000:.1f} ms (×{lm/dm:.2f}); events {a.events}")
    finally:
        ns.close()


if __name__ == "__main__":
    sys.exit(main())
