//! Running the backend tools (`nft`, `iptables-save`, `iptables-restore`)
//! and finding them in `PATH`.
//!
//! Invariant: every failure comes back as a [`NatError`] carrying the
//! command and its stderr; a missing binary names the package to install.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::NatError;

/// Which distribution package provides a tool, for "not found" messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    Nftables,
    Iptables,
}

impl Package {
    pub fn hint(self) -> &'static str {
        match self {
            Package::Nftables => {
                "install the nftables package (Debian: `apt install nftables`; NixOS: `pkgs.nftables`, \
                 e.g. in the netconverge service's `path`)"
            }
            Package::Iptables => {
                "install the iptables package (Debian: `apt install iptables`; NixOS: `pkgs.iptables`, \
                 e.g. in the netconverge service's `path`)"
            }
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Ran {
    pub command: String,
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The command's stdout when it succeeded, else a [`NatError::Failed`].
    pub fn ok(self) -> Result<String, NatError> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(self.failed())
        }
    }

    pub fn failed(self) -> NatError {
        NatError::Failed {
            command: self.command,
            status: self.status,
            stderr: self.stderr.trim().to_string(),
        }
    }
}

/// Run `tool args…`, feeding `stdin` when given, and collect its output.
/// The child inherits the calling thread's network namespace.
pub fn run(
    tool: &str,
    args: &[&str],
    stdin: Option<&str>,
    package: Package,
) -> Result<Ran, NatError> {
    let command = std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NatError::Missing {
                    tool: tool.to_string(),
                    hint: package.hint(),
                }
            } else {
                NatError::Spawn {
                    tool: tool.to_string(),
                    source,
                }
            }
        })?;
    // Feed stdin from another thread so a chatty child can never deadlock
    // against a full stdout pipe.
    let output = std::thread::scope(|s| {
        let feeder = match (child.stdin.take(), stdin) {
            (Some(mut pipe), Some(text)) => Some(s.spawn(move || pipe.write_all(text.as_bytes()))),
            _ => None,
        };
        let out = child.wait_with_output();
        let fed = feeder.map(|h| h.join());
        (out, fed)
    });
    let (out, fed) = output;
    let out = out.map_err(|source| NatError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // A failed write only matters when the child claims success anyway
    // (otherwise its own status and stderr say more).
    if let Some(Ok(Err(e))) = fed {
        if out.status.success() {
            return Err(NatError::Spawn {
                tool: tool.to_string(),
                source: e,
            });
        }
    }
    Ok(Ran {
        command,
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    })
}

/// Where `tool` would be executed from: the path itself when it contains a
/// `/`, else the first executable match in `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fail with the package hint unless every tool is installed.
pub fn require(tools: &[&str], package: Package) -> Result<(), NatError> {
    match tools.iter().find(|t| which(t).is_none()) {
        Some(t) => Err(NatError::Missing {
            tool: (*t).to_string(),
            hint: package.hint(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let e = run(
            "/nonexistent/nft",
            &["list", "ruleset"],
            None,
            Package::Nftables,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/nft") && msg.contains("apt install nftables"),
            "{msg}"
        );
        assert!(msg.contains("pkgs.nftables"), "{msg}");
        let e = require(&["sh", "no-such-tool-netconverge"], Package::Iptables).unwrap_err();
        assert!(e.to_string().contains("no-such-tool-netconverge"), "{e}");
        assert!(require(&["sh"], Package::Iptables).is_ok());
    }

    #[test]
    fn stdin_stdout_and_failure_are_captured() {
        let ran = run(
            "sh",
            &["-c", "cat; echo oops >&2; exit 3"],
            Some("hello"),
            Package::Nftables,
        )
        .unwrap();
        assert!(!ran.success);
        assert_eq!(ran.stdout, "hello");
        let msg = ran.failed().to_string();
        assert!(msg.contains("oops") && msg.contains("sh -c"), "{msg}");
    }
}
