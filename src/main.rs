//! The `netconverge` command line: parses arguments, loads the config, takes
//! the namespace's writer lock ([`lock`]), and maps outcomes to the
//! documented exit codes. All logic lives in the library.
//!
//! Invariant: nothing printed can panic or change what was done. Every write
//! to stdout goes through [`out`]: a closed pipe (`show | head`) silences
//! the rest quietly, any other write error is one line on stderr and exit 3.

mod lock;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use netconverge::config::{self, ConfigError, ConfigErrors};
use netconverge::daemon::nm;
use netconverge::engine::{self, Outcome};
use netconverge::logging::{self, LogFormat};
use netconverge::model::{Desired, NmMode};
use netconverge::plan::Plan;
use serde::Serialize;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("NETCONVERGE_GIT_REV"),
    ")"
);

const EXIT_CODES: &str = "\
Exit codes:
  0  in sync / converged
  1  drift found (--check), or some objects could not be converged or are blocked
  2  invalid config or usage
  3  system state could not be read or written (missing CAP_NET_ADMIN, no netlink),
     or the output could not be written (e.g. disk full)
  4  another netconverge (a daemon) manages this network namespace; nothing was changed";

/// Keeps a node's VXLAN overlay (devices, addresses, routes, FDB and
/// neighbour entries, NAT masquerade, flannel's subnet.env) exactly as
/// declared in one TOML file.
#[derive(Debug, Parser)]
#[command(name = "netconverge", version = VERSION, after_help = EXIT_CODES)]
struct Cli {
    /// Desired-state file.
    #[arg(
        short,
        long,
        global = true,
        env = "NETCONVERGE_CONFIG",
        default_value = "/etc/netconverge/netconverge.toml"
    )]
    config: PathBuf,
    /// This node's name in the file's [fleet] (default: NETCONVERGE_NODE,
    /// then `node_name`, then the hostname).
    #[arg(long, global = true, value_name = "NAME")]
    node: Option<String>,
    /// Log format (text is journald-friendly when JOURNAL_STREAM is set).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DiffFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ShowFormat {
    Toml,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config file only; touches nothing, needs no root or kernel.
    #[command(after_help = "Example:\n  netconverge -c /etc/netconverge/netconverge.toml validate")]
    Validate,
    /// Make the kernel match the file, then verify (or, with --check, only show the diff).
    #[command(
        after_help = "Examples:\n  netconverge converge\n  netconverge converge --check\n  netconverge converge --check --format json\n  netconverge converge --reload   # a daemon runs this file: make it reload\n\nDiff lines: `+` add, `-` remove, `~` change, `!` blocked; each with its reason.\nNext to a daemon in the same network namespace, converge is refused (exit 4) unless --force."
    )]
    Converge {
        /// Change nothing; print what differs and exit 1 if anything does.
        #[arg(long)]
        check: bool,
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
        /// Converge even while a daemon manages this network namespace (it
        /// reverts whatever its own file does not declare).
        #[arg(long, conflicts_with = "check")]
        force: bool,
        /// If a daemon manages this namespace with the same file, ask it to
        /// reload the file (SIGHUP) instead of converging here; without a
        /// daemon, converge here.
        #[arg(long, conflicts_with_all = ["check", "force"])]
        reload: bool,
    },
    /// Print the live state of everything the file manages.
    #[command(
        after_help = "Examples:\n  netconverge show\n  netconverge show --format json | jq '.route | length'"
    )]
    Show {
        #[arg(long, value_enum, default_value_t = ShowFormat::Toml)]
        format: ShowFormat,
    },
    /// Run as a daemon: converge, then keep converging on every change (systemd Type=notify).
    #[command(
        after_help = "Signals: SIGHUP reloads the file, SIGTERM/SIGINT stop (state is left in place).\nOne daemon per network namespace: it holds /run/netconverge/netns-<inode>.lock; a second one exits 4."
    )]
    Run,
    /// Remove everything netconverge owns: its VXLAN devices (with all on them),
    /// routes carrying its protocol marker, and its NAT tables/chains. Nothing else.
    #[command(
        after_help = "Example:\n  netconverge cleanup --check   # show what would be removed"
    )]
    Cleanup {
        /// Only print what would be removed.
        #[arg(long)]
        check: bool,
        /// Clean up even while a daemon manages this network namespace (it
        /// recreates what its file declares).
        #[arg(long, conflicts_with = "check")]
        force: bool,
    },
    /// Print shell completions.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

mod code {
    pub const OK: u8 = 0;
    pub const DRIFT: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const SYSTEM: u8 = 3;
    pub const LOCKED: u8 = 4;
}

/// Everything written to stdout, and the diagnostics on stderr.
mod out {
    use std::fmt::Display;
    use std::io::{self, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// stdout's reader went away (EPIPE): the rest is not written, quietly.
    static CLOSED: AtomicBool = AtomicBool::new(false);
    /// Another write error was reported: the command exits 3.
    static FAILED: AtomicBool = AtomicBool::new(false);

    /// Write `text` to stdout in 64 KiB writes (stdout is line-buffered: a
    /// plan of 40 000 lines would otherwise cost 40 000 syscalls).
    pub fn print(text: impl Display) {
        if CLOSED.load(Ordering::Relaxed) || FAILED.load(Ordering::Relaxed) {
            return;
        }
        let stdout = io::stdout();
        let mut lock = stdout.lock();
        let mut buf = io::BufWriter::with_capacity(64 << 10, &mut lock);
        let written = write!(buf, "{text}").and_then(|()| buf.flush());
        drop(buf);
        if let Err(e) = written.and_then(|()| lock.flush()) {
            failed(&e);
        }
    }

    /// [`print`] followed by a newline.
    pub fn println(text: impl Display) {
        print(format_args!("{text}\n"));
    }

    /// Raw bytes (completions, man page) to stdout.
    pub fn bytes(b: &[u8]) {
        let mut lock = io::stdout().lock();
        if let Err(e) = lock.write_all(b).and_then(|()| lock.flush()) {
            failed(&e);
        }
    }

    /// Record a failed stdout write: EPIPE is the reader's choice, not ours
    /// to report; anything else is said once.
    pub fn failed(e: &io::Error) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
        } else if !FAILED.swap(true, Ordering::Relaxed) {
            eprintln(format_args!("netconverge: cannot write to stdout: {e}"));
        }
    }

    /// An error about the output itself (one line on stderr): exit 3.
    pub fn error(text: impl Display) {
        FAILED.store(true, Ordering::Relaxed);
        eprintln(text);
    }

    /// A line on stderr; if stderr itself is broken there is nobody left to
    /// tell, so the error is dropped (never a panic).
    pub fn eprintln(text: impl Display) {
        let _ = writeln!(io::stderr().lock(), "{text}");
    }

    /// `text` on stderr as is (it ends with its own newline).
    pub fn eprint(text: impl Display) {
        let _ = write!(io::stderr().lock(), "{text}");
    }

    /// The command's exit code, or 3 when its output could not be written.
    pub fn status(code: std::process::ExitCode) -> std::process::ExitCode {
        if FAILED.load(Ordering::Relaxed) {
            std::process::ExitCode::from(super::code::SYSTEM)
        } else {
            code
        }
    }
}

fn main() -> ExitCode {
    out::status(real_main())
}

fn real_main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help/--version go to stdout, usage errors to stderr
            if let Err(io) = e.print()
                && !e.use_stderr()
            {
                out::failed(&io);
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(code::CONFIG));
        }
    };
    match cli.command {
        Command::Completions { shell } => {
            // into memory first: clap_complete panics on a failed write
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "netconverge", &mut buf);
            out::bytes(&buf);
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let mut buf = Vec::new();
            return match clap_mangen::Man::new(Cli::command()).render(&mut buf) {
                Ok(()) => {
                    out::bytes(&buf);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(code::SYSTEM, &format!("cannot render man page: {e}")),
            };
        }
        _ => {}
    }
    logging::init(cli.log_format, cli.verbose);
    // validate runs at NixOS build time: no machine-id there, and no MAC is needed
    let needs_seed = !matches!(cli.command, Command::Validate);
    let purpose = if matches!(cli.command, Command::Cleanup { .. }) {
        config::Purpose::Cleanup
    } else {
        config::Purpose::Converge
    };
    let kube = match kube_source(&cli) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let cluster = kube.as_ref().and_then(|k| k.selection.as_ref());
    let desired = match load(
        &cli.config,
        cli.node.as_deref(),
        needs_seed,
        purpose,
        cluster,
    ) {
        Ok(d) => d,
        Err(errors) => {
            out::eprint(&errors);
            out::eprintln(format_args!(
                "{}: {} error{}; nothing was applied",
                cli.config.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            ));
            return ExitCode::from(code::CONFIG);
        }
    };
    if let Command::Validate = cli.command {
        out::println(format_args!("{}: ok", cli.config.display()));
        // A warning, not an error: the NixOS build sandbox has no nft either.
        if let Some(nat) = desired.nat.as_ref()
            && let Err(e) = netconverge::nat::check_backend(nat)
        {
            out::eprintln(format_args!("warning: {e}"));
        }
        warn_nm_managed_blocking(&desired);
        // The process ends here: freeing 10 000 peers' ~100 000 small
        // allocations one by one would be 7 % of validating them.
        std::mem::forget(desired);
        return ExitCode::SUCCESS;
    }
    if let Some(missing) = missing_privilege(&cli.command, &desired) {
        return fail(code::SYSTEM, &missing);
    }
    // Before the runtime: waiting for a one-shot holder blocks this thread.
    let _lock = match take_lock(&cli) {
        Ok(Locked::Held(l)) => Some(l),
        Ok(Locked::Forced | Locked::NotNeeded) => None,
        Ok(Locked::Done(code)) => return code,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(code::SYSTEM, &format!("cannot start runtime: {e}")),
    };
    // `_lock` lives until here: a daemon holds it for its whole life.
    runtime.block_on(async_main(cli, desired, kube))
}

/// `[fleet] source = "kubernetes"`: the settings, and for the one-shot
/// commands that converge or read state, one list of the Nodes.
struct KubeRun {
    spec: config::KubeSpec,
    selection: Option<config::Selection>,
}

fn kube_source(cli: &Cli) -> Result<Option<KubeRun>, ExitCode> {
    let lists = match cli.command {
        Command::Run => false,
        Command::Converge { reload: false, .. } | Command::Show { .. } => true,
        _ => return Ok(None),
    };
    let select = config::NodeSelect::from_system(cli.node.clone());
    // A broken file is reported by `load`, with every other error.
    let Ok(Some(spec)) = config::load_kube_source(&cli.config, &select) else {
        return Ok(None);
    };
    if !lists {
        return Ok(Some(KubeRun {
            spec,
            selection: None,
        }));
    }
    let listed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(netconverge::kube::select_once(&spec))
                .map_err(|e| e.to_string())
        });
    match listed {
        Ok(sel) => {
            for s in sel.skipped.iter().filter(|s| s.warn) {
                out::eprintln(format_args!("netconverge: warning: {s}"));
            }
            Ok(Some(KubeRun {
                spec,
                selection: Some(sel),
            }))
        }
        Err(e) => Err(fail(
            code::SYSTEM,
            &format!(
                "cannot list the Nodes ([fleet] source = \"kubernetes\"): {e}; nothing was changed"
            ),
        )),
    }
}

/// `CAP_NET_ADMIN`'s bit in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Why this command cannot run with this process's privileges, if it
/// cannot. Writing kernel state needs CAP_NET_ADMIN; so does reading NAT
/// rules (nft/iptables refuse without it), so a read-only command with
/// `[nat]` needs it too rather than report a half-read state.
fn missing_privilege(command: &Command, desired: &Desired) -> Option<String> {
    let (what, why) = match command {
        Command::Run => ("run", "to change network state"),
        Command::Converge { check: false, .. } => ("converge", "to change network state"),
        Command::Cleanup { check: false, .. } => ("cleanup", "to change network state"),
        Command::Converge { check: true, .. } if desired.nat.is_some() => {
            ("converge --check", "to read the NAT rules of [nat]")
        }
        Command::Cleanup { check: true, .. } if desired.nat.is_some() => {
            ("cleanup --check", "to read the NAT rules of [nat]")
        }
        Command::Show { .. } if desired.nat.is_some() => ("show", "to read the NAT rules of [nat]"),
        _ => return None,
    };
    (!has_capability(CAP_NET_ADMIN)).then(|| {
        format!(
            "{what} needs CAP_NET_ADMIN {why}, and this process lacks it: run it as root (or give it CAP_NET_ADMIN, e.g. systemd AmbientCapabilities=CAP_NET_ADMIN)"
        )
    })
}

/// Whether capability `bit` is in this process's effective set. Unknown
/// (no /proc) counts as present: the kernel's EPERM still answers later.
fn has_capability(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1u64 << bit) != 0)
}

/// What [`take_lock`] decided.
enum Locked {
    /// This process is the namespace's writer.
    Held(lock::Lock),
    /// `--force`: writing next to the holder, without the lock.
    Forced,
    /// Nothing more to do (`--reload` handed the file to the daemon).
    Done(ExitCode),
    /// A read-only command: no lock needed.
    NotNeeded,
}

/// Take the namespace's writer lock for commands that change kernel state;
/// read-only commands never touch it. `Err` is the exit code of a refusal
/// (already explained on stderr).
fn take_lock(cli: &Cli) -> Result<Locked, ExitCode> {
    let (role, force, reload) = match cli.command {
        Command::Run => (lock::Role::Daemon, false, false),
        Command::Converge {
            check: false,
            force,
            reload,
            ..
        } => (lock::Role::Converge, force, reload),
        Command::Cleanup {
            check: false,
            force,
        } => (lock::Role::Cleanup, force, false),
        _ => return Ok(Locked::NotNeeded),
    };
    let (path, holder) = match lock::acquire(role, &cli.config) {
        Ok(l) => {
            if reload {
                out::eprintln(
                    "netconverge: no daemon manages this network namespace: converging here",
                );
            }
            return Ok(Locked::Held(l));
        }
        Err(lock::LockError::Busy { path, holder }) => (path, holder),
        // The daemon keeps the overlay up even where /run/netconverge cannot
        // be written (a unit without RuntimeDirectory=netconverge under
        // ProtectSystem=strict): say so loudly, run unlocked.
        Err(e @ lock::LockError::Io { .. }) if role == lock::Role::Daemon => {
            tracing::warn!(
                "{e}; running WITHOUT the one-writer lock (give the unit RuntimeDirectory=netconverge)"
            );
            return Ok(Locked::Forced);
        }
        Err(e @ lock::LockError::Io { .. }) => return Err(fail(code::SYSTEM, &e.to_string())),
    };
    let busy = lock::LockError::Busy {
        path,
        holder: holder.clone(),
    };
    if force {
        out::eprintln(format_args!(
            "netconverge: warning: --force: {busy}; changing it anyway"
        ));
        return Ok(Locked::Forced);
    }
    if reload && holder.is_daemon() {
        return Ok(Locked::Done(ask_daemon_to_reload(&holder, &cli.config)));
    }
    out::eprintln(format_args!(
        "netconverge: {busy}; nothing was changed\n  hint: {}",
        lock_hint(role, &holder)
    ));
    Err(ExitCode::from(code::LOCKED))
}

/// What to do instead, for a `role` that found `holder` in the way.
fn lock_hint(role: lock::Role, holder: &lock::Holder) -> String {
    let pid = holder.local_pid();
    if !holder.is_daemon() {
        return "it is a one-shot command: try again when it has finished".to_string();
    }
    let stop = match pid {
        Some(p) => format!("`systemctl stop netconverge` or `kill {p}`"),
        None => "`systemctl stop netconverge`".to_string(),
    };
    match role {
        lock::Role::Daemon => {
            format!("one daemon per network namespace: stop the other first ({stop})")
        }
        lock::Role::Cleanup => format!(
            "the daemon would recreate what cleanup removes: stop it first ({stop}); --force cleans up anyway"
        ),
        lock::Role::Converge => {
            let file = if holder.config.is_empty() {
                "the daemon's file".to_string()
            } else {
                holder.config.clone()
            };
            let hup = match pid {
                Some(p) => format!(", `kill -HUP {p}`"),
                None => String::new(),
            };
            format!(
                "the daemon would revert this converge: edit {file} and reload it (`systemctl reload netconverge`{hup}, or `netconverge -c {file} converge --reload`); --force converges anyway"
            )
        }
    }
}

/// `converge --reload` next to a daemon: SIGHUP it, if it runs the same
/// file (a reload re-reads the daemon's own file, not ours).
fn ask_daemon_to_reload(holder: &lock::Holder, config: &Path) -> ExitCode {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let ours = canonical(config);
    if canonical(Path::new(&holder.config)) != ours {
        return fail(
            code::LOCKED,
            &format!(
                "{holder} manages this network namespace with another file: a reload would load {}, not {}; nothing was changed",
                holder.config,
                ours.display()
            ),
        );
    }
    let Some(pid) = holder.local_pid().and_then(|p| i32::try_from(p).ok()) else {
        return fail(
            code::LOCKED,
            &format!(
                "{holder} runs in another pid namespace: reload it there (`systemctl reload netconverge`); nothing was changed"
            ),
        );
    };
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        Ok(()) => {
            out::eprintln(format_args!(
                "netconverge: asked the daemon (pid {pid}) to reload {}; it logs the result",
                ours.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(
            code::SYSTEM,
            &format!("cannot signal the daemon (pid {pid}): {e}"),
        ),
    }
}

/// How long `validate`/`converge --check` may spend asking NetworkManager.
const NM_QUERY_BUDGET: std::time::Duration = std::time::Duration::from_millis(1500);

/// Warn (stderr only, exit code unaffected) about owned devices that
/// NetworkManager manages. Silent without a bus, without NetworkManager, or
/// with `networkmanager = "off"`.
async fn warn_nm_managed(desired: &Desired) {
    if desired.daemon.networkmanager == NmMode::Off {
        return;
    }
    let owned: Vec<String> = desired.owned_devices().map(str::to_string).collect();
    match nm::managed_devices(&owned, NM_QUERY_BUDGET).await {
        Ok(devices) => devices
            .iter()
            .for_each(|d| out::eprintln(format_args!("netconverge: {}", nm::managed_warning(d)))),
        Err(e) => tracing::debug!("cannot ask NetworkManager about owned devices: {e}"),
    }
}

/// [`warn_nm_managed`] for `validate`, which otherwise runs no runtime (and
/// must stay instant where there is no bus, e.g. in a build sandbox).
fn warn_nm_managed_blocking(desired: &Desired) {
    if desired.vxlans.is_empty()
        || desired.daemon.networkmanager == NmMode::Off
        || !nm::system_bus_configured()
    {
        return;
    }
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        rt.block_on(warn_nm_managed(desired));
    }
}

/// Load and validate the file, then give derived MACs their seed.
fn load(
    path: &Path,
    node: Option<&str>,
    needs_seed: bool,
    purpose: config::Purpose,
    cluster: Option<&config::Selection>,
) -> Result<Desired, ConfigErrors> {
    let select = config::NodeSelect::from_system(node.map(str::to_string));
    let mut desired = config::load_cluster(path, &select, purpose, cluster)?;
    if desired.mac_seed.is_none() {
        desired.mac_seed = machine_id();
    }
    if needs_seed && desired.vxlans.iter().any(|v| v.mac.is_none()) && desired.mac_seed.is_none() {
        return Err(ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: "no stable MAC seed: `node_name` is not set and /etc/machine-id is unreadable".into(),
            help: Some("set `node_name = \"<this node>\"` at the top of the file, or set `mac` on each [[vxlan]]".into()),
        }]));
    }
    Ok(desired)
}

fn machine_id() -> Option<String> {
    let path = std::env::var_os("NETCONVERGE_MACHINE_ID_FILE")
        .map_or_else(|| PathBuf::from("/etc/machine-id"), PathBuf::from);
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn fail(code: u8, msg: &str) -> ExitCode {
    out::eprintln(format_args!("netconverge: {msg}"));
    ExitCode::from(code)
}

async fn async_main(cli: Cli, desired: Desired, kube: Option<KubeRun>) -> ExitCode {
    let handle = match netconverge::netlink::connect() {
        Ok(h) => h,
        Err(e) => return fail(code::SYSTEM, &e.to_string()),
    };
    match cli.command {
        Command::Converge {
            check: true,
            format,
            ..
        } => match engine::check(&handle, &desired).await {
            Ok(plan) => {
                warn_nm_managed(&desired).await;
                print_plan(&plan, format);
                ExitCode::from(if plan.in_sync() {
                    code::OK
                } else {
                    code::DRIFT
                })
            }
            Err(e) => fail(code::SYSTEM, &e.to_string()),
        },
        Command::Converge {
            check: false,
            format,
            ..
        } => match engine::converge(&handle, &desired, 3).await {
            Ok(outcome) => {
                print_outcome(&outcome, format);
                if let Some(KubeRun {
                    spec,
                    selection: Some(sel),
                }) = &kube
                    && outcome.converged()
                {
                    match netconverge::kube::publish_once(spec, sel, &outcome.observed).await {
                        Ok(Some(body)) => out::eprintln(format_args!(
                            "netconverge: published {body} on Node {}",
                            spec.node_name
                        )),
                        Ok(None) => {}
                        Err(e) => {
                            out::eprintln(format_args!(
                                "netconverge: cannot publish this node's annotations: {e}"
                            ));
                            return ExitCode::from(code::SYSTEM);
                        }
                    }
                }
                ExitCode::from(if outcome.converged() {
                    code::OK
                } else if outcome.permission_denied() {
                    code::SYSTEM
                } else {
                    code::DRIFT
                })
            }
            Err(e) => fail(code::SYSTEM, &e.to_string()),
        },
        Command::Show { format } => match engine::observe_all(&handle, &desired).await {
            Ok(observed) => {
                let doc = netconverge::show::show(&desired.resolve_underlays(&observed), &observed);
                let text = match format {
                    ShowFormat::Json => {
                        serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
                    }
                    ShowFormat::Toml => netconverge::show::to_toml(&doc).map_err(|e| e.to_string()),
                };
                match text {
                    Ok(t) => {
                        out::println(t.trim_end());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(code::SYSTEM, &format!("cannot render state: {e}")),
                }
            }
            Err(e) => fail(code::SYSTEM, &e.to_string()),
        },
        Command::Cleanup { check, .. } => cleanup(&handle, &desired, check).await,
        Command::Run => {
            drop(handle);
            let path = cli.config.clone();
            let node = cli.node.clone();
            let loader: netconverge::daemon::Loader = Box::new(move |sel| {
                load(&path, node.as_deref(), true, config::Purpose::Converge, sel)
            });
            let source = match kube {
                Some(k) => match netconverge::daemon::kubewatch::KubeSource::start(k.spec).await {
                    Ok(s) => Some(s),
                    Err(e) => return fail(code::SYSTEM, &e.to_string()),
                },
                None => None,
            };
            // D-Bus lives in its own task; without a bus it only logs once
            let follower = (desired.daemon.networkmanager == NmMode::Auto)
                .then(|| nm::spawn(nm::underlays(&desired)));
            match netconverge::daemon::run_with_kube(desired, loader, follower, source).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(code::SYSTEM, &e.to_string()),
            }
        }
        Command::Validate | Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
    }
}

async fn cleanup(
    handle: &netconverge::netlink::Handle,
    desired: &Desired,
    check: bool,
) -> ExitCode {
    // Even without [nat] or devices in the file: what an earlier file made
    // is found by its markers, so the plan is built from the kernel alone.
    if check {
        return match engine::check_goal(handle, desired, engine::Goal::Cleanup).await {
            Ok(plan) => {
                out::print(&plan);
                ExitCode::SUCCESS
            }
            Err(e) => fail(code::SYSTEM, &e.to_string()),
        };
    }
    match engine::cleanup(handle, desired, 3).await {
        Ok(outcome) => {
            out::print(&outcome.initial);
            for f in &outcome.failures {
                out::eprintln(format_args!("failed: {}: {}", f.object, f.error));
            }
            if outcome.remaining.is_empty() {
                ExitCode::from(code::OK)
            } else {
                out::print(&outcome.remaining);
                out::eprintln(format_args!(
                    "not cleaned up: {} object(s) of netconverge's left",
                    outcome.remaining.changes.len()
                ));
                ExitCode::from(if outcome.permission_denied() {
                    code::SYSTEM
                } else {
                    code::DRIFT
                })
            }
        }
        Err(e) => fail(code::SYSTEM, &e.to_string()),
    }
}

#[derive(Serialize)]
struct PlanJson<'a> {
    in_sync: bool,
    changes: &'a [netconverge::plan::Change],
    blocked: &'a [netconverge::plan::Blocked],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
}

fn print_plan(plan: &Plan, format: DiffFormat) {
    match format {
        DiffFormat::Text => {
            out::print(plan);
            out::println(summary(plan));
        }
        DiffFormat::Json => {
            let j = PlanJson {
                in_sync: plan.in_sync(),
                changes: &plan.changes,
                blocked: &plan.blocked,
                notes: &plan.notes,
            };
            print_json(&j);
        }
    }
}

/// Pretty JSON on stdout; a value that cannot be serialized is an error
/// (exit 3), never an empty line that a script would parse as nothing.
fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(j) => out::println(j),
        Err(e) => out::error(format_args!("netconverge: cannot render JSON: {e}")),
    }
}

fn summary(plan: &Plan) -> String {
    use netconverge::plan::ChangeKind;
    if plan.in_sync() {
        return "in sync".to_string();
    }
    let count = |k: ChangeKind| plan.changes.iter().filter(|c| c.kind == k).count();
    format!(
        "{} to add, {} to change, {} to remove, {} blocked",
        count(ChangeKind::Add),
        count(ChangeKind::Modify),
        count(ChangeKind::Remove),
        plan.blocked.len()
    )
}

fn print_outcome(outcome: &Outcome, format: DiffFormat) {
    match format {
        DiffFormat::Json => print_json(outcome),
        DiffFormat::Text => {
            out::print(&outcome.initial);
            for f in &outcome.failures {
                out::println(format_args!("failed: {}: {}", f.object, f.error));
            }
            if outcome.converged() {
                out::println(format_args!(
                    "converged: {} change(s) applied",
                    outcome.applied
                ));
            } else {
                out::print(&outcome.remaining);
                out::println(format_args!(
                    "not converged: {}",
                    summary(&outcome.remaining)
                ));
            }
        }
    }
}
