//! Time as the layers above the SIP core see it. The core and the modules take
//! `now: Instant` as an input; facts that outlive a restart (bindings, CDRs,
//! presence "since") are stamped with wall-clock [`UnixMillis`], derived from the
//! same `now` through a [`WallClock`] so that fake-clock tests stay deterministic.

use std::time::Instant;

/// Wall-clock time in milliseconds since the UNIX epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The system clock now (only the runtime and tools read it).
    pub fn now() -> UnixMillis {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(since.as_millis() as u64)
    }
}

/// Maps the monotonic `now` of inputs to wall-clock time: the wall time at one
/// monotonic instant, plus the time elapsed since.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    wall: UnixMillis,
    mono: Instant,
}

impl WallClock {
    pub fn new(wall: UnixMillis, mono: Instant) -> WallClock {
        WallClock { wall, mono }
    }

    pub fn at(&self, now: Instant) -> UnixMillis {
        let since = now.saturating_duration_since(self.mono);
        UnixMillis(self.wall.0 + since.as_millis() as u64)
    }
}
