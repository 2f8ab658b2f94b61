//! What the examples that measure the source and the agent side by side
//! share: a process's CPU time from `/proc`, and the wait for a source to
//! have read every watched service. Only the source's public API is used,
//! so `source_startup` builds against earlier versions of the crate too.

use std::time::Duration;

use converge_consul::{CatalogSource, Config, SourceConfig, SourceHealth, SourceState};

/// Starts a source for `s0 … s{watched-1}` against `consul` and waits, up
/// to two minutes, until it holds every one of them and is healthy.
pub async fn read_every(consul: Config, watched: usize) -> Result<(), String> {
    let names = (0..watched).map(|i| format!("s{i}"));
    let source =
        CatalogSource::connect(consul, SourceConfig::new(names)).map_err(|e| e.to_string())?;
    let mut rx = source.subscribe();
    let all = |s: &SourceState| {
        s.health == SourceHealth::Healthy && s.catalog.services().len() == watched
    };
    let read = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(all))
        .await
        .is_ok_and(|r| r.is_ok());
    read.then_some(())
        .ok_or_else(|| "the source did not read every service in 120 s".to_string())
}

/// User and system CPU of process `pid` (`self` for this one), in ticks
/// (10 ms on Linux).
pub fn ticks(pid: &str) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after_name = stat.rfind(')').ok_or("no process name in stat")?;
    let fields: Vec<&str> = stat[after_name + 2..].split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    Ok(field(11)? + field(12)?)
}
