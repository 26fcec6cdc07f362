//! Bulk kernel writes over one dedicated rtnetlink socket: requests packed
//! many to a datagram, without `NLM_F_ACK` (the kernel answers only
//! failures), and a `NLMSG_NOOP` barrier carrying `NLM_F_ACK` at the end of
//! every window. The kernel handles a socket's requests in order, inside
//! the sending syscall, so once the barrier is acknowledged every NACK of
//! the window has been read: a request without one succeeded.
//!
//! The same socket serves dumps ([`BulkSocket::dump`]): replies are parsed
//! straight out of the received datagrams and handed over one by one, with
//! no per-message queueing.
//!
//! Invariant: every request gets exactly one verdict. A window is never
//! larger than the receive buffer can hold NACKs for; if replies are lost
//! anyway (ENOBUFS, timeout, a failed send) the requests without a verdict
//! are reported as [`BulkError::Lost`], never as applied. A dump either
//! ends with the kernel's NLMSG_DONE, unmarked by `NLM_F_DUMP_INTR`, or is
//! run again from scratch (a bounded number of times), or fails: callers
//! only ever see a consistent snapshot of one object kind.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};

use super::nexthop::NexthopNetlinkMessage;
use super::{Errno, REQUEST_TIMEOUT};

/// Datagrams are flushed once they reach this size (the kernel accepts up
/// to the socket's send buffer, 208 KiB by default).
const DATAGRAM_BYTES: usize = 64 << 10;
/// Receive-buffer bytes budgeted per outstanding NACK (its skb's truesize
/// is well under this).
const BYTES_PER_REPLY: usize = 1024;
const MAX_WINDOW: usize = 4096;
/// Attempts at a dump the kernel marks as interrupted by concurrent changes
/// before giving up (the pass fails and is retried later).
pub const DUMP_ATTEMPTS: u32 = 5;

/// One request of a bulk run: the message and its `NLM_F_*` flags
/// (`NLM_F_ACK` is dropped: only failures are answered).
#[derive(Debug, Clone)]
pub enum BulkRequest {
    Route(RouteNetlinkMessage, u16),
    Nexthop(NexthopNetlinkMessage, u16),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// The kernel refused the request with this errno.
    #[error("{0}")]
    Nack(Errno),
    /// The outcome is unknown (the next observation tells).
    #[error("outcome unknown: {0}")]
    Lost(String),
    /// Every attempt at a dump was interrupted by concurrent changes.
    #[error("the kernel state changed during each of {0} dumps in a row (NLM_F_DUMP_INTR)")]
    Interrupted(u32),
}

impl BulkError {
    /// The kernel's errno, for a refused request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            BulkError::Nack(e) => Some(*e),
            BulkError::Lost(_) | BulkError::Interrupted(_) => None,
        }
    }
}

pub struct BulkSocket {
    socket: TokioSocket,
    seq: AtomicU32,
    window: usize,
    /// Dump attempts thrown away because the kernel marked them interrupted.
    interrupted: AtomicU64,
    /// How long a window waits for its barrier's ACK, a dump for its end.
    timeout: Duration,
    /// Barriers ask for an ACK (always, but in the tests of lost replies).
    barrier_ack: bool,
    /// One run at a time: replies are matched by sequence number within
    /// the current window only.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BulkSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkSocket")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl BulkSocket {
    /// Open in the calling thread's network namespace; needs a tokio
    /// runtime with I/O enabled. `rx_buffer` is asked for as SO_RCVBUF and
    /// sizes the window.
    pub fn open(rx_buffer: usize) -> io::Result<BulkSocket> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        let s = socket.socket_mut();
        s.bind_auto()?;
        let rx = i32::try_from(rx_buffer).unwrap_or(i32::MAX);
        if let Err(e) = s.set_rx_buf_sz(rx) {
            tracing::debug!("bulk socket SO_RCVBUF {rx}: {e}");
        }
        if let Err(e) = s.set_cap_ack(true) {
            tracing::debug!("bulk socket NETLINK_CAP_ACK: {e}");
        }
        // The kernel reports twice what it grants (room for bookkeeping);
        // budget on the granted half, and keep room for the barrier's ACK.
        let granted = s.get_rx_buf_sz().unwrap_or(0) / 2;
        let window = (granted / BYTES_PER_REPLY)
            .saturating_sub(1)
            .clamp(1, MAX_WINDOW);
        tracing::trace!(granted, window, "bulk netlink socket open");
        Ok(BulkSocket {
            socket,
            seq: AtomicU32::new(1),
            window,
            interrupted: AtomicU64::new(0),
            timeout: REQUEST_TIMEOUT,
            barrier_ack: true,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Requests per window (at most this many NACKs can be outstanding).
    pub fn window(&self) -> usize {
        self.window
    }

    /// How many dump attempts on this socket were thrown away because the
    /// kernel marked them interrupted by concurrent changes.
    pub fn interrupted_dumps(&self) -> u64 {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Test seam for lost replies: barriers go out without `NLM_F_ACK`, so
    /// none is ever acknowledged, and a window gives up after `timeout`.
    #[doc(hidden)]
    pub fn without_barrier_ack(mut self, timeout: Duration) -> Self {
        self.barrier_ack = false;
        self.timeout = timeout;
        self
    }

    /// Override the window (tests: force replies to overflow the buffer).
    #[doc(hidden)]
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Dump with `request` (`NLM_F_DUMP`) into a fresh `A`: `each` gets
    /// every reply, parsed, in the kernel's order. Replies that do not
    /// parse as `T` are skipped (a newer kernel's message types). A dump
    /// the kernel marks as interrupted by concurrent changes
    /// (`NLM_F_DUMP_INTR`: entries may be missing or doubled) is read to
    /// its end, thrown away and run again with a fresh `A`, up to
    /// [`DUMP_ATTEMPTS`] times ([`BulkError::Interrupted`] then). Fails
    /// with the kernel's errno ([`BulkError::Nack`]) or when the dump does
    /// not complete.
    pub async fn dump<T, A, F>(&self, request: &T, mut each: F) -> Result<A, BulkError>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
        A: Default,
        F: FnMut(&mut A, T),
    {
        for attempt in 1..=DUMP_ATTEMPTS {
            let mut acc = A::default();
            match self.dump_once(request, |m| each(&mut acc, m)).await? {
                DumpEnd::Consistent => return Ok(acc),
                DumpEnd::Interrupted => {
                    self.interrupted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, "dump interrupted by concurrent changes, again");
                }
            }
        }
        Err(BulkError::Interrupted(DUMP_ATTEMPTS))
    }

    /// One dump to its end (NLMSG_DONE), every reply to `each`.
    async fn dump_once<T, F>(&self, request: &T, mut each: F) -> Result<DumpEnd, BulkError>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
        F: FnMut(T),
    {
        let _one_at_a_time = self.lock.lock().await;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::with_capacity(256);
        put(
            request.message_type(),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            Some(request),
            &mut buf,
        );
        match self.socket.send(&buf).await {
            Ok(n) if n == buf.len() => {}
            Ok(n) => return Err(BulkError::Lost(format!("short netlink send ({n} bytes)"))),
            Err(e) => return Err(BulkError::Lost(format!("netlink send failed: {e}"))),
        }
        let read = async {
            let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
            let mut dump = DumpState::new(seq);
            loop {
                buf.clear();
                self.socket
                    .recv(&mut buf)
                    .await
                    .map_err(|e| BulkError::Lost(format!("netlink receive failed: {e}")))?;
                if let Some(end) = dump.datagram(&buf, &mut each) {
                    return end;
                }
            }
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(BulkError::Lost(format!(
                "dump not complete within {}s",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Send every request, in order; one verdict per request, in order.
    pub async fn run(&self, requests: &[BulkRequest]) -> Vec<Result<(), BulkError>> {
        let _one_at_a_time = self.lock.lock().await;
        let mut verdicts = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(self.window) {
            verdicts.extend(self.window_run(chunk).await);
        }
        verdicts
    }

    async fn window_run(&self, chunk: &[BulkRequest]) -> Vec<Result<(), BulkError>> {
        let n = chunk.len();
        let count = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let first = self.seq.fetch_add(count, Ordering::Relaxed);
        let barrier = first.wrapping_add(count - 1);
        let mut verdicts: Vec<Option<Result<(), BulkError>>> = vec![None; n];

        let mut buf = Vec::with_capacity(DATAGRAM_BYTES + 4096);
        let mut pending: Vec<usize> = Vec::new();
        for (i, req) in chunk.iter().enumerate() {
            let seq = first.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX));
            encode(req, seq, &mut buf);
            pending.push(i);
            if buf.len() >= DATAGRAM_BYTES {
                self.flush(&mut buf, &mut pending, &mut verdicts).await;
            }
        }
        if self.barrier_ack {
            encode_barrier(barrier, &mut buf);
        } else {
            put(NLMSG_NOOP, NLM_F_REQUEST, barrier, None, &mut buf);
        }
        let barrier_sent = self.flush(&mut buf, &mut pending, &mut verdicts).await;

        let lost = if barrier_sent {
            match tokio::time::timeout(self.timeout, self.drain(first, barrier, &mut verdicts))
                .await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("netlink replies lost: {e}")),
                Err(_) => Some(format!(
                    "no reply from the kernel within {}s",
                    self.timeout.as_secs()
                )),
            }
        } else {
            Some("the barrier could not be sent".to_string())
        };
        settle(verdicts, lost.as_deref())
    }

    /// Send the datagram in `buf`; if the kernel refuses it, none of its
    /// requests ran. Returns whether it was sent.
    async fn flush(
        &self,
        buf: &mut Vec<u8>,
        pending: &mut Vec<usize>,
        verdicts: &mut [Option<Result<(), BulkError>>],
    ) -> bool {
        let sent = self.socket.send(buf).await;
        let ok = matches!(&sent, Ok(len) if *len == buf.len());
        if !ok {
            let why = match sent {
                Ok(len) => format!("short netlink send ({len} of {} bytes)", buf.len()),
                Err(e) => format!("netlink send failed: {e}"),
            };
            for &i in pending.iter() {
                if let Some(v) = verdicts.get_mut(i) {
                    *v = Some(Err(BulkError::Lost(why.clone())));
                }
            }
        }
        buf.clear();
        pending.clear();
        ok
    }

    /// Read replies until a barrier's ACK, recording NACKs.
    async fn drain(
        &self,
        first: u32,
        barrier: u32,
        verdicts: &mut [Option<Result<(), BulkError>>],
    ) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut overrun = None;
        let mut barriers = vec![barrier];
        // After an overrun: read what is queued without waiting, then ask
        // for a new barrier (its ACK has room then; the first one's ACK may
        // have been dropped with the other replies).
        let mut resync = false;
        loop {
            buf.clear();
            let received = if resync {
                self.socket
                    .socket_ref()
                    .recv(&mut buf, libc::MSG_DONTWAIT)
                    .map(|_| ())
            } else {
                self.socket.recv(&mut buf).await
            };
            match received {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    overrun = Some(e);
                    resync = true;
                    continue;
                }
                Err(e) if resync && e.kind() == io::ErrorKind::WouldBlock => {
                    let again = self.seq.fetch_add(1, Ordering::Relaxed);
                    let mut b = Vec::new();
                    encode_barrier(again, &mut b);
                    self.socket.send(&b).await?;
                    barriers.push(again);
                    resync = false;
                    continue;
                }
                Err(e) => return Err(e),
            }
            for (seq, code) in replies(&buf) {
                if barriers.contains(&seq) {
                    return overrun.map_or(Ok(()), Err);
                }
                let i = seq.wrapping_sub(first) as usize;
                if let (Some(v), Some(code)) = (verdicts.get_mut(i), code) {
                    *v = Some(Err(BulkError::Nack(Errno::new(code))));
                }
            }
        }
    }
}

/// The verdict of every request of a window: its NACK if one was read;
/// success only when the window's barrier was acknowledged (`lost` is
/// `None`: every NACK sent before it has been read); otherwise the outcome
/// is unknown, never a success.
fn settle(
    verdicts: Vec<Option<Result<(), BulkError>>>,
    lost: Option<&str>,
) -> Vec<Result<(), BulkError>> {
    verdicts
        .into_iter()
        .map(|v| match (v, lost) {
            (Some(v), _) => v,
            (None, None) => Ok(()),
            (None, Some(why)) => Err(BulkError::Lost(why.to_string())),
        })
        .collect()
}

/// How a dump ended: consistent, or marked by the kernel as interrupted by
/// concurrent changes (its replies are not a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpEnd {
    Consistent,
    Interrupted,
}

/// The replies of one dump, datagram by datagram.
#[derive(Debug)]
struct DumpState {
    seq: u32,
    /// Some reply so far carried `NLM_F_DUMP_INTR` (the kernel flags only
    /// the first message after the change, DONE included).
    interrupted: bool,
}

impl DumpState {
    fn new(seq: u32) -> DumpState {
        DumpState {
            seq,
            interrupted: false,
        }
    }

    /// Hand every reply of `datagram` to `each`; `Some` once the dump has
    /// ended (NLMSG_DONE, or NLMSG_ERROR: the dump's errno, if it failed).
    fn datagram<T, F>(
        &mut self,
        datagram: &[u8],
        each: &mut F,
    ) -> Option<Result<DumpEnd, BulkError>>
    where
        T: NetlinkDeserializable,
        F: FnMut(T),
    {
        let mut offset = 0;
        while let Some(rest) = datagram.get(offset..).filter(|r| !r.is_empty()) {
            let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
                break;
            };
            // messages are 4-byte aligned; new_checked guarantees a header
            offset += ((msg.length() as usize) + 3) & !3;
            if msg.sequence_number() != self.seq {
                continue; // a late reply to an abandoned window or dump
            }
            self.interrupted |= msg.flags() & NLM_F_DUMP_INTR != 0;
            match msg.message_type() {
                NLMSG_DONE | NLMSG_ERROR => {
                    let code = msg
                        .payload()
                        .get(..4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(0, i32::from_ne_bytes);
                    return Some(match code {
                        0 if self.interrupted => Ok(DumpEnd::Interrupted),
                        0 => Ok(DumpEnd::Consistent),
                        c => Err(BulkError::Nack(Errno::new(c))),
                    });
                }
                kind => {
                    let mut h = NetlinkHeader::default();
                    h.message_type = kind;
                    match T::deserialize(&h, msg.payload()) {
                        Ok(m) => each(m),
                        Err(e) => tracing::debug!("skipping dump reply type {kind}: {e}"),
                    }
                }
            }
        }
        None
    }
}

/// (sequence number, errno if a NACK) of every NLMSG_ERROR in a datagram.
fn replies(datagram: &[u8]) -> Vec<(u32, Option<i32>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(rest) = datagram.get(offset..).filter(|r| !r.is_empty()) {
        let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        let len = msg.length() as usize;
        if msg.message_type() == NLMSG_ERROR {
            let code = msg
                .payload()
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, i32::from_ne_bytes);
            out.push((
                msg.sequence_number(),
                (code != 0).then(|| code.saturating_abs()),
            ));
        }
        // messages are 4-byte aligned
        let step = (len + 3) & !3;
        if step == 0 {
            break;
        }
        offset += step;
    }
    out
}

/// Append one netlink message (header + `inner`) to `buf`.
fn put(message_type: u16, flags: u16, seq: u32, inner: Option<&dyn Inner>, buf: &mut Vec<u8>) {
    let inner_len = inner.map_or(0, |m| m.len());
    let total = HEADER_LEN + inner_len;
    let start = buf.len();
    buf.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    buf.extend_from_slice(&message_type.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.resize(start + ((total + 3) & !3), 0);
    if let (Some(m), Some(dst)) = (inner, buf.get_mut(start + HEADER_LEN..start + total)) {
        m.write(dst);
    }
}

const HEADER_LEN: usize = 16;

/// A message payload that can be written in place (no copy of the message).
trait Inner {
    fn len(&self) -> usize;
    fn write(&self, dst: &mut [u8]);
}

impl<T: NetlinkSerializable> Inner for T {
    fn len(&self) -> usize {
        self.buffer_len()
    }
    fn write(&self, dst: &mut [u8]) {
        self.serialize(dst);
    }
}

/// Requests carry `NLM_F_REQUEST` and never `NLM_F_ACK`.
fn request_flags(flags: u16) -> u16 {
    (flags | NLM_F_REQUEST) & !NLM_F_ACK
}

fn encode(req: &BulkRequest, seq: u32, buf: &mut Vec<u8>) {
    match req {
        BulkRequest::Route(m, flags) => {
            put(m.message_type(), request_flags(*flags), seq, Some(m), buf)
        }
        BulkRequest::Nexthop(m, flags) => {
            put(m.message_type(), request_flags(*flags), seq, Some(m), buf)
        }
    }
}

/// `NLMSG_NOOP` with `NLM_F_ACK`: the kernel skips it and acknowledges.
fn encode_barrier(seq: u32, buf: &mut Vec<u8>) {
    put(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, None, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};

    fn error_reply(seq: u32, code: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes()); // length
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]); // the request's header (CAP_ACK)
        b
    }

    #[test]
    fn replies_are_read_by_sequence_number() {
        let mut d = error_reply(7, -libc::EEXIST);
        d.extend(error_reply(9, 0));
        assert_eq!(replies(&d), [(7, Some(libc::EEXIST)), (9, None)]);
        assert!(replies(&d[..10]).is_empty(), "truncated: nothing, no panic");
        assert!(replies(&[]).is_empty());
    }

    #[test]
    fn requests_never_ask_for_an_ack_and_the_barrier_does() {
        let mut buf = Vec::new();
        let msg = RouteNetlinkMessage::DelRoute(Default::default());
        encode(
            &BulkRequest::Route(msg, NLM_F_REQUEST | NLM_F_ACK),
            5,
            &mut buf,
        );
        let first = NetlinkBuffer::new_checked(&buf[..]).unwrap();
        assert_eq!(first.flags() & NLM_F_ACK, 0);
        assert_eq!(first.sequence_number(), 5);
        // byte for byte what netlink-packet-core would emit
        let mut h = NetlinkHeader::default();
        h.flags = NLM_F_REQUEST;
        h.sequence_number = 5;
        let mut m = NetlinkMessage::new(
            h,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(Default::default())),
        );
        m.finalize();
        let mut want = vec![0u8; m.buffer_len()];
        m.serialize(&mut want);
        assert_eq!(&buf[..want.len()], &want[..]);
        let at = buf.len();
        encode_barrier(6, &mut buf);
        let barrier = NetlinkBuffer::new_checked(&buf[at..]).unwrap();
        assert_eq!(barrier.message_type(), NLMSG_NOOP);
        assert_eq!(barrier.flags(), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(barrier.length() as usize, buf.len() - at);
    }

    /// A netlink message: header (`flags`, `seq`) and `payload`.
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut b = Vec::new();
        b.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize((len + 3) & !3, 0);
        b
    }

    /// An RTM_NEWLINK dump reply for ifindex `index`, as the kernel sends it.
    fn link(index: u32, flags: u16, seq: u32) -> Vec<u8> {
        let mut m = netlink_packet_route::link::LinkMessage::default();
        m.header.index = index;
        let m = RouteNetlinkMessage::NewLink(m);
        let mut payload = vec![0u8; m.buffer_len()];
        m.serialize(&mut payload);
        message(m.message_type(), NLM_F_MULTI | flags, seq, &payload)
    }

    fn done(flags: u16, seq: u32, code: i32) -> Vec<u8> {
        message(NLMSG_DONE, NLM_F_MULTI | flags, seq, &code.to_ne_bytes())
    }

    /// Feed `datagrams` to one dump: the link indexes seen and how it ended.
    fn feed(seq: u32, datagrams: &[Vec<u8>]) -> (Vec<u32>, Option<Result<DumpEnd, BulkError>>) {
        let mut state = DumpState::new(seq);
        let mut seen = Vec::new();
        let mut each = |m: RouteNetlinkMessage| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                seen.push(l.header.index);
            }
        };
        for d in datagrams {
            if let Some(end) = state.datagram(d, &mut each) {
                return (seen, Some(end));
            }
        }
        (seen, None)
    }

    const NLM_F_MULTI: u16 = netlink_packet_core::NLM_F_MULTIPART;

    #[test]
    fn a_dump_marked_interrupted_is_never_consistent() {
        // clean: two datagrams, then DONE
        let mut first = link(1, 0, 9);
        first.extend(link(2, 0, 9));
        let (seen, end) = feed(9, &[first.clone(), [link(3, 0, 9), done(0, 9, 0)].concat()]);
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(end, Some(Ok(DumpEnd::Consistent)));

        // the kernel flags the first reply after the change, and only it
        let (seen, end) = feed(
            9,
            &[
                first.clone(),
                [link(3, NLM_F_DUMP_INTR, 9), link(4, 0, 9), done(0, 9, 0)].concat(),
            ],
        );
        assert_eq!(
            seen,
            [1, 2, 3, 4],
            "read to the end (the kernel holds the dump until then)"
        );
        assert_eq!(end, Some(Ok(DumpEnd::Interrupted)));

        // ... which may be DONE itself
        let (_, end) = feed(9, &[first.clone(), done(NLM_F_DUMP_INTR, 9, 0)]);
        assert_eq!(end, Some(Ok(DumpEnd::Interrupted)));

        // a flag on a stale reply of another dump says nothing about this one
        let stale = [link(7, NLM_F_DUMP_INTR, 8), done(NLM_F_DUMP_INTR, 8, 0)].concat();
        let (seen, end) = feed(9, &[stale, first, done(0, 9, 0)]);
        assert_eq!(seen, [1, 2]);
        assert_eq!(end, Some(Ok(DumpEnd::Consistent)));

        // a dump that failed midway: its errno
        let (_, end) = feed(9, &[done(0, 9, -libc::EBUSY)]);
        assert_eq!(end, Some(Err(BulkError::Nack(Errno::EBUSY))));
        // no DONE yet: not ended; garbage: nothing, no panic
        assert_eq!(feed(9, &[link(1, 0, 9)]).1, None);
        assert_eq!(feed(9, &[vec![1, 2, 3], vec![]]).1, None);
    }

    #[test]
    fn without_barrier_coverage_no_request_succeeds() {
        let nack = Some(Err(BulkError::Nack(Errno::EEXIST)));
        let acknowledged = settle(vec![None, nack.clone(), None], None);
        assert_eq!(
            acknowledged,
            [Ok(()), Err(BulkError::Nack(Errno::EEXIST)), Ok(())]
        );
        let lost = settle(vec![None, nack, None], Some("replies lost"));
        assert_eq!(
            lost,
            [
                Err(BulkError::Lost("replies lost".into())),
                Err(BulkError::Nack(Errno::EEXIST)),
                Err(BulkError::Lost("replies lost".into())),
            ]
        );
        assert_eq!(BulkError::Nack(Errno::EEXIST).errno(), Some(Errno::EEXIST));
        assert_eq!(BulkError::Lost("x".into()).errno(), None);
    }
}
