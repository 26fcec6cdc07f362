//! `[cni]`: reading the table, checking it, and mapping it to [`CniSpec`].
//!
//! Invariant: a `[cni]` that validates always has at least one address
//! family (its own, else `[lease]`'s, which the fleet fills), a network
//! name and bridge name the plugins accept, and, for `plugin = "flannel"`,
//! a `[lease]` that the flannel CNI plugin can read. A family written both
//! here and in `[lease]` must agree: one node has one pod subnet.

use std::path::PathBuf;

use toml_span::Span;

use super::Diags;
use super::schema::{Field, Keys, Raw, RawFamily, Section, Sp, family_keys, ifname};
use crate::model::{CniPlugin, CniSpec, Family, LeaseFamily};

pub(crate) const CNI_KEYS: Keys = &[
    ("path", "path = \"/etc/cni/net.d/10-netconverge.conflist\""),
    ("plugin", "plugin = \"bridge\""),
    ("name", "name = \"cbr0\""),
    ("bridge", "bridge = \"cni0\""),
    ("mtu", "mtu = 1450"),
    ("hairpin", "hairpin = true"),
    ("ip_masq", "ip_masq = false"),
    ("portmap", "portmap = true"),
    ("bandwidth", "bandwidth = false"),
    ("network", "network = \"198.18.0.0/16\""),
    ("subnet", "subnet = \"198.18.1.0/24\""),
    ("ipv6_network", "ipv6_network = \"fd00:42::/56\""),
    ("ipv6_subnet", "ipv6_subnet = \"fd00:42:0:1::/64\""),
];

/// Where containerd reads CNI configs when k3s runs without flannel; the
/// name sorts before k3s's `10-flannel.conflist` and most CNIs' `10-*`.
pub(crate) const DEFAULT_PATH: &str = "/etc/cni/net.d/10-netconverge.conflist";
/// k3s's network name: host-local's allocations in /var/lib/cni/networks/cbr0
/// stay valid across a switch from k3s's flannel conflist.
pub(crate) const DEFAULT_NAME: &str = "cbr0";
pub(crate) const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug)]
pub(crate) struct RawCni {
    pub(crate) header: Span,
    pub(crate) path: Option<Sp<PathBuf>>,
    pub(crate) plugin: Option<Sp<CniPlugin>>,
    pub(crate) name: Option<Sp<String>>,
    pub(crate) bridge: Option<Sp<String>>,
    pub(crate) mtu: Field<u32>,
    pub(crate) hairpin: Option<Sp<bool>>,
    pub(crate) ip_masq: Option<Sp<bool>>,
    pub(crate) portmap: Option<Sp<bool>>,
    pub(crate) bandwidth: Option<Sp<bool>>,
    pub(crate) v4: RawFamily,
    pub(crate) v6: RawFamily,
}

impl RawCni {
    fn family(&self, f: Family) -> &RawFamily {
        match f {
            Family::Ipv4 => &self.v4,
            Family::Ipv6 => &self.v6,
        }
    }
}

/// libcni's network name rule (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
fn net_name(s: &str) -> Result<String, super::schema::Bad> {
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(super::schema::Bad {
            message: format!("`name` \"{s}\" is not a valid CNI network name"),
            help: "start with a letter or digit, then letters, digits, `_`, `.`, `-`; e.g. \"cbr0\" (k3s's)".to_string(),
        })
    }
}

pub(crate) fn read(mut s: Section<'_>, d: &mut Diags<'_>) -> RawCni {
    let h = s.header;
    let path = s
        .parsed(d, "path", super::schema::file_path)
        .or_default(PathBuf::from(DEFAULT_PATH), h);
    let plugin = s
        .choice(
            d,
            "plugin",
            &[
                ("bridge", CniPlugin::Bridge),
                ("flannel", CniPlugin::Flannel),
            ],
        )
        .or_default(CniPlugin::Bridge, h);
    let name = s
        .parsed(d, "name", net_name)
        .or_default(DEFAULT_NAME.to_string(), h);
    let bridge = s
        .parsed(d, "bridge", ifname)
        .or_default(DEFAULT_BRIDGE.to_string(), h);
    let mtu = s.int(d, "mtu", 68, 65_535);
    let hairpin = s.bool(d, "hairpin").or_default(true, h);
    let ip_masq = s.bool(d, "ip_masq").or_default(false, h);
    let portmap = s.bool(d, "portmap").or_default(true, h);
    let bandwidth = s.bool(d, "bandwidth").or_default(false, h);
    let (v4, v6) = super::schema::read_families(&mut s, d);
    s.finish(d);
    RawCni {
        header: h,
        path,
        plugin,
        name,
        bridge,
        mtu,
        hairpin,
        ip_masq,
        portmap,
        bandwidth,
        v4,
        v6,
    }
}

/// One family as the conflist gets it: [cni]'s own keys, else [lease]'s.
fn family(raw: &Raw, c: &RawCni, f: Family) -> Option<LeaseFamily> {
    let own = c.family(f);
    let lease = raw.lease.as_ref().map(|l| l.family(f));
    let pick = |mine: &Field<ipnet::IpNet>, theirs: Option<&Field<ipnet::IpNet>>| {
        mine.given()
            .or_else(|| theirs.and_then(Field::given))
            .map(|s| s.v)
    };
    Some(LeaseFamily {
        network: pick(&own.network, lease.map(|l| &l.network))?,
        subnet: pick(&own.subnet, lease.map(|l| &l.subnet))?,
    })
}

pub(crate) fn check(raw: &Raw, d: &mut Diags<'_>) {
    let Some(c) = &raw.cni else { return };
    for f in [Family::Ipv4, Family::Ipv6] {
        let (nk, sk) = family_keys(f);
        let own = c.family(f);
        super::validate::family_pair(d, "[cni]", own, nk, sk);
        let Some(l) = raw.lease.as_ref().map(|l| l.family(f)) else {
            continue;
        };
        for (key, mine, theirs) in [(nk, &own.network, &l.network), (sk, &own.subnet, &l.subnet)] {
            if let (Some(a), Some(b)) = (mine.given(), theirs.given()) {
                if a.v.trunc() != b.v.trunc() {
                    d.error(
                        a.span,
                        format!("[cni] `{key}` {} differs from [lease] `{key}` {}", a.v, b.v),
                        format!(
                            "remove `{key}` from [cni] (it is taken from [lease] and the fleet), or make both {}",
                            b.v
                        ),
                    );
                }
            }
        }
    }
    let plugin = c.plugin.as_ref().map(|p| p.v);
    let broken = [&c.v4, &c.v6]
        .iter()
        .any(|f| matches!(f.network, Field::Invalid) || matches!(f.subnet, Field::Invalid));
    // A fleet gives the families once it expands; its own errors say why not.
    if plugin == Some(CniPlugin::Bridge)
        && !broken
        && raw.fleet.is_none()
        && family(raw, c, Family::Ipv4).is_none()
        && family(raw, c, Family::Ipv6).is_none()
    {
        d.error(
            c.header,
            "[cni] has no pod subnet: neither [cni] nor [lease] (nor [fleet]) gives `network` and `subnet`",
            "set `network` and `subnet` (and/or `ipv6_network` and `ipv6_subnet`) in [cni] or [lease], or use a [fleet]",
        );
    }
    if let Some(p) = &c.plugin {
        if p.v == CniPlugin::Flannel && raw.lease.is_none() {
            d.error(
                p.span,
                "[cni] plugin = \"flannel\" needs a [lease]: the flannel CNI plugin reads subnet.env",
                "add a [lease] (netconverge then writes /run/flannel/subnet.env), or use plugin = \"bridge\"",
            );
        }
    }
}

/// `None` when something was invalid (already reported).
pub(crate) fn build(raw: &Raw) -> Option<Option<CniSpec>> {
    let Some(c) = &raw.cni else {
        return Some(None);
    };
    Some(Some(CniSpec {
        path: c.path.as_ref()?.v.clone(),
        plugin: c.plugin.as_ref()?.v,
        name: c.name.as_ref()?.v.clone(),
        bridge: c.bridge.as_ref()?.v.clone(),
        mtu: c.mtu.value().ok()?,
        hairpin: c.hairpin.as_ref()?.v,
        ip_masq: c.ip_masq.as_ref()?.v,
        portmap: c.portmap.as_ref()?.v,
        bandwidth: c.bandwidth.as_ref()?.v,
        ipv4: family(raw, c, Family::Ipv4),
        ipv6: family(raw, c, Family::Ipv6),
        subnet_file: raw
            .lease
            .as_ref()
            .and_then(|l| l.path.as_ref())
            .map(|p| p.v.clone()),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{NodeSelect, parse, parse_as};
    use crate::model::CniPlugin;

    fn errs(src: &str) -> String {
        match parse(src, "test.toml") {
            Ok(d) => panic!("expected errors, got {d:#?}"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str = "[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"eth0\"\n";

    #[test]
    fn defaults_and_families_from_lease() {
        let src = format!(
            "{BASE}[lease]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n\n[cni]\n"
        );
        let d = parse(&src, "t.toml").unwrap();
        let c = d.cni.unwrap();
        assert_eq!(
            c.path.to_str(),
            Some("/etc/cni/net.d/10-netconverge.conflist")
        );
        assert_eq!(c.plugin, CniPlugin::Bridge);
        assert_eq!((c.name.as_str(), c.bridge.as_str()), ("cbr0", "cni0"));
        assert!(c.hairpin && !c.ip_masq && c.portmap && !c.bandwidth);
        assert_eq!(c.ipv4.unwrap().subnet.to_string(), "198.18.1.0/24");
        assert!(c.ipv6.is_none());
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn families_from_the_fleet() {
        let src = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/fleet/fleet.toml"
        ))
        .unwrap();
        let src = format!("{src}\n[cni]\n");
        let sel = NodeSelect {
            flag: Some("node-b".into()),
            ..NodeSelect::default()
        };
        let c = parse_as(&src, "fleet.toml", &sel).unwrap().cni.unwrap();
        assert_eq!(c.ipv4.unwrap().subnet.to_string(), "198.18.2.0/24");
        assert_eq!(c.ipv4.unwrap().network.to_string(), "198.18.0.0/16");
        assert!(c.ipv6.is_some());
    }

    #[test]
    fn cni_errors() {
        let src = format!(
            "{BASE}[lease]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n\n[cni]\nplugin = \"flanel\"\nname = \"-x\"\nbridge = \"a very long bridge name\"\nsubnet = \"198.18.2.0/24\"\nipv6_network = \"fd00::/48\"\nmtu = 9\npath = \"/etc/cni/net.d/\"\nportmapp = true\n"
        );
        insta::with_settings!({ description => src.as_str(), omit_expression => true }, {
            insta::assert_snapshot!("cni_errors", errs(&src));
        });
    }

    #[test]
    fn cni_without_subnet_or_lease_for_flannel() {
        let src = format!("{BASE}[cni]\n");
        insta::assert_snapshot!("cni_no_subnet", errs(&src));
        let src = format!(
            "{BASE}[cni]\nplugin = \"flannel\"\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n"
        );
        insta::assert_snapshot!("cni_flannel_needs_lease", errs(&src));
    }
}
