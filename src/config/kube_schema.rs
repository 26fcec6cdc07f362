//! `[fleet] source` and `[fleet.kubernetes]`: reading them with spans, and
//! the [`KubeSpec`] they make together with the rest of `[fleet]`.
//!
//! Invariant: `[fleet.kubernetes]` is accepted only with `source =
//! "kubernetes"`, and that source only without `[[fleet.node]]` entries
//! (the nodes come from the API); every mistake is reported at its key.

use std::path::PathBuf;

use toml_span::Span;
use toml_span::value::ValueInner;

use super::Diags;
use super::kube::DEFAULT_PREFIX;
use super::schema::{Bad, Field, Keys, Section, Sp, file_path, type_name};

const KUBE_KEYS: Keys = &[
    (
        "kubeconfig",
        "kubeconfig = \"/var/lib/rancher/k3s/agent/kubelet.kubeconfig\"",
    ),
    (
        "annotation_prefix",
        "annotation_prefix = \"flannel.alpha.coreos.com\"",
    ),
    ("publish", "publish = true"),
    ("adopt", "adopt = true"),
];

/// `[fleet.kubernetes]` as read (present whenever `source = "kubernetes"`).
#[derive(Debug)]
pub(crate) struct RawKube {
    pub(crate) kubeconfig: Field<PathBuf>,
    pub(crate) annotation_prefix: Option<Sp<String>>,
    pub(crate) publish: Option<Sp<bool>>,
    /// Take over a VXLAN device of the fleet's name that flannel created
    /// (a node migrating from flannel), with the peer routes on it.
    pub(crate) adopt: Option<Sp<bool>>,
}

fn prefix(s: &str) -> Result<String, Bad> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '/' | '_'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(Bad {
            message: format!("`annotation_prefix` `{s}` is not an annotation prefix"),
            help: format!(
                "use flannel's --kube-annotation-prefix, by default \"{DEFAULT_PREFIX}\" (letters, digits, `.`, `-`, `/`)"
            ),
        })
    }
}

/// Reads `source` and `[fleet.kubernetes]` out of `[fleet]`.
pub(crate) fn read(
    s: &mut Section<'_>,
    header: Span,
    has_nodes: bool,
    d: &mut Diags<'_>,
) -> Option<RawKube> {
    let source = s.choice(d, "source", &[("file", false), ("kubernetes", true)]);
    let table = s.take("kubernetes");
    let kube = matches!(source, Field::Given(Sp { v: true, .. }));
    let mut raw = RawKube {
        kubeconfig: Field::Absent,
        annotation_prefix: None,
        publish: None,
        adopt: None,
    };
    if let Some(mut t) = table {
        let span = t.span;
        match t.take() {
            ValueInner::Table(t) => {
                let mut ks = Section::new("[fleet.kubernetes]", span, t, KUBE_KEYS);
                raw.kubeconfig = ks.parsed(d, "kubeconfig", file_path);
                raw.annotation_prefix = ks
                    .parsed(d, "annotation_prefix", prefix)
                    .or_default(DEFAULT_PREFIX.to_string(), span);
                raw.publish = ks.bool(d, "publish").or_default(true, span);
                raw.adopt = ks.bool(d, "adopt").given().cloned();
                ks.finish(d);
            }
            other => d.error(
                span,
                format!(
                    "`kubernetes` in [fleet] must be a table, found {}",
                    type_name(&other)
                ),
                "write it as a [fleet.kubernetes] header followed by its keys",
            ),
        }
        if !kube && !matches!(source, Field::Invalid) {
            d.error(
                span,
                "[fleet.kubernetes] without `source = \"kubernetes\"` in [fleet]",
                "add `source = \"kubernetes\"` to [fleet] to take the nodes from the API, or remove [fleet.kubernetes]",
            );
        }
    }
    if !kube {
        return None;
    }
    if has_nodes {
        d.error(
            header,
            "[fleet] has `source = \"kubernetes\"` and [[fleet.node]] entries",
            "the nodes come from the Kubernetes API: remove the [[fleet.node]] entries, or `source`",
        );
    }
    raw.annotation_prefix = raw.annotation_prefix.or(Some(Sp {
        v: DEFAULT_PREFIX.to_string(),
        span: header,
    }));
    raw.publish = raw.publish.or(Some(Sp {
        v: true,
        span: header,
    }));
    Some(raw)
}
