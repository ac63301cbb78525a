//! The toll-fraud guard: the worst bill a small office can get is for
//! thousands of calls to premium numbers placed with a guessed password. No
//! outside call is placed unless
//!
//! - the caller's dialing classes allow the route's class (emergency always),
//! - the number starts with no blocked prefix,
//! - the PBX, and the caller, are under their caps of concurrent outside
//!   calls, and the caller under their cap of outside calls in the last hour.
//!
//! Every refusal is one security log line (`SECURITY toll-denied …`, see
//! the guard's `SECURITY` log target). The counters are shared by the shards; a
//! granted call holds a [`Permit`] that is given back when it ends.

use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What kind of number a route reaches (`[[routes]] class`), and what a user
/// may dial (`dialing_classes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Internal,
    Emergency,
    National,
    International,
    Premium,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Internal => "internal",
            Class::Emergency => "emergency",
            Class::National => "national",
            Class::International => "international",
            Class::Premium => "premium",
        }
    }
}

/// The caps (`[outbound]`); 0 means no cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub max_calls: u32,
    pub max_calls_per_user: u32,
    pub max_calls_per_user_per_hour: u32,
    /// Numbers starting with one of these (as dialled, or in E.164) are never called.
    pub blocked_prefixes: Vec<String>,
}

/// Why an outside call was refused (each answered 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no dialing class {0}")]
    Class(&'static str),
    #[error("blocked prefix {0}")]
    Blocked(String),
    #[error("the PBX's outside calls are at their cap")]
    TotalCap,
    #[error("the user's concurrent outside calls are at their cap")]
    UserCap,
    #[error("the user's outside calls this hour are at their cap")]
    HourlyCap,
    #[error("not authenticated")]
    Anonymous,
}

/// A granted outside call: give it back with [`Fraud::release`] when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    user: String,
    /// Emergency calls are outside every cap, so they hold none.
    counted: bool,
}

#[derive(Debug, Default)]
struct Usage {
    live: u32,
    /// When this user's recent outside calls started (the last hour).
    starts: VecDeque<Instant>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    users: HashMap<String, Usage>,
}

/// The guard, shared by the shards.
#[derive(Debug)]
pub struct Fraud {
    caps: Caps,
    counts: Mutex<Counts>,
    /// Refusals so far (for `/metrics`).
    denied: std::sync::atomic::AtomicU64,
}

const HOUR: Duration = Duration::from_secs(3600);

impl Fraud {
    pub fn new(caps: Caps) -> Fraud {
        Fraud {
            caps,
            counts: Mutex::default(),
            denied: Default::default(),
        }
    }

    /// Whether `user` (from `source`, allowed `classes`) may call `numbers`
    /// (as dialled, then as sent) on a route of `class`; a granted call is
    /// counted at once.
    pub fn check(
        &self,
        now: Instant,
        source: IpAddr,
        user: Option<&str>,
        classes: &[Class],
        class: Class,
        numbers: &[&str],
    ) -> Result<Permit, Denied> {
        let result = self.decide(now, user, classes, class, numbers);
        if let Err(why) = &result {
            self.denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                target: crate::guard::SECURITY,
                "SECURITY toll-denied source={source} user={} number={} reason=\"{why}\"",
                crate::guard::sanitize(user.unwrap_or("-")),
                crate::guard::sanitize(numbers.first().copied().unwrap_or("-")),
            );
        }
        result
    }

    /// Whether `number` starts with a blocked prefix.
    pub fn blocks(&self, number: &str) -> bool {
        let prefixes = &self.caps.blocked_prefixes;
        prefixes.iter().any(|p| number.starts_with(p.as_str()))
    }

    fn decide(
        &self,
        now: Instant,
        user: Option<&str>,
        classes: &[Class],
        class: Class,
        numbers: &[&str],
    ) -> Result<Permit, Denied> {
        let user = user.ok_or(Denied::Anonymous)?;
        if class == Class::Emergency {
            return Ok(Permit {
                user: user.to_string(),
                counted: false,
            });
        }
        if !classes.contains(&class) {
            return Err(Denied::Class(class.as_str()));
        }
        let blocked = self
            .caps
            .blocked_prefixes
            .iter()
            .find(|p| numbers.iter().any(|n| n.starts_with(p.as_str())));
        if let Some(p) = blocked {
            return Err(Denied::Blocked(p.clone()));
        }
        let caps = &self.caps;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if caps.max_calls > 0 && counts.total >= caps.max_calls {
            return Err(Denied::TotalCap);
        }
        let usage = counts.users.entry(user.to_string()).or_default();
        while usage
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            usage.starts.pop_front();
        }
        if caps.max_calls_per_user > 0 && usage.live >= caps.max_calls_per_user {
            return Err(Denied::UserCap);
        }
        let hourly = caps.max_calls_per_user_per_hour;
        if hourly > 0 && usage.starts.len() >= hourly as usize {
            return Err(Denied::HourlyCap);
        }
        usage.live += 1;
        usage.starts.push_back(now);
        counts.total += 1;
        Ok(Permit {
            user: user.to_string(),
            counted: true,
        })
    }

    /// The blocked prefix `number` starts with, if any: a number nobody
    /// dials, campaigns included (logged and counted as a denial).
    pub fn blocked(&self, user: &str, number: &str) -> Option<&str> {
        let p = self
            .caps
            .blocked_prefixes
            .iter()
            .find(|p| number.starts_with(p.as_str()))?;
        self.denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            target: crate::guard::SECURITY,
            "SECURITY toll-denied source=- user={} number={} reason=\"blocked prefix {p}\"",
            crate::guard::sanitize(user),
            crate::guard::sanitize(number),
        );
        Some(p)
    }

    /// A granted call ended.
    pub fn release(&self, permit: &Permit) {
        if !permit.counted {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(u) = counts.users.get_mut(&permit.user) {
            u.live = u.live.saturating_sub(1);
            if u.live == 0 && u.starts.is_empty() {
                counts.users.remove(&permit.user);
            }
        }
    }

    /// Outside calls refused so far.
    pub fn denied(&self) -> u64 {
        self.denied.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Outside calls in progress (for `/metrics`).
    pub fn live(&self) -> u32 {
        self.counts.lock().map_or(0, |c| c.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const NATIONAL: &[Class] = &[Class::Internal, Class::National];
    const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn fraud(caps: Caps) -> Fraud {
        Fraud::new(caps)
    }

    fn caps() -> Caps {
        Caps {
            max_calls: 3,
            max_calls_per_user: 2,
            max_calls_per_user_per_hour: 3,
            blocked_prefixes: vec!["+8819".into(), "0990".into()],
        }
    }

    #[test]
    fn a_route_outside_the_users_classes_is_refused_but_emergency_never_is() {
        let f = fraud(caps());
        let now = Instant::now();
        let call = |class| f.check(now, SOURCE, Some("201"), NATIONAL, class, &["x"]);
        assert_eq!(
            call(Class::International),
            Err(Denied::Class("international"))
        );
        assert_eq!(call(Class::Premium), Err(Denied::Class("premium")));
        assert!(call(Class::National).is_ok());
        assert!(call(Class::Emergency).is_ok());
        assert_eq!(
            f.check(now, SOURCE, None, NATIONAL, Class::National, &["x"]),
            Err(Denied::Anonymous)
        );
    }

    #[test]
    fn a_blocked_prefix_is_refused_as_dialled_or_as_sent() {
        let f = fraud(caps());
        let now = Instant::now();
        let call = |n: &[&str]| f.check(now, SOURCE, Some("201"), NATIONAL, Class::National, n);
        assert_eq!(call(&["0990123"]), Err(Denied::Blocked("0990".into())));
        assert_eq!(
            call(&["0101234", "+88190000"]),
            Err(Denied::Blocked("+8819".into()))
        );
    }

    #[test]
    fn concurrent_calls_are_capped_per_user_and_in_total_until_released() {
        let f = fraud(caps());
        let now = Instant::now();
        let call = |u| f.check(now, SOURCE, Some(u), NATIONAL, Class::National, &["03"]);
        let a = call("201").expect("first");
        let _b = call("201").expect("second");
        assert_eq!(call("201"), Err(Denied::UserCap));
        let _c = call("202").expect("third overall");
        assert_eq!(call("203"), Err(Denied::TotalCap));
        f.release(&a);
        assert!(call("203").is_ok());
        assert_eq!(f.live(), 3);
    }

    #[test]
    fn the_hourly_cap_counts_calls_started_in_the_last_hour() {
        let f = fraud(Caps {
            max_calls_per_user: 0,
            ..caps()
        });
        let t0 = Instant::now();
        let call = |at| f.check(at, SOURCE, Some("201"), NATIONAL, Class::National, &["03"]);
        for i in 0..3 {
            let p = call(t0 + Duration::from_secs(i)).expect("under the cap");
            f.release(&p);
        }
        assert_eq!(call(t0 + Duration::from_secs(10)), Err(Denied::HourlyCap));
        assert!(call(t0 + HOUR + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn emergency_calls_hold_no_count() {
        let f = fraud(caps());
        let now = Instant::now();
        for _ in 0..10 {
            f.check(now, SOURCE, Some("201"), &[], Class::Emergency, &["110"])
                .expect("always");
        }
        assert_eq!(f.live(), 0);
    }
}
