//! Free loopback ports for the real programs the tests start.
//!
//! A port is picked here, released, and bound again by haproxy, pgbouncer,
//! postgres or consul a moment later. Ports the kernel hands out — to a
//! `bind` on port 0 or to the local end of an outgoing connection — come
//! from the ephemeral range, so a port taken from that range can be handed
//! to someone else inside that moment; a CI run once lost a pgbouncer start
//! that way ("bind(): Address already in use"). The kernel never hands out
//! a port below the ephemeral range on its own, so the ports come from
//! there: a process-wide counter (starting at an offset taken from the pid,
//! so two test binaries running at once start far apart) walks the range
//! and each candidate is bound once to check nobody else holds it.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out: well above the well-known and registered
/// ports that services on a CI machine tend to sit on.
const FLOOR: u16 = 10_000;

/// The kernel's own choice is used when the ephemeral range starts so low
/// that fewer ports than this lie between `FLOOR` and it.
const MIN_SPAN: u16 = 1_000;

/// A TCP port on 127.0.0.1 that was free a moment ago and that the kernel
/// will not give to anyone else on its own.
///
/// # Panics
///
/// When the loopback interface cannot be bound at all, which means the
/// machine cannot run these tests.
pub fn free_port() -> u16 {
    static WALK: OnceLock<Option<Walk>> = OnceLock::new();
    WALK.get_or_init(Walk::below_ephemeral)
        .as_ref()
        .and_then(Walk::next_free)
        .unwrap_or_else(kernel_port)
}

/// A cursor over `FLOOR..FLOOR + span`, shared by every test of a process.
struct Walk {
    next: AtomicU32,
    span: u32,
}

impl Walk {
    /// The ports between `FLOOR` and the kernel's ephemeral range, read
    /// once, starting at an offset taken from the pid; `None` when the
    /// range cannot be read or leaves too few ports below it.
    fn below_ephemeral() -> Option<Self> {
        let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let low: u16 = range.split_whitespace().next()?.parse().ok()?;
        let span = u32::from(low.checked_sub(FLOOR).filter(|s| *s >= MIN_SPAN)?);
        Some(Self {
            next: AtomicU32::new(std::process::id().wrapping_mul(7_919) % span),
            span,
        })
    }

    /// The first port from the cursor on (wrapping within the span) that
    /// can be bound now; the cursor is left just past it.
    fn next_free(&self) -> Option<u16> {
        (0..self.span).find_map(|_| {
            let offset = self.next.fetch_add(1, Ordering::Relaxed) % self.span;
            let port = FLOOR + u16::try_from(offset).ok()?;
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .is_ok()
                .then_some(port)
        })
    }
}

fn kernel_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the address of a bound loopback socket: {e}"))
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound_again() {
        let port = free_port();
        assert_ne!(port, 0);
        let again = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        assert!(again.is_ok(), "port {port} was not free: {again:?}");
    }

    #[test]
    fn ports_lie_below_the_ephemeral_range_and_are_not_repeated() {
        let walk = Walk::below_ephemeral().expect("this machine has an ephemeral port range");
        let ceiling = FLOOR + u16::try_from(walk.span).expect("span fits a port");
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for port in &ports {
            assert!(
                (FLOOR..ceiling).contains(port),
                "port {port} is outside {FLOOR}..{ceiling}"
            );
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
    }

    #[test]
    fn a_port_someone_holds_is_skipped() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, free_port())).expect("bind");
        let held_port = held.local_addr().expect("addr").port();
        let walk = Walk::below_ephemeral().expect("this machine has an ephemeral port range");
        walk.next
            .store(u32::from(held_port - FLOOR), Ordering::Relaxed);
        let port = walk.next_free().expect("a free port");
        assert_ne!(port, held_port, "the held port was handed out");
    }
}
