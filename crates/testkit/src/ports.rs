//! Free loopback ports.
//!
//! The kernel picks a free port when we bind `127.0.0.1:0`; we read it and
//! close the socket so a real program can bind it next. That leaves a short
//! window in which another process could take the port; callers that start
//! a program on it should treat "address in use" as a reason to retry with
//! a fresh port, not as a test failure.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
///
/// When the loopback interface cannot be bound at all, which means the
/// machine cannot run these tests.
pub fn free_port() -> u16 {
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
}
