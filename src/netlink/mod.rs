//! The kernel transport, one room: rtnetlink connection setup and netlink
//! error classification (the typed [`Errno`] every failure carries), the
//! bulk socket ([`bulk`]) and the nexthop messages ([`nexthop`]). `observe`
//! and `apply` are thin users of it.
//!
//! Invariant: a [`Handle`] from [`connect`] talks to the network namespace of
//! the thread that called it (both of its sockets are opened there), over
//! sockets whose receive buffers hold every reply of a full window (link
//! requests: [`REQUEST_WINDOW`] ACKs; bulk requests: the bulk socket sizes
//! its window to the buffer it was granted), so pipelined requests never
//! lose their replies unnoticed.

use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use rtnetlink::sys::AsyncSocket;

pub mod bulk;
pub mod messages;
pub mod nexthop;

use bulk::BulkSocket;

/// Link requests kept in flight at once on one handle (every other object
/// goes through [`crate::netlink::bulk`]). Bounded so the ACKs the kernel queues for
/// us always fit in the socket's receive buffer: a dropped ACK would leave
/// its request waiting until [`REQUEST_TIMEOUT`].
pub const REQUEST_WINDOW: usize = 256;

/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max`, then
/// doubles it). Even the default cap (~416 KiB effective) holds a window of
/// ACKs; the larger buffer also keeps big dumps from stalling.
pub const RX_BUFFER_BYTES: usize = 8 << 20;

/// Upper bound on one request/ACK round trip. Only reached if the kernel's
/// reply was lost; turns a silent hang into a reported failure.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("rtnetlink needs a running tokio runtime (with I/O and time enabled)")]
    NoRuntime,
    #[error("cannot open an rtnetlink socket: {0}")]
    Open(#[source] io::Error),
}

/// The kernel connection of one network namespace: rtnetlink for links,
/// and the bulk socket ([`crate::netlink::bulk`]) for dumps and every other object,
/// nexthop objects included (which rtnetlink's message types do not cover,
/// see [`crate::netlink::nexthop`]). Dereferences to the rtnetlink handle.
#[derive(Debug, Clone)]
pub struct Handle {
    route: rtnetlink::Handle,
    bulk: Arc<BulkSocket>,
}

impl Handle {
    pub fn bulk(&self) -> &BulkSocket {
        &self.bulk
    }

    /// Test seam: this handle with another bulk socket (one built to lose
    /// replies, say).
    #[doc(hidden)]
    pub fn with_bulk(mut self, bulk: BulkSocket) -> Handle {
        self.bulk = Arc::new(bulk);
        self
    }
}

impl Deref for Handle {
    type Target = rtnetlink::Handle;
    fn deref(&self) -> &rtnetlink::Handle {
        &self.route
    }
}

/// Sizes a notification socket's receive buffer to `bytes`: with
/// SO_RCVBUFFORCE (root), which net.core.rmem_max does not cap, else
/// SO_RCVBUF (capped). The buffer is a limit, not an allocation: memory is
/// charged only while notifications wait in it. Returns what the kernel
/// reports afterwards (it doubles the value for its bookkeeping).
pub fn size_notification_buffer(socket: &netlink_sys::Socket, bytes: usize) -> io::Result<usize> {
    let forced =
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &bytes);
    if let Err(e) = forced {
        tracing::debug!("SO_RCVBUFFORCE {bytes}: {e}; falling back to SO_RCVBUF");
        socket.set_rx_buf_sz(i32::try_from(bytes).unwrap_or(i32::MAX))?;
    }
    socket.get_rx_buf_sz()
}

/// Open the rtnetlink and nexthop sockets in the calling thread's network
/// namespace and drive them on the current tokio runtime.
///
/// The runtime must have its I/O and time drivers enabled
/// (`Builder::enable_all`): the sockets are registered with the reactor and
/// requests are bounded by [`REQUEST_TIMEOUT`].
pub fn connect() -> Result<Handle, NetlinkError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
    let (mut connection, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(NetlinkError::Open)?;
    let socket = connection.socket_mut().socket_mut();
    // Best effort: a smaller buffer still works with the bounded window.
    let rx = i32::try_from(RX_BUFFER_BYTES).unwrap_or(i32::MAX);
    if let Err(e) = socket.set_rx_buf_sz(rx) {
        tracing::debug!("SO_RCVBUF {rx}: {e}");
    }
    // Error ACKs then carry only the request header, not the whole request.
    if let Err(e) = socket.set_cap_ack(true) {
        tracing::debug!("NETLINK_CAP_ACK: {e}");
    }
    tracing::trace!(rx_buffer = ?socket.get_rx_buf_sz().ok(), "rtnetlink connected");
    runtime.spawn(connection);
    let bulk = BulkSocket::open(RX_BUFFER_BYTES).map_err(NetlinkError::Open)?;
    Ok(Handle {
        route: handle,
        bulk: Arc::new(bulk),
    })
}

/// An errno value (always positive, e.g. `libc::EEXIST`): what the kernel
/// answered, or what a system call failed with. Failures carry it so
/// callers decide by value (`Errno::EPERM`), never by matching message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ESRCH: Errno = Errno(libc::ESRCH);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const ENOBUFS: Errno = Errno(libc::ENOBUFS);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EADDRNOTAVAIL: Errno = Errno(libc::EADDRNOTAVAIL);

    /// From either sign (netlink NACKs carry `-errno`).
    pub const fn new(code: i32) -> Errno {
        Errno(code.saturating_abs())
    }

    /// The positive value, as `libc` spells it.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The errno of an I/O error, if it came from a system call.
    pub fn of_io(e: &io::Error) -> Option<Errno> {
        e.raw_os_error().map(Errno::new)
    }

    /// A missing privilege (EPERM, EACCES): not drift, but a process that
    /// lacks CAP_NET_ADMIN or root.
    pub fn is_permission(self) -> bool {
        matches!(self.0, libc::EPERM | libc::EACCES)
    }
}

impl std::fmt::Display for Errno {
    /// The system's description: `File exists (os error 17)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

/// As its number (`"errno": 17` in JSON output).
impl serde::Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0)
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

/// The errno of a kernel NACK, if `e` is one.
pub fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::new(c.get())),
        _ => None,
    }
}

/// Human text for a netlink failure: the errno's description for kernel
/// NACKs (`File exists (os error 17)`), the library's message otherwise.
pub fn error_text(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(code) => code.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;

    fn nack(code: i32) -> rtnetlink::Error {
        let mut m = ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(code);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn errno_is_positive_and_text_names_it() {
        let e = nack(-libc::EEXIST);
        assert_eq!(errno(&e), Some(Errno::EEXIST));
        assert_eq!(errno(&e).map(Errno::raw), Some(libc::EEXIST));
        assert!(error_text(&e).contains("File exists"), "{}", error_text(&e));
        assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
        assert_eq!(
            error_text(&rtnetlink::Error::RequestFailed),
            "A netlink request failed"
        );
    }

    #[test]
    fn errno_is_a_value_with_the_systems_text() {
        assert_eq!(Errno::new(-libc::EPERM), Errno::EPERM);
        assert_eq!(Errno::new(libc::EPERM).raw(), libc::EPERM);
        assert!(Errno::EPERM.is_permission() && Errno::EACCES.is_permission());
        assert!(!Errno::EEXIST.is_permission());
        assert_eq!(Errno::EEXIST.to_string(), "File exists (os error 17)");
        assert_eq!(
            Errno::of_io(&io::Error::from_raw_os_error(libc::ENOENT)),
            Some(Errno::ENOENT)
        );
        assert_eq!(Errno::of_io(&io::Error::other("no errno")), None);
        assert_eq!(serde_json::to_string(&Errno::ENODEV).unwrap(), "19");
    }
}
