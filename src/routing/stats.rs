//! Queue statistics for the wallboard: what happened to a queue's callers
//! today (answered, abandoned, service level, average wait and talk time).
//! Time is an input; "today" is the UTC day of the wall clock, and the counts
//! start again at midnight UTC.

use crate::clock::UnixMillis;
use serde::Serialize;
use std::time::Duration;

const DAY_MS: u64 = 86_400_000;

/// Today's counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDay {
    day: u64,
    answered: u64,
    answered_in_time: u64,
    abandoned: u64,
    wait_ms: u64,
    talks: u64,
    talk_ms: u64,
}

/// What the wallboard shows of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub number: String,
    /// Callers waiting now (not those being offered to an agent).
    pub waiting: usize,
    /// How long the longest-waiting caller has waited, ms.
    pub longest_wait_ms: u64,
    pub answered_today: u64,
    /// Callers who hung up before an agent answered.
    pub abandoned_today: u64,
    /// Answered within the queue's service-level time, as a share of answered
    /// plus abandoned, in percent (100 when nobody called yet).
    pub service_level_pct: u64,
    pub service_level_secs: u64,
    pub average_wait_ms: u64,
    pub average_talk_ms: u64,
}

impl QueueDay {
    /// Starts the day over when `now` is in a later one.
    fn today(&mut self, now: UnixMillis) -> &mut Self {
        let day = now.0 / DAY_MS;
        if day != self.day {
            *self = QueueDay {
                day,
                ..QueueDay::default()
            };
        }
        self
    }

    /// An agent answered a caller who had waited `waited`.
    pub fn answered(&mut self, now: UnixMillis, waited: Duration, service_level: Duration) {
        let d = self.today(now);
        d.answered += 1;
        d.answered_in_time += u64::from(waited <= service_level);
        d.wait_ms += waited.as_millis() as u64;
    }

    /// A caller hung up before an agent answered, after waiting `waited`.
    pub fn abandoned(&mut self, now: UnixMillis, waited: Duration) {
        let d = self.today(now);
        d.abandoned += 1;
        d.wait_ms += waited.as_millis() as u64;
    }

    /// An answered call ended after `talked`.
    pub fn talked(&mut self, now: UnixMillis, talked: Duration) {
        let d = self.today(now);
        d.talks += 1;
        d.talk_ms += talked.as_millis() as u64;
    }

    /// The figures as of `now`, with the line's current state.
    pub fn stats(
        &self,
        now: UnixMillis,
        number: &str,
        waiting: usize,
        longest_wait_ms: u64,
        service_level: Duration,
    ) -> QueueStats {
        let d = if now.0 / DAY_MS == self.day {
            self.clone()
        } else {
            QueueDay::default()
        };
        let offered = d.answered + d.abandoned;
        QueueStats {
            number: number.to_string(),
            waiting,
            longest_wait_ms,
            answered_today: d.answered,
            abandoned_today: d.abandoned,
            service_level_pct: (d.answered_in_time * 100)
                .checked_div(offered)
                .unwrap_or(100),
            service_level_secs: service_level.as_secs(),
            average_wait_ms: d.wait_ms.checked_div(offered).unwrap_or(0),
            average_talk_ms: d.talk_ms.checked_div(d.talks).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SL: Duration = Duration::from_secs(20);
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn service_level_counts_answers_in_time_among_answered_and_abandoned() {
        let t = UnixMillis(10 * DAY_MS + 1000);
        let mut d = QueueDay::default();
        d.answered(t, secs(5), SL);
        d.answered(t, secs(30), SL);
        d.abandoned(t, secs(10));
        d.answered(t, secs(20), SL);
        d.talked(t, secs(60));
        d.talked(t, secs(120));
        let s = d.stats(t, "500", 2, 7000, SL);
        assert_eq!((s.answered_today, s.abandoned_today), (3, 1));
        assert_eq!(s.service_level_pct, 50, "2 of 4 in time");
        assert_eq!(s.average_wait_ms, 16_250);
        assert_eq!(s.average_talk_ms, 90_000);
        assert_eq!((s.waiting, s.longest_wait_ms), (2, 7000));
    }

    #[test]
    fn the_counts_start_again_the_next_day() {
        let t = UnixMillis(10 * DAY_MS + 1000);
        let mut d = QueueDay::default();
        d.answered(t, secs(5), SL);
        let tomorrow = UnixMillis(11 * DAY_MS);
        let s = d.stats(tomorrow, "500", 0, 0, SL);
        assert_eq!((s.answered_today, s.service_level_pct), (0, 100));
        d.abandoned(tomorrow, secs(3));
        assert_eq!(d.stats(tomorrow, "500", 0, 0, SL).abandoned_today, 1);
        assert_eq!(d.stats(tomorrow, "500", 0, 0, SL).answered_today, 0);
    }
}
