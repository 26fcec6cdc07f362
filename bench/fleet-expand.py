#!/usr/bin/env python3
"""Fleet expansion cost: `netconverge validate --node` on an N-node fleet
file vs. the same node's state written by hand ([[vxlan]] + [[address]] +
N-1 [[peer]] + [lease]) — the baseline, measured in the same run.

IPv6-only fleet (underlays 2001:db8::/32, pods fd00::/48 as /64s), so
10 000 nodes need no address outside the documentation ranges; no kernel
is touched (validate only).

    cargo build --release --bin netconverge
    python3 bench/fleet-expand.py [--reps 7] [--bin target/release/netconverge]
"""
import argparse, os, statistics, subprocess, tempfile, time

def addr(i):  # node i's underlay
    return f"2001:db8:{(i >> 16) & 0xffff:x}:{i & 0xffff:x}::1"

def subnet(i):
    return f"fd00:0:0:{i:x}::/64"

def fleet(n):
    out = ['[fleet]', 'ipv6_network = "fd00::/48"', '']
    for i in range(1, n + 1):
        out += ['[[fleet.node]]', f'name = "node-{i:05}"',
                f'ipv6_address = "{addr(i)}"', f'ipv6_subnet = "{subnet(i)}"', '']
    return "\n".join(out)

def by_hand(n, macs):
    out = ['node_name = "node-00001"', '',
           '[[vxlan]]', 'name = "flannel-v6.1"', 'vni = 1', 'underlay = "eth0"',
           'family = "ipv6"', f'local = "{addr(1)}"', '',
           '[[address]]', 'dev = "flannel-v6.1"', 'cidr = "fd00:0:0:1::/128"', '',
           '[lease]', 'ipv6_network = "fd00::/48"', f'ipv6_subnet = "{subnet(1)}"', '']
    for i in range(2, n + 1):
        out += ['[[peer]]', 'dev = "flannel-v6.1"', f'subnet = "{subnet(i)}"',
                f'vtep_ip = "{addr(i)}"', f'vtep_mac = "{macs[i]}"', '']
    return "\n".join(out)

def run(binary, path, extra):
    t = time.perf_counter()
    r = subprocess.run([binary, "-c", path, "validate", *extra],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{path}: exit {r.returncode}: {r.stderr.decode()[:2000]}")
    return dt

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--bin", default="target/release/netconverge")
    ap.add_argument("--sizes", default="1000,5000,10000")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in [int(s) for s in a.sizes.split(",")]:
            fp = os.path.join(d, f"fleet-{n}.toml")
            with open(fp, "w") as f:
                f.write(fleet(n))
            # the baseline carries the same number of peers; its MACs are
            # arbitrary (validation cost does not depend on their value)
            macs = {i: "02:%02x:%02x:%02x:00:06" % ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
                    for i in range(2, n + 1)}
            hp = os.path.join(d, f"hand-{n}.toml")
            with open(hp, "w") as f:
                f.write(by_hand(n, macs))
            fl, hd = [], []
            for _ in range(a.reps):  # interleaved: both sides see the same noise
                fl.append(run(a.bin, fp, ["--node", "node-00001"]))
                hd.append(run(a.bin, hp, []))
            fm, hm = statistics.median(fl), statistics.median(hd)
            rows.append((n, fm, hm, os.path.getsize(fp), os.path.getsize(hp)))
    print("| nodes | fleet file | validate --node (median) | same state by hand | by hand (median) | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, fm, hm, fs, hs in rows:
        print(f"| {n} | {fs/1e6:.2f} MB | {fm*1e3:.1f} ms | {hs/1e6:.2f} MB | {hm*1e3:.1f} ms | {fm/hm:.2f}× |")
    if len(rows) > 1:
        (n0, f0, *_), (n1, f1, *_) = rows[0], rows[-1]
        print(f"\nscaling {n0} → {n1} nodes: ×{n1/n0:.0f} nodes, ×{f1/f0:.1f} time")

if __name__ == "__main__":
    main()
