#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The rooms of `src/` and their one-way flow, kept by a test.
//!
//! Reads every `src/**/*.rs`, collects the top-level modules each one names
//! (`crate::x`, `crate::{x, y}`, `super::x` where it leaves the module,
//! `netconverge::x` from the binary) and asserts (a) no import cycle among
//! them and (b) every edge is in [`ALLOWED`]: config → model → plan →
//! {observe, apply, nat, lease, netlink, record} → engine → daemon → main.
//! Test code (`tests.rs`, `#[cfg(test)] mod … {}` at the end of a file) may
//! use anything and is not read. A violation prints the offending file:line.
//!
//! `ARCH_SRC=/other/tree/src cargo test --test architecture` checks another
//! tree (e.g. the old one, to see this test fail).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and the modules it may use. Anything not listed
/// is a violation; adding an edge here is a design decision, not a fix.
const ALLOWED: &[(&str, &[&str])] = &[
    ("logging", &[]),
    ("config", &["model"]),
    ("model", &[]),
    ("plan", &["model"]),
    ("show", &["model", "plan"]),
    ("netlink", &["model", "plan"]),
    ("nat", &["model", "plan"]),
    ("lease", &["model", "plan"]),
    // The kernel record is written atomically with the lease file's writer.
    ("record", &["model", "plan", "lease"]),
    // The conflist is read and written like the lease file.
    ("cni", &["model", "plan", "lease"]),
    // The Kubernetes API (list/watch/PATCH of Nodes): it hands Node views to
    // config's judge and reads device MACs from an observation.
    ("kube", &["config", "model"]),
    (
        "observe",
        &["model", "plan", "nat", "lease", "cni", "netlink", "record"],
    ),
    (
        "apply",
        &[
            "model", "plan", "nat", "lease", "cni", "netlink", "record", "observe",
        ],
    ),
    (
        "engine",
        &[
            "config", "model", "plan", "observe", "apply", "nat", "lease", "cni", "netlink",
            "record", "logging",
        ],
    ),
    // The metrics registry and its endpoint: fed with the engine's outcomes
    // and the planner's kinds, knowing nothing of the daemon that feeds it
    // (its triggers come in as label strings), so every event source in
    // `daemon` (or beyond it) can report to it without a cycle.
    ("metrics", &["model", "plan", "engine"]),
    (
        "daemon",
        &[
            "config", "model", "plan", "observe", "apply", "nat", "lease", "cni", "netlink",
            "record", "engine", "logging", "kube", "metrics",
        ],
    ),
    (
        "main",
        &[
            "config", "model", "plan", "observe", "apply", "nat", "lease", "cni", "netlink",
            "record", "engine", "daemon", "logging", "show", "kube",
        ],
    ),
];

/// One reference: the file and line that names the module.
type Edges = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn src_dir() -> PathBuf {
    std::env::var_os("ARCH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/nat/mod.rs` → `[nat]`,
/// `src/plan/nat/iptables.rs` → `[plan, nat, iptables]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" {
            parts.push(stem);
        }
    }
    parts
}

/// Source without comments and without a trailing `#[cfg(test)] mod x { … }`.
fn production_code(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            break;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push(code.to_string());
    }
    out
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let id = &s[..end];
    (!id.is_empty() && id.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')).then_some(id)
}

/// The first path segment of every item of a `{a, b::c, d}` group starting
/// at `s` (just after the `{`), with the line offset of each.
fn group_heads(lines: &[String], line: usize, col: usize) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut depth = 1usize;
    let mut expect = true;
    let (mut l, mut c) = (line, col);
    while let Some(text) = lines.get(l) {
        let rest = text.get(c..).unwrap_or("");
        let mut chars = rest.char_indices().peekable();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '{' => {
                    depth += 1;
                    expect = depth == 1;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return out;
                    }
                }
                ',' if depth == 1 => expect = true,
                c if c.is_whitespace() => {}
                _ if expect && depth == 1 => {
                    if let Some(id) = ident_at(&rest[i..]) {
                        if id != "self" {
                            out.push((id.to_string(), l));
                        }
                        for _ in 1..id.len() {
                            chars.next();
                        }
                    }
                    expect = false;
                }
                _ => {}
            }
        }
        l += 1;
        c = 0;
    }
    out
}

/// `pub use netlink::{bulk, nexthop};` in lib.rs: `crate::bulk` is `netlink`.
fn aliases(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(lib) = std::fs::read_to_string(src.join("lib.rs")) else {
        return out;
    };
    let lines = production_code(&lib);
    for (n, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some(module) = ident_at(rest) else {
            continue;
        };
        let after = &rest[module.len()..];
        if let Some(g) = after.strip_prefix("::{") {
            let col = line.find(g).unwrap_or(0);
            for (name, _) in group_heads(&lines, n, col) {
                out.insert(name, module.to_string());
            }
        } else if let Some(tail) = after.strip_prefix("::") {
            if let Some(name) = ident_at(tail) {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The crate's top-level modules (`pub mod x;` in lib.rs).
fn top_modules(src: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    production_code(&lib)
        .iter()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(String::from)
        })
        .collect()
}

fn collect(src: &Path) -> Edges {
    let aliases = aliases(src);
    let tops = top_modules(src);
    let main_text = std::fs::read_to_string(src.join("main.rs")).unwrap_or_default();
    // Modules of the binary (`mod lock;` in main.rs) belong to `main`.
    let bin_mods: BTreeSet<String> = production_code(&main_text)
        .iter()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("mod ")?
                .strip_suffix(';')
                .map(String::from)
        })
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Edges::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().to_path_buf();
        if rel == Path::new("lib.rs") || rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let path = module_path(&rel);
        let Some(first) = path.first() else { continue };
        let top = if bin_mods.contains(first) {
            "main".to_string()
        } else {
            first.clone()
        };
        let lines = production_code(&std::fs::read_to_string(&file).unwrap());
        let mut add = |name: &str, line: usize| {
            let name = aliases.get(name).map_or(name, String::as_str);
            // Only modules count: `super::code` inside an inline module of
            // main.rs names an item of main, not a room.
            if name != top && tops.contains(name) {
                edges
                    .entry(top.clone())
                    .or_default()
                    .entry(name.to_string())
                    .or_default()
                    .push(format!("{}:{}", file.display(), line + 1));
            }
        };
        for (n, line) in lines.iter().enumerate() {
            for prefix in ["crate::", "netconverge::"] {
                if prefix == "netconverge::" && top != "main" {
                    continue;
                }
                let mut from = 0;
                while let Some(at) = line[from..].find(prefix) {
                    let start = from + at;
                    from = start + prefix.len();
                    let before = line[..start].chars().last();
                    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                        continue;
                    }
                    let rest = &line[from..];
                    if rest.starts_with('{') {
                        for (name, l) in group_heads(&lines, n, from + 1) {
                            add(&name, l);
                        }
                    } else if let Some(id) = ident_at(rest) {
                        add(id, n);
                    }
                }
            }
            // `super::super::x` from depth k reaching the crate root.
            let mut from = 0;
            while let Some(at) = line[from..].find("super::") {
                let start = from + at;
                let before = line[..start].chars().last();
                let mut rest = &line[start..];
                let mut ups = 0;
                while let Some(r) = rest.strip_prefix("super::") {
                    ups += 1;
                    rest = r;
                }
                from = line.len() - rest.len();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                // A file's own items are one level below its path (mod.rs
                // files: its path *is* the module).
                if ups != path.len() {
                    continue;
                }
                if let Some(id) = ident_at(rest) {
                    add(id, n);
                } else if rest.starts_with('{') {
                    for (name, l) in group_heads(&lines, n, from + 1) {
                        add(&name, l);
                    }
                }
            }
        }
    }
    edges
}

fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    // Every elementary cycle through its smallest node is enough to name
    // them; the graph has a dozen nodes, so a plain DFS is fine.
    let mut found = BTreeSet::new();
    fn dfs(
        edges: &Edges,
        start: &str,
        node: &str,
        stack: &mut Vec<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if next == start {
                found.insert(stack.clone());
            } else if next.as_str() > start && !stack.contains(next) {
                stack.push(next.clone());
                dfs(edges, start, next, stack, found);
                stack.pop();
            }
        }
    }
    for start in edges.keys() {
        dfs(edges, start, start, &mut vec![start.clone()], &mut found);
    }
    found.into_iter().collect()
}

fn first_ref(edges: &Edges, from: &str, to: &str) -> String {
    edges
        .get(from)
        .and_then(|m| m.get(to))
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_default()
}

#[test]
fn no_import_cycle_among_src_modules() {
    let edges = collect(&src_dir());
    assert!(
        edges.contains_key("plan"),
        "read nothing from {}",
        src_dir().display()
    );
    let mut report = Vec::new();
    for cycle in cycles(&edges) {
        let mut line = format!("cycle {} → {}", cycle.join(" → "), cycle[0]);
        for (i, from) in cycle.iter().enumerate() {
            let to = cycle.get(i + 1).unwrap_or(&cycle[0]);
            line.push_str(&format!(
                "\n    {from} → {to}: {}",
                first_ref(&edges, from, to)
            ));
        }
        report.push(line);
    }
    assert!(
        report.is_empty(),
        "import cycles in src/:\n{}",
        report.join("\n")
    );
}

#[test]
fn every_import_points_down_the_layers() {
    let edges = collect(&src_dir());
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut report = Vec::new();
    for (from, tos) in &edges {
        for (to, refs) in tos {
            let ok = allowed
                .get(from.as_str())
                .is_some_and(|a| a.contains(&to.as_str()));
            if !ok {
                for r in refs {
                    report.push(format!("{r}: {from} uses {to} (not in ALLOWED)"));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "imports against the layers:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_reader_sees_the_forms_it_claims_to() {
    // Positive control: the collector finds each form of reference.
    let lines: Vec<String> = ["use crate::{", "    model::{A, B},", "    plan,", "};"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let heads: Vec<_> = group_heads(&lines, 0, "use crate::{".len())
        .into_iter()
        .map(|h| h.0)
        .collect();
    assert_eq!(heads, ["model", "plan"]);
    let edges = collect(&src_dir());
    let names = |m: &str| {
        edges
            .get(m)
            .map(|t| t.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(
        names("main").contains(&"engine".to_string()),
        "netconverge:: from main: {:?}",
        names("main")
    );
    assert!(
        names("plan").contains(&"model".to_string()),
        "crate:: from plan: {:?}",
        names("plan")
    );
    assert!(
        names("engine").contains(&"apply".to_string()),
        "{:?}",
        names("engine")
    );
}
