//! Calling hours: a daily window of local time ("09:00" to "20:00"), read in
//! one customer's time zone (IANA names, the database bundled with the
//! binary). Pure: every question takes the wall clock.

use crate::clock::UnixMillis;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A daily window of local time, `from` included, `to` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    from: Time,
    to: Time,
}

impl Hours {
    /// "HH:MM" to "HH:MM", `from` before `to` (a window does not cross
    /// midnight).
    pub fn parse(from: &str, to: &str) -> Result<Hours, String> {
        let (from, to) = (clock_time(from)?, clock_time(to)?);
        if from >= to {
            return Err(format!(
                "calling hours end ({to}) before they start ({from})"
            ));
        }
        Ok(Hours { from, to })
    }

    /// Whether `now` is inside the window in `zone`.
    pub fn open(&self, now: UnixMillis, zone: &TimeZone) -> bool {
        let local = timestamp(now).to_zoned(zone.clone()).time();
        self.from <= local && local < self.to
    }

    /// When the window next opens in `zone`: `now` itself when it is open.
    pub fn next_open(&self, now: UnixMillis, zone: &TimeZone) -> UnixMillis {
        if self.open(now, zone) {
            return now;
        }
        let here = timestamp(now).to_zoned(zone.clone());
        let day = match here.time() < self.from {
            true => here.date(),
            false => here.date().tomorrow().unwrap_or(here.date()),
        };
        // A start that falls into a DST gap resolves to the instant after it.
        day.to_datetime(self.from)
            .to_zoned(zone.clone())
            .map(|z| UnixMillis(u64::try_from(z.timestamp().as_millisecond()).unwrap_or(0)))
            .unwrap_or(now)
    }
}

/// A time zone by its IANA name (`Asia/Tokyo`), or why not.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

fn clock_time(s: &str) -> Result<Time, String> {
    let bad = || format!("{s:?} is no time of day (HH:MM)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h == 24 && m == 0 {
        return Ok(Time::MAX);
    }
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

fn timestamp(now: UnixMillis) -> Timestamp {
    let ms = i64::try_from(now.0).unwrap_or(i64::MAX);
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T00:00:00Z.
    const MIDNIGHT_UTC: u64 = 1_796_083_200_000;
    const HOUR: u64 = 3_600_000;

    #[test]
    fn the_window_is_read_in_each_customers_own_time_zone() {
        let hours = Hours::parse("09:00", "20:00").expect("hours");
        let tokyo = zone("Asia/Tokyo").expect("zone");
        let new_york = zone("America/New_York").expect("zone");
        // 01:00 UTC is 10:00 in Tokyo and 20:00 the day before in New York.
        let now = UnixMillis(MIDNIGHT_UTC + HOUR);
        assert!(hours.open(now, &tokyo));
        assert!(
            !hours.open(now, &new_york),
            "20:00 is outside (end excluded)"
        );
        // New York opens at 09:00 EST = 14:00 UTC.
        assert_eq!(
            hours.next_open(now, &new_york),
            UnixMillis(MIDNIGHT_UTC + 14 * HOUR)
        );
        assert_eq!(hours.next_open(now, &tokyo), now, "open now");
        // Tokyo after 20:00 (11:00 UTC = 20:00 JST): the next morning, 09:00 JST = 00:00 UTC.
        let late = UnixMillis(MIDNIGHT_UTC + 11 * HOUR);
        assert_eq!(
            hours.next_open(late, &tokyo),
            UnixMillis(MIDNIGHT_UTC + 24 * HOUR)
        );
    }

    #[test]
    fn bad_windows_and_zones_are_named() {
        assert!(Hours::parse("20:00", "09:00")
            .expect_err("refused")
            .contains("before"));
        assert!(Hours::parse("9", "10:00")
            .expect_err("refused")
            .contains("HH:MM"));
        assert!(Hours::parse("25:00", "26:00").is_err());
        assert!(zone("Mars/Olympus")
            .expect_err("refused")
            .contains("Mars/Olympus"));
        let all_day = Hours::parse("00:00", "24:00").expect("all day");
        assert!(all_day.open(UnixMillis(MIDNIGHT_UTC + 5), &TimeZone::UTC));
    }
}
