//! A node's whole overlay read back with iproute2 (`ip -j`, `bridge -j`),
//! whether it lives in a [`Netns`] or in the NetworkManager sandbox: the
//! devices, their peers' routes, neighbours and FDB entries, their address,
//! and the lease file. Nothing here calls the code under test but
//! `Mac::derive`, the documented MAC of a device.

use std::path::PathBuf;

use netconverge::model::Mac;
use serde_json::Value;

use super::nm::NmSandbox;
use super::{Netns, Stack};

/// The iproute2 JSON readers of wherever the overlay lives.
pub trait Kernel {
    fn ip_j(&self, args: &[&str]) -> Value;
    fn bridge_j(&self, args: &[&str]) -> Value;

    /// How many objects `ip -j <args>` lists.
    fn ip_count(&self, args: &[&str]) -> usize {
        self.ip_j(args).as_array().map_or(0, Vec::len)
    }
}

impl Kernel for Netns {
    fn ip_j(&self, args: &[&str]) -> Value {
        self.ip_json(args)
    }
    fn bridge_j(&self, args: &[&str]) -> Value {
        self.bridge_json(args)
    }
}

impl Kernel for NmSandbox {
    fn ip_j(&self, args: &[&str]) -> Value {
        self.ip_json(args)
    }
    fn bridge_j(&self, args: &[&str]) -> Value {
        self.bridge_json(args)
    }
}

/// Link `name` in an `ip -j link show` listing.
pub fn find_link<'a>(links: &'a Value, name: &str) -> Option<&'a Value> {
    links.as_array()?.iter().find(|l| l["ifname"] == name)
}

/// The full overlay a node's config declares: flannel's device of each
/// family of `stack` (`flannel.1`, `flannel-v6.1`) on `underlay`, each with
/// `peers` peers and one address, and a written lease file.
pub struct Overlay<'a> {
    pub node: &'a str,
    pub underlay: &'a str,
    pub stack: Stack,
    /// The underlay's IPv4 and IPv6 addresses: the devices' local VTEPs.
    pub local: (&'a str, &'a str),
    pub peers: usize,
    pub lease: PathBuf,
}

impl Overlay<'_> {
    /// `Err` names the first thing missing or wrong.
    pub fn check(&self, k: &impl Kernel) -> Result<(), String> {
        let links = k.ip_j(&["-d", "link", "show"]);
        let under =
            find_link(&links, self.underlay).ok_or(format!("underlay {} absent", self.underlay))?;
        let under_mtu = under["mtu"].as_u64().unwrap();
        let mut devs = vec![];
        if self.stack.v4() {
            devs.push(("flannel.1", "-4", 50, self.local.0));
        }
        if self.stack.v6() {
            devs.push(("flannel-v6.1", "-6", 70, self.local.1));
        }
        for (dev, fam, overhead, local) in devs {
            let l = find_link(&links, dev).ok_or(format!("{dev} absent"))?;
            let data = &l["linkinfo"]["info_data"];
            if l["mtu"].as_u64() != Some(under_mtu - overhead)
                || l["address"] != Mac::derive(self.node, dev).to_string()
                || data["link"] != self.underlay
                || (data["local"] != local && data["local6"] != local)
                || !l["flags"].as_array().unwrap().iter().any(|f| f == "UP")
            {
                return Err(format!("{dev} wrong: {l}"));
            }
            let n = k.ip_count(&[fam, "route", "show", "dev", dev, "proto", "199"]);
            if n != self.peers {
                return Err(format!("{dev}: {n} routes"));
            }
            let n = k.ip_count(&[fam, "neigh", "show", "dev", dev, "nud", "permanent"]);
            if n != self.peers {
                return Err(format!("{dev}: {n} permanent neighbours"));
            }
            let fdb = k.bridge_j(&["fdb", "show", "dev", dev]);
            let n = fdb.as_array().map_or(0, Vec::len);
            if n != self.peers {
                return Err(format!("{dev}: {n} fdb entries: {fdb}"));
            }
            let addrs = k.ip_j(&[fam, "addr", "show", "dev", dev, "scope", "global"]);
            let n = addrs
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
                // iproute2 prints the addresses its filter dropped as `{}`
                .filter(|i| i.get("local").is_some())
                .count();
            if n != 1 {
                return Err(format!("{dev}: {n} global addresses: {addrs}"));
            }
        }
        match std::fs::read_to_string(&self.lease) {
            Ok(s) if s.contains("FLANNEL_MTU=") => Ok(()),
            other => Err(format!("lease {}: {other:?}", self.lease.display())),
        }
    }
}
