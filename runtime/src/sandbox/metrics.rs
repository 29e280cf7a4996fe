//! [`SandboxMetrics`]: what a sandbox uses at one moment, in E2B's terms.

use std::time::{Duration, Instant, SystemTime};

use crate::guest::Usage;

/// CPU, memory and disk of a sandbox at one moment (E2B's `SandboxMetrics`).
/// Before the heavy guest starts, only the limits are known: the fast path
/// runs inside the host process and is measured with it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxMetrics {
    /// When it was measured.
    pub timestamp: SystemTime,
    /// CPUs the sandbox may use.
    pub cpu_count: u32,
    /// CPU use since the previous measurement (or since the start), in
    /// percent of all its CPUs.
    pub cpu_used_pct: f64,
    /// Memory in use, page cache included (bytes).
    pub mem_used: u64,
    /// Of that, page cache (bytes).
    pub mem_cache: u64,
    /// The memory limit (bytes).
    pub mem_total: u64,
    /// Disk in use (bytes).
    pub disk_used: u64,
    /// Disk size (bytes).
    pub disk_total: u64,
}

/// The previous CPU sample, to turn CPU time into a percentage.
#[derive(Debug)]
pub(super) struct CpuSampler {
    last: std::sync::Mutex<(Instant, Duration)>,
}

impl CpuSampler {
    pub(super) fn new() -> CpuSampler {
        CpuSampler {
            last: std::sync::Mutex::new((Instant::now(), Duration::ZERO)),
        }
    }

    /// Metrics from `usage`, with CPU use since the previous call.
    pub(super) fn metrics(&self, usage: Usage) -> SandboxMetrics {
        let now = Instant::now();
        let mut last = crate::lock(&self.last);
        let (then, cpu_then) = *last;
        *last = (now, usage.cpu_time);
        let wall = now.duration_since(then).as_secs_f64() * f64::from(usage.cpus.max(1));
        let used = usage.cpu_time.saturating_sub(cpu_then).as_secs_f64();
        let cpu_used_pct = if wall > 0.0 {
            (used / wall * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        };
        SandboxMetrics {
            timestamp: SystemTime::now(),
            cpu_count: usage.cpus,
            cpu_used_pct,
            mem_used: usage.memory_used,
            mem_cache: usage.memory_cache,
            mem_total: usage.memory_total,
            disk_used: usage.disk_used,
            disk_total: usage.disk_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_the_share_of_wall_time_across_cpus() {
        let sampler = CpuSampler::new();
        *crate::lock(&sampler.last) = (Instant::now() - Duration::from_secs(2), Duration::ZERO);
        let usage = Usage {
            cpus: 2,
            cpu_time: Duration::from_secs(1),
            ..Usage::default()
        };
        let pct = sampler.metrics(usage).cpu_used_pct;
        assert!((24.0..=26.0).contains(&pct), "{pct}");
        // Nothing used since: near zero.
        assert!(sampler.metrics(usage).cpu_used_pct < 1.0);
    }
}
