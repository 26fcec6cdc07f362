//! Embeds the git revision in `--version` (falls back to "unknown" outside a
//! git checkout, e.g. in a Nix build from a source tarball).
use std::process::Command;

fn main() {
    let rev = std::env::var("NETCONVERGE_GIT_REV").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    });
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let rev = match rev {
        Some(r) if dirty => format!("{r}-dirty"),
        Some(r) => r,
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=NETCONVERGE_GIT_REV={rev}");
    println!("cargo:rerun-if-env-changed=NETCONVERGE_GIT_REV");
    // Only watch files that exist: a missing one would rerun this on every build.
    println!("cargo:rerun-if-changed=build.rs");
    for f in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}
