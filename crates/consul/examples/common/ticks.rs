//! CPU time of a process from `/proc`, shared by the examples that
//! measure the source and the agent side by side.

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
