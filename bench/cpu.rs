//! The load generators' own CPU time, shared by bench/raft_load.rs and bench/propagation_load.rs
//! (`#[path]`-included, like bench/http1.rs: each generator is one `rustc -O` build with no
//! dependencies).

/// CPU time (user + system) this process has used so far, in milliseconds (from
/// `/proc/self/stat`, in units of USER_HZ = 100 per second); 0 if unreadable.
pub fn own_cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, so 12 and 13 after the command name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10
}
