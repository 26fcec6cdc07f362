//! The `netconverge` command line: parses arguments, loads the config, and
//! maps outcomes to the documented exit codes. All logic lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use netconverge::config::{self, ConfigError, ConfigErrors};
use netconverge::daemon::nm;
use netconverge::engine::{self, Outcome};
use netconverge::logging::{self, LogFormat};
use netconverge::model::{Desired, NmMode, Observed};
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
  3  system state could not be read or written (permissions, no netlink)";

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
        after_help = "Examples:\n  netconverge converge\n  netconverge converge --check\n  netconverge converge --check --format json\n\nDiff lines: `+` add, `-` remove, `~` change, `!` blocked; each with its reason."
    )]
    Converge {
        /// Change nothing; print what differs and exit 1 if anything does.
        #[arg(long)]
        check: bool,
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
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
        after_help = "Signals: SIGHUP reloads the file, SIGTERM/SIGINT stop (state is left in place)."
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "netconverge",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let man = clap_mangen::Man::new(Cli::command());
            return match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(code::SYSTEM, &format!("cannot write man page: {e}")),
            };
        }
        _ => {}
    }
    logging::init(cli.log_format, cli.verbose);
    // validate runs at NixOS build time: no machine-id there, and no MAC is needed
    let needs_seed = !matches!(cli.command, Command::Validate);
    let desired = match load(&cli.config, cli.node.as_deref(), needs_seed) {
        Ok(d) => d,
        Err(errors) => {
            eprint!("{errors}");
            eprintln!(
                "{}: {} error{}; nothing was applied",
                cli.config.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(code::CONFIG);
        }
    };
    if let Command::Validate = cli.command {
        println!("{}: ok", cli.config.display());
        // A warning, not an error: the NixOS build sandbox has no nft either.
        if let Some(nat) = desired.nat.as_ref()
            && let Err(e) = netconverge::nat::check_backend(nat)
        {
            eprintln!("warning: {e}");
        }
        warn_nm_managed_blocking(&desired);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(code::SYSTEM, &format!("cannot start runtime: {e}")),
    };
    runtime.block_on(async_main(cli, desired))
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
            .for_each(|d| eprintln!("netconverge: {}", nm::managed_warning(d))),
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
fn load(path: &Path, node: Option<&str>, needs_seed: bool) -> Result<Desired, ConfigErrors> {
    let select = config::NodeSelect::from_system(node.map(str::to_string));
    let mut desired = config::load_as(path, &select)?;
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
    eprintln!("netconverge: {msg}");
    ExitCode::from(code)
}

async fn async_main(cli: Cli, desired: Desired) -> ExitCode {
    let handle = match netconverge::netlink::connect() {
        Ok(h) => h,
        Err(e) => return fail(code::SYSTEM, &e.to_string()),
    };
    match cli.command {
        Command::Converge {
            check: true,
            format,
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
        } => match engine::converge(&handle, &desired, 3).await {
            Ok(outcome) => {
                print_outcome(&outcome, format);
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
                        println!("{}", t.trim_end());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(code::SYSTEM, &format!("cannot render state: {e}")),
                }
            }
            Err(e) => fail(code::SYSTEM, &e.to_string()),
        },
        Command::Cleanup { check } => cleanup(&handle, &desired, check).await,
        Command::Run => {
            drop(handle);
            let path = cli.config.clone();
            let node = cli.node.clone();
            let loader: netconverge::daemon::Loader =
                Box::new(move || load(&path, node.as_deref(), true));
            // D-Bus lives in its own task; without a bus it only logs once
            let follower = (desired.daemon.networkmanager == NmMode::Auto)
                .then(|| nm::spawn(nm::underlays(&desired)));
            match netconverge::daemon::run(desired, loader, follower).await {
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
    let observed = match engine::observe_all(handle, desired).await {
        Ok(o) => o,
        Err(e) => return fail(code::SYSTEM, &e.to_string()),
    };
    let plan = netconverge::plan::cleanup_plan(desired, &observed);
    print_all(&plan);
    if check {
        // The NAT part is not in the plan (nat::cleanup runs on its own
        // below), but --check must list everything cleanup would remove.
        for r in nat_cleanup_preview(desired, &observed) {
            println!("- {r}: cleanup");
        }
        return ExitCode::SUCCESS;
    }
    let report = netconverge::apply::apply(handle, &plan, &observed).await;
    let mut failed = report.failures.len();
    for f in &report.failures {
        eprintln!("failed: {}: {}", f.object, f.error);
    }
    if let Some(nat) = desired.nat.as_ref() {
        match netconverge::nat::cleanup(nat) {
            Ok(removed) => removed.iter().for_each(|r| println!("- {r}: cleanup")),
            Err(e) => {
                failed += 1;
                eprintln!("failed: nat cleanup: {e}");
            }
        }
    }
    ExitCode::from(if failed == 0 { code::OK } else { code::DRIFT })
}

/// What `nat::cleanup` would remove, from the observation of the same
/// backend, labelled as `nat::cleanup` reports it.
fn nat_cleanup_preview(desired: &Desired, observed: &Observed) -> Vec<String> {
    use netconverge::model::Family;
    use netconverge::nat::{FamilyObserved, iptables, nftables};
    let Some(nat) = desired.nat.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        match observed.nat.family(family) {
            FamilyObserved::Nftables(_) => out.push(nftables::table_label(family, &nat.nft_table)),
            FamilyObserved::Iptables(seen) => {
                let chain = &nat.iptables_chain;
                if seen.chain {
                    out.push(iptables::chain_label(family, chain));
                }
                if !seen.jumps.is_empty() {
                    out.push(format!(
                        "{} jump(s) from {family} POSTROUTING to {chain}",
                        seen.jumps.len()
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

#[derive(Serialize)]
struct PlanJson<'a> {
    in_sync: bool,
    changes: &'a [netconverge::plan::Change],
    blocked: &'a [netconverge::plan::Blocked],
}

fn print_plan(plan: &Plan, format: DiffFormat) {
    match format {
        DiffFormat::Text => {
            print_all(plan);
            println!("{}", summary(plan));
        }
        DiffFormat::Json => {
            let j = PlanJson {
                in_sync: plan.in_sync(),
                changes: &plan.changes,
                blocked: &plan.blocked,
            };
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
        }
    }
}

/// Print a multi-line text in 64 KiB writes (stdout is line-buffered: a
/// plan of 40 000 lines would otherwise cost 40 000 syscalls).
fn print_all(text: impl std::fmt::Display) {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    let _ = write!(out, "{text}");
    let _ = out.flush();
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
        DiffFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(outcome).unwrap_or_default()
        ),
        DiffFormat::Text => {
            print_all(&outcome.initial);
            for f in &outcome.failures {
                println!("failed: {}: {}", f.object, f.error);
            }
            if outcome.converged() {
                println!("converged: {} change(s) applied", outcome.applied);
            } else {
                print_all(&outcome.remaining);
                println!("not converged: {}", summary(&outcome.remaining));
            }
        }
    }
}
