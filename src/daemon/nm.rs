//! NetworkManager on the system D-Bus: hints that make a converge pass happen
//! sooner (an underlay was re-activated) or explain one (it was torn down).
//!
//! Invariant: nothing here decides state — netlink stays the source of truth
//! and every pass re-reads the kernel. All D-Bus work runs in its own task;
//! no bus, no NetworkManager, or either going away is logged once per state
//! change and retried with bounded backoff, never a crash or a stall of the
//! daemon loop.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::metrics::SourceState;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use zbus::export::ordered_stream::{OrderedStreamExt, join};
use zbus::fdo::DBusProxy;
use zbus::names::BusName;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

use super::Hint;
use crate::model::{Desired, NmMode};

/// NetworkManager's well-known name on the system bus.
pub const BUS_NAME: &str = "org.freedesktop.NetworkManager";
const DEVICE_INTERFACE: &str = "org.freedesktop.NetworkManager.Device";
/// Connecting to the bus (a wedged bus must not hold the task forever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Any single method call or property read.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a `DeviceRemoved` without a teardown waits for NetworkManager
/// to leave the bus (then it was quitting, and the link stays).
const REMOVAL_GRACE: Duration = Duration::from_secs(1);
/// Where zbus looks when `DBUS_SYSTEM_BUS_ADDRESS` is unset.
const DEFAULT_SOCKETS: [&str; 2] = [
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

mod manager {
    //! `org.freedesktop.NetworkManager` (the manager object).
    use zbus::zvariant::{ObjectPath, OwnedObjectPath};

    #[zbus::proxy(
        interface = "org.freedesktop.NetworkManager",
        default_service = "org.freedesktop.NetworkManager",
        default_path = "/org/freedesktop/NetworkManager"
    )]
    pub trait NetworkManager {
        fn get_device_by_ip_iface(&self, iface: &str) -> zbus::Result<OwnedObjectPath>;

        #[zbus(property(emits_changed_signal = "false"))]
        fn version(&self) -> zbus::Result<String>;

        #[zbus(signal)]
        fn device_added(&self, device_path: ObjectPath<'_>) -> zbus::Result<()>;

        #[zbus(signal)]
        fn device_removed(&self, device_path: ObjectPath<'_>) -> zbus::Result<()>;

        #[zbus(signal)]
        fn state_changed(&self, state: u32) -> zbus::Result<()>;
    }
}

mod device {
    //! `org.freedesktop.NetworkManager.Device` (one object per device).
    #[zbus::proxy(
        interface = "org.freedesktop.NetworkManager.Device",
        default_service = "org.freedesktop.NetworkManager"
    )]
    pub trait Device {
        #[zbus(property(emits_changed_signal = "false"))]
        fn interface(&self) -> zbus::Result<String>;

        #[zbus(property(emits_changed_signal = "false"))]
        fn state(&self) -> zbus::Result<u32>;

        #[zbus(property(emits_changed_signal = "false"))]
        fn managed(&self) -> zbus::Result<bool>;

        #[zbus(signal)]
        fn state_changed(&self, new_state: u32, old_state: u32, reason: u32) -> zbus::Result<()>;
    }
}

/// `NMDeviceState` values this module acts on.
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const UNMANAGED: u32 = 10;
    pub const UNAVAILABLE: u32 = 20;
    pub const DISCONNECTED: u32 = 30;
    pub const PREPARE: u32 = 40;
    pub const ACTIVATED: u32 = 100;
    pub const DEACTIVATING: u32 = 110;
    pub const FAILED: u32 = 120;
}

#[derive(Debug, thiserror::Error)]
pub enum NmError {
    #[error("{0}")]
    Bus(#[from] zbus::Error),
    #[error("{0}")]
    Fdo(#[from] zbus::fdo::Error),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

async fn bounded<T, E: Into<NmError>>(
    limit: Duration,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, NmError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(NmError::Timeout(limit)),
    }
}

fn device_state_name(s: u32) -> &'static str {
    match s {
        0 => "unknown",
        10 => "unmanaged",
        20 => "unavailable",
        30 => "disconnected",
        40 => "prepare",
        50 => "config",
        60 => "need-auth",
        70 => "ip-config",
        80 => "ip-check",
        90 => "secondaries",
        100 => "activated",
        110 => "deactivating",
        120 => "failed",
        _ => "?",
    }
}

fn manager_state_name(s: u32) -> &'static str {
    match s {
        10 => "asleep",
        20 => "disconnected",
        30 => "disconnecting",
        40 => "connecting",
        50 => "connected (local only)",
        60 => "connected (site only)",
        70 => "connected (global)",
        _ => "unknown",
    }
}

/// `NMDeviceStateReason`, for the logs (the number is always printed too).
fn reason_name(r: u32) -> &'static str {
    match r {
        0 => "none",
        2 => "now managed",
        3 => "now unmanaged",
        4 => "configuration failed",
        5 => "IP configuration unavailable",
        36 => "device removed",
        37 => "NetworkManager went to sleep",
        38 => "connection removed",
        39 => "user requested",
        40 => "carrier changed",
        41 => "connection assumed",
        _ => "other",
    }
}

fn is_active(s: u32) -> bool {
    (state::PREPARE..=state::ACTIVATED).contains(&s)
}

fn is_down(s: u32) -> bool {
    matches!(
        s,
        state::UNKNOWN
            | state::UNMANAGED
            | state::UNAVAILABLE
            | state::DISCONNECTED
            | state::DEACTIVATING
            | state::FAILED
    )
}

/// Turns NetworkManager device events of the underlays into [`Hint`]s:
/// sans-IO (time comes in as `now`), so the mapping and its grace timer are
/// unit-tested without a bus or a runtime. At most one `Deactivated` per
/// teardown however NM phrases it (state changes and `DeviceRemoved` arrive
/// in either order). A `DeviceRemoved` without a teardown is held for
/// [`REMOVAL_GRACE`]: NetworkManager unexports every device, leaving the
/// links in place, just before it quits, so only a removal not followed by
/// its departure explains a vanished underlay.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Last hint per interface: `true` after Activated, `false` after Deactivated.
    last: HashMap<String, bool>,
    /// Underlays removed without a teardown → when the removal counts.
    pending: HashMap<String, Instant>,
}

/// What one device `StateChanged` meant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Transition {
    /// A held removal confirmed by the device coming back (it was rebuilt).
    pub removed: Option<Hint>,
    /// The transition itself.
    pub hint: Option<Hint>,
}

impl Tracker {
    /// The state found when (re)discovering a device: no hint, but later
    /// transitions are judged against it.
    pub fn seed(&mut self, iface: &str, current: u32) {
        if current == state::ACTIVATED {
            self.last.insert(iface.to_string(), true);
        } else if is_down(current) {
            self.last.insert(iface.to_string(), false);
        }
    }

    /// `Device.StateChanged (new, old, reason)`.
    pub fn state_changed(&mut self, iface: &str, new: u32, old: u32) -> Transition {
        let mut out = Transition::default();
        if new == state::ACTIVATED && self.pending.remove(iface).is_some() {
            // removed and back already: it was rebuilt
            out.removed = self.confirm_removal(iface);
        }
        if new == state::ACTIVATED && old != state::ACTIVATED {
            self.last.insert(iface.to_string(), true);
            out.hint = Some(Hint::Activated(iface.to_string()));
        } else if is_down(new) && is_active(old) && self.last.get(iface) != Some(&false) {
            self.last.insert(iface.to_string(), false);
            self.pending.remove(iface);
            out.hint = Some(Hint::Deactivated(iface.to_string()));
        }
        out
    }

    /// `DeviceRemoved` at `now`: `false` when already explained (the device
    /// was deactivated first); else the removal is held until
    /// [`Tracker::expire`] confirms it, or NetworkManager's departure
    /// ([`Tracker::forget_all`]) shows it was quitting.
    pub fn removed(&mut self, iface: &str, now: Instant) -> bool {
        if self.is_down(iface) {
            return false;
        }
        self.pending
            .entry(iface.to_string())
            .or_insert(now + REMOVAL_GRACE);
        true
    }

    fn confirm_removal(&mut self, iface: &str) -> Option<Hint> {
        if self.last.get(iface) == Some(&false) {
            return None;
        }
        self.last.insert(iface.to_string(), false);
        Some(Hint::Deactivated(iface.to_string()))
    }

    /// When the next held removal counts.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    /// The held removals that count at `now` (in name order).
    pub fn expire(&mut self, now: Instant) -> Vec<Hint> {
        let mut due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(i, _)| i.clone())
            .collect();
        due.sort();
        due.iter()
            .filter_map(|iface| {
                self.pending.remove(iface);
                self.confirm_removal(iface)
            })
            .collect()
    }

    /// Was the last hint for `iface` a deactivation?
    pub fn is_down(&self, iface: &str) -> bool {
        self.last.get(iface) == Some(&false)
    }

    /// Follow only `names` (a reload changed the underlays).
    pub fn retain(&mut self, names: &BTreeSet<String>) {
        self.pending.retain(|n, _| names.contains(n));
    }

    /// NetworkManager left or (re)appeared: start over. Returns whether
    /// removals were held (NetworkManager quitting unexported them).
    pub fn forget_all(&mut self) -> bool {
        self.last.clear();
        let held = !self.pending.is_empty();
        self.pending.clear();
        held
    }
}

/// The underlays (by interface name) whose NetworkManager events matter:
/// those `desired` names (an underlay found by address has a placeholder
/// name until a pass finds it: see [`resolved_underlays`]).
pub fn underlays(desired: &Desired) -> BTreeSet<String> {
    resolved_underlays(desired, desired)
}

/// [`underlays`] with the underlays found by address as `resolved` (the
/// desired state [`Desired::resolve_underlays`] made of the last pass's
/// observation) has them; one still unresolved is left out.
pub fn resolved_underlays(desired: &Desired, resolved: &Desired) -> BTreeSet<String> {
    desired
        .vxlans
        .iter()
        .zip(&resolved.vxlans)
        .filter(|(d, r)| !desired.underlay_by_local.contains(&d.name) || r.underlay != d.underlay)
        .map(|(_, r)| r.underlay.clone())
        .collect()
}

/// A running NetworkManager follower. Dropping it stops the task.
#[derive(Debug)]
pub struct Watcher {
    hints: mpsc::UnboundedReceiver<Hint>,
    underlays: watch::Sender<BTreeSet<String>>,
}

impl Watcher {
    /// The next hint; `None` only if the task is gone.
    pub async fn recv(&mut self) -> Option<Hint> {
        self.hints.recv().await
    }

    /// Follow a new set of underlays (after a reload).
    pub fn set_underlays(&self, names: BTreeSet<String>) {
        self.underlays.send_if_modified(|cur| {
            if *cur == names {
                return false;
            }
            *cur = names;
            true
        });
    }
}

/// Start following NetworkManager for `underlays` on the system bus, in a
/// task of the current tokio runtime.
pub fn spawn(underlays: BTreeSet<String>) -> Watcher {
    spawn_on(None, underlays)
}

/// [`spawn`] on the bus at `address` (`unix:path=…`) instead of the system
/// bus; `None` is the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or its default).
pub fn spawn_on(address: Option<String>, underlays: BTreeSet<String>) -> Watcher {
    let (tx, hints) = mpsc::unbounded_channel();
    let (underlays_tx, underlays_rx) = watch::channel(underlays);
    tokio::spawn(follow(address, underlays_rx, tx));
    Watcher {
        hints,
        underlays: underlays_tx,
    }
}

/// After a reload: keep, retarget, start or stop the follower so it matches
/// `desired` (`networkmanager = "off"` drops it, which ends its task).
pub fn reconfigure(current: Option<Watcher>, desired: &Desired) -> Option<Watcher> {
    match (desired.daemon.networkmanager, current) {
        (NmMode::Off, _) => None,
        (NmMode::Auto, Some(w)) => {
            w.set_underlays(underlays(desired));
            Some(w)
        }
        (NmMode::Auto, None) => Some(spawn(underlays(desired))),
    }
}

/// Is a system bus configured at all? Without `DBUS_SYSTEM_BUS_ADDRESS` and
/// without the default socket (build sandboxes, minimal nodes) there is
/// nothing to try, and nothing to wait for.
pub fn system_bus_configured() -> bool {
    std::env::var_os("DBUS_SYSTEM_BUS_ADDRESS").is_some()
        || DEFAULT_SOCKETS
            .iter()
            .any(|p| std::path::Path::new(p).exists())
}

async fn connect(address: Option<&str>, limit: Duration) -> Result<zbus::Connection, NmError> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a)?,
        None => zbus::connection::Builder::system()?,
    }
    .method_timeout(limit);
    bounded(limit, builder.build()).await
}

fn nm_name() -> Result<BusName<'static>, NmError> {
    Ok(BusName::try_from(BUS_NAME).map_err(zbus::Error::from)?)
}

/// Of `names` (devices netconverge owns), those NetworkManager manages —
/// which means it may reconfigure or delete them. Empty when there is no
/// bus or no NetworkManager; the whole query is bounded by `budget`.
pub async fn managed_devices(names: &[String], budget: Duration) -> Result<Vec<String>, NmError> {
    if names.is_empty() || !system_bus_configured() {
        return Ok(Vec::new());
    }
    bounded(budget, async {
        let conn = connect(None, budget).await?;
        let dbus = DBusProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        if !dbus.name_has_owner(nm_name()?).await? {
            return Ok(Vec::new());
        }
        let nm = manager::NetworkManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let mut managed = Vec::new();
        for name in names {
            // UnknownDevice: NetworkManager does not know it (yet)
            let Ok(path) = nm.get_device_by_ip_iface(name).await else {
                continue;
            };
            let dev = device_proxy(&conn, path).await?;
            if let Ok(true) = dev.managed().await {
                managed.push(name.clone());
            }
        }
        Ok::<_, NmError>(managed)
    })
    .await
}

/// The warning `validate` and `converge --check` print for such a device.
pub fn managed_warning(device: &str) -> String {
    format!(
        "warning: NetworkManager manages {device}, which netconverge owns: it may reconfigure or delete it. \
         Mark it unmanaged, e.g. `[keyfile] unmanaged-devices=interface-name:{device}` \
         (see docs/networkmanager.md)"
    )
}

async fn device_proxy(
    conn: &zbus::Connection,
    path: OwnedObjectPath,
) -> Result<device::DeviceProxy<'static>, NmError> {
    Ok(device::DeviceProxy::builder(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

// ------------------------------------------------------------ the task --

/// What the bus told us, in arrival order per source.
#[derive(Debug)]
enum Signal {
    /// `NameOwnerChanged` for NetworkManager: `Some(owner)` appeared.
    Owner(Option<String>),
    Added(OwnedObjectPath),
    Removed(OwnedObjectPath),
    Manager(u32),
    Device {
        path: OwnedObjectPath,
        new: u32,
        old: u32,
        reason: u32,
    },
}

/// Why a session ended.
enum End {
    /// The daemon dropped the [`Watcher`].
    Stopped,
    /// No usable connection (connecting or subscribing failed).
    Failed(String),
    /// An established connection failed or closed.
    Lost(String),
}

/// The source's state in the metrics (`netconverge_source_state`): set on
/// every transition, including the first discovery, which sends no hint.
fn report(state: SourceState) {
    crate::metrics::get().set_source(crate::metrics::SOURCE_NM, state);
}

/// Logging once per state change, and NmUp/NmDown only on transitions.
#[derive(Debug, Default)]
struct Status {
    bus_down: bool,
    /// `None` until first known: the first discovery at startup is no hint.
    nm_present: Option<bool>,
}

impl Status {
    fn unreachable(&mut self, e: &str) {
        report(SourceState::Disconnected);
        if !self.bus_down {
            info!(
                "NetworkManager: system D-Bus not reachable ({e}); following the kernel alone, retrying in the background"
            );
            self.bus_down = true;
        } else {
            debug!("NetworkManager: system D-Bus still not reachable: {e}");
        }
        if self.nm_present.is_none() {
            self.nm_present = Some(false);
        }
    }

    fn connected(&mut self) {
        if self.bus_down {
            info!("NetworkManager: system D-Bus reachable again");
        }
        self.bus_down = false;
    }

    fn lost(&mut self, why: &str, tx: &mpsc::UnboundedSender<Hint>) {
        warn!(
            "NetworkManager: system D-Bus connection lost ({why}); following the kernel alone, reconnecting"
        );
        self.bus_down = true;
        self.nm_gone(tx);
    }

    fn nm_gone(&mut self, tx: &mpsc::UnboundedSender<Hint>) {
        report(SourceState::Disconnected);
        if self.nm_present == Some(true) {
            let _ = tx.send(Hint::NmDown);
        }
        self.nm_present = Some(false);
    }

    fn nm_absent_at_connect(&mut self) {
        report(SourceState::Disconnected);
        if self.nm_present != Some(false) {
            info!(
                "NetworkManager is not running (not on the system bus); following the kernel alone until it appears"
            );
        }
        self.nm_present = Some(false);
    }

    fn nm_here(&mut self, tx: &mpsc::UnboundedSender<Hint>) {
        report(SourceState::Connected);
        if self.nm_present == Some(false) {
            let _ = tx.send(Hint::NmUp);
        }
        self.nm_present = Some(true);
    }
}

async fn follow(
    address: Option<String>,
    mut underlays: watch::Receiver<BTreeSet<String>>,
    tx: mpsc::UnboundedSender<Hint>,
) {
    let mut status = Status::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let end = match connect(address.as_deref(), CONNECT_TIMEOUT).await {
            Err(e) => End::Failed(e.to_string()),
            Ok(conn) => session(conn, &mut underlays, &tx, &mut status).await,
        };
        match end {
            End::Stopped => return,
            End::Failed(e) => status.unreachable(&e),
            End::Lost(why) => {
                status.lost(&why, &tx);
                backoff = BACKOFF_MIN;
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Forwards every subscribed signal into one unbounded queue, so a stream is
/// never left full while the session awaits a method reply (zbus stops
/// reading the socket when any subscription queue is full).
struct Pump(tokio::task::JoinHandle<()>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn subscribe(
    conn: &zbus::Connection,
    dbus: &DBusProxy<'static>,
    nm: &manager::NetworkManagerProxy<'static>,
) -> Result<(Pump, mpsc::UnboundedReceiver<Signal>), NmError> {
    let owner = dbus
        .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
        .await?;
    let owner = OrderedStreamExt::filter_map(owner, |s| {
        let args = s.args().ok()?;
        Some(Signal::Owner(
            args.new_owner().as_ref().map(|n| n.to_string()),
        ))
    });
    let added = OrderedStreamExt::filter_map(nm.receive_device_added().await?, |s| {
        let args = s.args().ok()?;
        Some(Signal::Added(args.device_path().clone().into()))
    });
    let removed = OrderedStreamExt::filter_map(nm.receive_device_removed().await?, |s| {
        let args = s.args().ok()?;
        Some(Signal::Removed(args.device_path().clone().into()))
    });
    let manager_state = OrderedStreamExt::filter_map(nm.receive_state_changed().await?, |s| {
        Some(Signal::Manager(*s.args().ok()?.state()))
    });
    // One subscription for the StateChanged of every device (object paths
    // are not known in advance and survive a rebuild); the bus only
    // delivers NetworkManager's own.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)?
        .interface(DEVICE_INTERFACE)?
        .member("StateChanged")?
        .build();
    let devices = zbus::MessageStream::for_match_rule(rule, conn, None).await?;
    let devices = OrderedStreamExt::filter_map(devices, |m| {
        let s = device::StateChanged::from_message(m.ok()?)?;
        let path = s.message().header().path()?.to_owned().into();
        let a = s.args().ok()?;
        Some(Signal::Device {
            path,
            new: *a.new_state(),
            old: *a.old_state(),
            reason: *a.reason(),
        })
    });
    // Merged in the order the socket delivered them (a device's
    // DeviceAdded before its StateChanged, a departure before a return).
    let all = join(
        join(owner, removed),
        join(join(added, manager_state), devices),
    );
    let all = OrderedStreamExt::into_stream(all);
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let mut all = std::pin::pin!(all);
        while let Some(s) = all.next().await {
            if sig_tx.send(s).is_err() {
                return;
            }
        }
        // every stream ended: the connection is gone (dropping sig_tx says so)
    });
    Ok((Pump(handle), sig_rx))
}

/// NetworkManager as seen by one bus connection.
struct Session {
    conn: zbus::Connection,
    nm: manager::NetworkManagerProxy<'static>,
    /// Object path → interface, for the underlays NetworkManager knows.
    paths: HashMap<OwnedObjectPath, String>,
    tracker: Tracker,
    names: BTreeSet<String>,
}

impl Session {
    /// When the tracker's next held removal counts.
    fn next_removal(&self) -> Option<tokio::time::Instant> {
        self.tracker
            .next_deadline()
            .map(tokio::time::Instant::from_std)
    }

    fn expire_removals(&mut self, tx: &mpsc::UnboundedSender<Hint>) {
        for hint in self.tracker.expire(Instant::now()) {
            if let Hint::Deactivated(iface) = &hint {
                info!("NetworkManager: {iface} removed");
            }
            let _ = tx.send(hint);
        }
    }

    fn emit(&self, tx: &mpsc::UnboundedSender<Hint>, hint: Option<Hint>) {
        if let Some(h) = hint {
            let _ = tx.send(h);
        }
    }

    /// NetworkManager is (again) on the bus: find the underlays it knows.
    async fn discover(&mut self) {
        self.paths.clear();
        self.tracker.forget_all();
        let version = bounded(CALL_TIMEOUT, self.nm.version())
            .await
            .unwrap_or_else(|_| "?".into());
        let mut found = Vec::new();
        for name in self.names.clone() {
            match self.lookup(&name).await {
                Some((path, st)) => {
                    self.tracker.seed(&name, st);
                    self.paths.insert(path, name.clone());
                    found.push(format!("{name} ({})", device_state_name(st)));
                }
                None => found.push(format!("{name} (not a NetworkManager device)")),
            }
        }
        info!(
            "NetworkManager {version}: following underlay(s) {}",
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        );
    }

    async fn lookup(&self, name: &str) -> Option<(OwnedObjectPath, u32)> {
        let path = match bounded(CALL_TIMEOUT, self.nm.get_device_by_ip_iface(name)).await {
            Ok(p) => p,
            Err(e) => {
                debug!("NetworkManager: no device {name}: {e}");
                return None;
            }
        };
        let st = self.device_state(&path).await.unwrap_or(state::UNKNOWN);
        Some((path, st))
    }

    async fn device_state(&self, path: &OwnedObjectPath) -> Option<u32> {
        let dev = device_proxy(&self.conn, path.clone()).await.ok()?;
        bounded(CALL_TIMEOUT, dev.state()).await.ok()
    }

    /// The set of underlays changed (reload).
    async fn retarget(&mut self, names: BTreeSet<String>) {
        self.paths.retain(|_, n| names.contains(n));
        self.tracker.retain(&names);
        let new: Vec<String> = names
            .iter()
            .filter(|n| !self.paths.values().any(|v| v == *n))
            .cloned()
            .collect();
        self.names = names;
        for name in new {
            if let Some((path, st)) = self.lookup(&name).await {
                self.tracker.seed(&name, st);
                self.paths.insert(path, name);
            }
        }
        debug!("NetworkManager: now following underlay(s) {:?}", self.names);
    }

    async fn on_signal(&mut self, s: Signal, tx: &mpsc::UnboundedSender<Hint>) {
        match s {
            Signal::Owner(_) => {}
            Signal::Manager(st) => {
                debug!("NetworkManager state: {} ({st})", manager_state_name(st));
            }
            Signal::Added(path) => {
                // Only learn the path: the device's StateChanged signals
                // follow in order (a State read here would run ahead of them).
                let dev = match device_proxy(&self.conn, path.clone()).await {
                    Ok(d) => d,
                    Err(e) => return debug!("NetworkManager: device {}: {e}", path.as_str()),
                };
                let Ok(iface) = bounded(CALL_TIMEOUT, dev.interface()).await else {
                    return;
                };
                if self.names.contains(&iface) {
                    debug!("NetworkManager: {iface} added ({})", path.as_str());
                    self.paths.insert(path, iface);
                } else {
                    self.paths.remove(&path);
                }
            }
            Signal::Removed(path) => {
                let Some(iface) = self.paths.get(&path).cloned() else {
                    return;
                };
                if self.tracker.removed(&iface, Instant::now()) {
                    debug!(
                        "NetworkManager: {iface} removed without deactivation; waiting {} ms to tell it from NetworkManager quitting",
                        REMOVAL_GRACE.as_millis()
                    );
                } else {
                    debug!("NetworkManager: {iface} removed (already deactivated)");
                }
            }
            Signal::Device {
                path,
                new,
                old,
                reason,
            } => {
                let Some(iface) = self.paths.get(&path).cloned() else {
                    return;
                };
                let Transition { removed, hint } = self.tracker.state_changed(&iface, new, old);
                if removed.is_some() {
                    info!("NetworkManager: {iface} removed");
                }
                self.emit(tx, removed);
                let why = format!("reason {reason}: {}", reason_name(reason));
                match &hint {
                    Some(Hint::Activated(_)) => {
                        info!("NetworkManager: {iface} activated ({why})");
                    }
                    Some(Hint::Deactivated(_)) => {
                        info!(
                            "NetworkManager: {iface} deactivated ({why}; {} → {})",
                            device_state_name(old),
                            device_state_name(new)
                        );
                    }
                    _ => debug!(
                        "NetworkManager: {iface} {} → {} ({why})",
                        device_state_name(old),
                        device_state_name(new)
                    ),
                }
                self.emit(tx, hint);
            }
        }
    }
}

async fn session(
    conn: zbus::Connection,
    underlays: &mut watch::Receiver<BTreeSet<String>>,
    tx: &mpsc::UnboundedSender<Hint>,
    status: &mut Status,
) -> End {
    let setup = async {
        let dbus = DBusProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let nm = manager::NetworkManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // subscribe first, then look: nothing in between can be missed
        let (pump, signals) = subscribe(&conn, &dbus, &nm).await?;
        let present = bounded(CALL_TIMEOUT, dbus.name_has_owner(nm_name()?)).await?;
        Ok::<_, NmError>((nm, pump, signals, present))
    };
    let (nm, _pump, mut signals, present) = match bounded(CONNECT_TIMEOUT, setup).await {
        Ok(x) => x,
        Err(e) => return End::Failed(e.to_string()),
    };
    status.connected();
    let mut s = Session {
        conn,
        nm,
        paths: HashMap::new(),
        tracker: Tracker::default(),
        names: underlays.borrow_and_update().clone(),
    };
    if present {
        status.nm_here(tx);
        s.discover().await;
    } else {
        status.nm_absent_at_connect();
    }
    loop {
        let removal = s.next_removal();
        tokio::select! {
            _ = tx.closed() => return End::Stopped,
            _ = tokio::time::sleep_until(removal.unwrap_or_else(tokio::time::Instant::now)), if removal.is_some() => {
                s.expire_removals(tx);
            }
            changed = underlays.changed() => {
                if changed.is_err() {
                    return End::Stopped;
                }
                let names = underlays.borrow_and_update().clone();
                s.retarget(names).await;
            }
            sig = signals.recv() => match sig {
                None => return End::Lost("connection closed".into()),
                Some(Signal::Owner(Some(owner))) => {
                    debug!("NetworkManager appeared on the system bus ({owner})");
                    status.nm_here(tx);
                    s.discover().await;
                }
                Some(Signal::Owner(None)) => {
                    // the daemon logs the NmDown hint: once, in one place
                    debug!("NetworkManager left the system bus");
                    if s.tracker.forget_all() {
                        debug!("NetworkManager quit: its devices stay in place");
                    }
                    status.nm_gone(tx);
                    s.paths.clear();
                }
                Some(other) => s.on_signal(other, tx).await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(i: &str) -> Transition {
        Transition {
            removed: None,
            hint: Some(Hint::Activated(i.into())),
        }
    }
    fn deact(i: &str) -> Transition {
        Transition {
            removed: None,
            hint: Some(Hint::Deactivated(i.into())),
        }
    }
    const NONE: Transition = Transition {
        removed: None,
        hint: None,
    };

    #[test]
    fn down_up_cycle_gives_one_deactivated_and_one_activated() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.seed("m", state::ACTIVATED);
        // nmcli connection down: 100 → 110 → 30, then DeviceRemoved
        assert_eq!(t.state_changed("m", 110, 100), deact("m"));
        assert_eq!(t.state_changed("m", 30, 110), NONE);
        assert!(!t.removed("m", now), "already explained");
        assert_eq!(t.next_deadline(), None);
        // up: DeviceAdded, then 20 → 30 → 40 … → 100
        for (new, old) in [(30, 20), (40, 30), (50, 40), (70, 50), (80, 70), (90, 80)] {
            assert_eq!(t.state_changed("m", new, old), NONE, "{old} → {new}");
        }
        assert_eq!(t.state_changed("m", 100, 90), act("m"));
    }

    #[test]
    fn a_removal_without_teardown_counts_only_after_the_grace() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.seed("m", state::ACTIVATED);
        assert!(t.removed("m", t0));
        // a second DeviceRemoved does not postpone it
        assert!(t.removed("m", t0 + Duration::from_millis(500)));
        assert_eq!(t.next_deadline(), Some(t0 + REMOVAL_GRACE));
        assert!(
            t.expire(t0 + REMOVAL_GRACE - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(
            t.expire(t0 + REMOVAL_GRACE),
            vec![Hint::Deactivated("m".into())]
        );
        assert_eq!(t.next_deadline(), None);
        // the teardown state changes that follow add nothing
        assert_eq!(t.state_changed("m", 110, 100), NONE);
        // an unknown device disappearing is explained once
        assert!(t.removed("x", t0));
        assert_eq!(t.expire(t0 + REMOVAL_GRACE).len(), 1);
        assert!(!t.removed("x", t0));
    }

    #[test]
    fn networkmanager_quitting_cancels_held_removals() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.seed("m", state::ACTIVATED);
        t.seed("n", state::ACTIVATED);
        assert!(t.removed("m", t0) && t.removed("n", t0));
        assert!(t.forget_all(), "removals were held");
        assert!(t.expire(t0 + REMOVAL_GRACE).is_empty());
        assert!(!t.forget_all());
        // a reload that stops following n drops its removal only
        assert!(t.removed("m", t0) && t.removed("n", t0));
        t.retain(&["m".to_string()].into());
        assert_eq!(
            t.expire(t0 + REMOVAL_GRACE),
            vec![Hint::Deactivated("m".into())]
        );
    }

    #[test]
    fn removed_then_activated_again_is_a_rebuild_explained_before_the_grace() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.seed("m", state::ACTIVATED);
        assert!(t.removed("m", t0));
        assert_eq!(
            t.state_changed("m", 100, 90),
            Transition {
                removed: Some(Hint::Deactivated("m".into())),
                hint: Some(Hint::Activated("m".into())),
            }
        );
        assert_eq!(t.next_deadline(), None);
        // a teardown while held explains the removal: no second hint later
        assert!(t.removed("m", t0));
        assert_eq!(t.state_changed("m", 110, 100), deact("m"));
        assert!(t.expire(t0 + REMOVAL_GRACE).is_empty());
    }

    #[test]
    fn failures_and_reactivation() {
        let mut t = Tracker::default();
        assert_eq!(t.state_changed("m", 100, 90), act("m"));
        // failure during activation after a teardown: no second Deactivated
        assert_eq!(t.state_changed("m", 110, 100), deact("m"));
        assert_eq!(t.state_changed("m", 120, 70), NONE);
        // failure of an activated device
        assert_eq!(t.state_changed("m", 100, 90), act("m"));
        assert_eq!(t.state_changed("m", 120, 100), deact("m"));
    }

    #[test]
    fn transitions_between_inactive_states_are_not_hints() {
        let mut t = Tracker::default();
        assert_eq!(t.state_changed("m", 20, 10), NONE);
        assert_eq!(t.state_changed("m", 30, 20), NONE);
        assert_eq!(t.state_changed("m", 10, 30), NONE);
        assert_eq!(t.state_changed("m", 70, 50), NONE);
    }

    #[test]
    fn an_underlay_found_by_address_is_followed_once_resolved() {
        let vxlan = |name: &str, underlay: &str| crate::model::VxlanSpec {
            name: name.into(),
            vni: 1,
            port: 8472,
            underlay: underlay.into(),
            family: crate::model::Family::Ipv4,
            local: Some("192.0.2.11".parse().unwrap()),
            mac: None,
            mtu: None,
            learning: false,
            gbp: false,
        };
        let d = Desired {
            vxlans: vec![
                vxlan("flannel.1", "(interface with 192.0.2.11)"),
                vxlan("legacy.7", "eth9"),
            ],
            underlay_by_local: ["flannel.1".to_string()].into(),
            ..Desired::default()
        };
        // the placeholder is never followed
        assert_eq!(underlays(&d), ["eth9".to_string()].into());
        let mut r = d.clone();
        if let Some(v) = r.vxlans.first_mut() {
            v.underlay = "eth-a".into();
        }
        assert_eq!(
            resolved_underlays(&d, &r),
            ["eth-a".to_string(), "eth9".to_string()].into()
        );
    }

    #[test]
    fn reconfigure_follows_the_mode() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut d = Desired::default();
            d.daemon.networkmanager = NmMode::Off;
            assert!(reconfigure(None, &d).is_none());
            d.daemon.networkmanager = NmMode::Auto;
            let w = reconfigure(None, &d).unwrap();
            let w = reconfigure(Some(w), &d).unwrap();
            d.daemon.networkmanager = NmMode::Off;
            assert!(reconfigure(Some(w), &d).is_none());
        });
    }
}
