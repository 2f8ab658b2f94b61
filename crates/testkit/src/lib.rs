//! Test support for converge: real programs in per-test temp dirs on free
//! loopback ports, stopped by pid when dropped.
//!
//! Nothing here but [`standin`] is a stand-in for a real program: [`haproxy::Haproxy`] is
//! the HAProxy binary in master-worker mode, reloaded with the same signal
//! converge sends in production and queried over its runtime API.
//!
//! The pieces:
//! - [`ports::free_port`]: a loopback port for a program to bind.
//! - [`wait::until`] / [`wait::until_some`]: poll a condition with a
//!   deadline; the error says what never happened. No test sleeps and hopes.
//! - [`process::Child`] / [`process::Daemon`]: guards that stop a program
//!   by its pid on drop (`SIGTERM`, a grace period, `SIGKILL`) and reap it,
//!   so a failing test leaves nothing running. Nothing is killed by name.
//! - [`backend::HttpBackend`]: a loopback HTTP server that answers with its
//!   name, so a test sees which server HAProxy picked.
//! - [`http::request`] / [`http::get`]: a plain HTTP/1.1 request on
//!   loopback, the body of a 2xx answer.
//! - [`standin::EmptyAnswerProxy`]: the one stand-in, named for what it
//!   is: a real Consul behind a proxy that answers one service with
//!   `200 []`, a fault a real agent cannot produce on demand.
//! - [`proxy::CountingProxy`]: a TCP proxy that counts the requests,
//!   connections and bytes between a tool and Consul.
//! - [`stranger::Stranger`]: a process that handles reload signals and
//!   records them, to stand where a stale pidfile points.
//! - [`patroni::PatroniCluster`]: two PostgreSQL members under real
//!   Patroni with a real Consul as DCS, registering themselves; leader,
//!   switchover, kill -9 of the leader.
//! - [`git::run`]: the real `git` in a test's work tree, with a
//!   throwaway identity.
//! - [`redis::Redis`]: a real `redis-server`, primary or replica, promoted
//!   and demoted by hand as Sentinel would; [`redis::command`] speaks RESP.
//! - [`haproxy::Haproxy`]: start, query (`show servers state`,
//!   `show stat`, any runtime command), reload with `SIGUSR2`, stop;
//!   [`haproxy::minimal_config`] writes a config it can start on.
//!
//! Every helper takes the paths it uses from the caller, who normally puts
//! them in a [`tempfile::TempDir`] per test, so tests can run in parallel.
#![deny(missing_docs)]

pub mod backend;
pub mod consul;
pub mod git;
pub mod haproxy;
pub mod http;
pub mod keepalived;
pub mod netns;
pub mod patroni;
pub mod pgbouncer;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod standin;
pub mod stranger;
pub mod wait;

pub use haproxy::Haproxy;
pub use ports::free_port;
pub use process::{Child, Daemon};
