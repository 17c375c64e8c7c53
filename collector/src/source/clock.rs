//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time. One offset per
//! collector run, so every event on the node is stamped consistently.

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns, measured at start.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    /// A fixed offset, for tests.
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix epoch nanoseconds of a kernel monotonic timestamp.
    pub fn epoch_ns(&self, ktime_ns: u64) -> u64 {
        (ktime_ns as i128 + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }

    /// Unix epoch seconds (with fraction) of a kernel monotonic timestamp.
    pub fn epoch_seconds(&self, ktime_ns: u64) -> f64 {
        (ktime_ns as i128 + self.offset_ns) as f64 / 1e9
    }
}

/// Now, on the kernel's `bpf_ktime_get_ns` clock.
pub fn monotonic_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC) as u64
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_timestamp_maps_to_now_on_the_wall_clock() {
        let clock = Clock::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ktime = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((clock.epoch_seconds(ktime) - wall).abs() < 0.05);
    }
}
