//! The dialplan: where a new call goes, as one pure function of the dialled
//! number over the configuration — a test number, a feature code, a queue, a
//! ring group, an extension, or nowhere (404). The shard adds outside numbers.

use super::{Directory, QueueId};
use crate::config::Config;
use crate::forwarding::When;
use crate::presence::State;

/// What a test number does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestNumber {
    /// Answers and sends every RTP packet back.
    Echo,
    /// Answers, hangs up after a while.
    Hangup,
    /// Always busy.
    Busy,
}

/// Where a dialled number goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Test(TestNumber),
    /// A feature code: the caller chooses this presence state.
    Feature(State),
    /// A forwarding code: the caller sets (a number) or clears (`None`) a rule.
    Forward(When, Option<String>),
    /// A forwarding or pickup code without its number.
    Incomplete,
    /// A pickup code: a call ringing at this extension, or (`None`) at any
    /// colleague's.
    Pickup(Option<String>),
    /// The voicemail menu (the caller's own mailbox).
    Voicemail,
    Queue(QueueId),
    /// A ring group, by its number.
    RingGroup(String),
    Extension(String),
    /// A DID's target: every member of the group rings.
    Group(String),
    /// An outside number, by the route it takes.
    Outside(crate::outside::RouteId),
    Unknown,
}

/// The numbers the PBX answers itself ("" disables one).
#[derive(Debug, Clone, Default)]
pub struct Dialplan {
    tests: Vec<(String, TestNumber)>,
    features: Vec<(String, State)>,
    /// Forwarding codes: (code, rule, whether it clears).
    forwards: Vec<(String, When, bool)>,
    /// Pickup codes: of any colleague's call, of an extension's (+ number).
    pickup: String,
    pickup_extension: String,
    voicemail: String,
}

impl Dialplan {
    pub fn from_config(config: &Config) -> Dialplan {
        let t = &config.test_numbers;
        let f = &config.features;
        let keep = |n: &String| !n.is_empty();
        Dialplan {
            tests: [
                (&t.echo, TestNumber::Echo),
                (&t.hangup, TestNumber::Hangup),
                (&t.busy, TestNumber::Busy),
            ]
            .into_iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, k)| (n.clone(), k))
            .collect(),
            features: [
                (&f.available, State::Available),
                (&f.away, State::Away),
                (&f.busy, State::Busy),
            ]
            .into_iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, s)| (n.clone(), s))
            .collect(),
            forwards: [
                (&f.forward_always, When::Always, false),
                (&f.forward_always_off, When::Always, true),
                (&f.forward_busy, When::Busy, false),
                (&f.forward_busy_off, When::Busy, true),
                (&f.forward_no_answer, When::NoAnswer, false),
                (&f.forward_no_answer_off, When::NoAnswer, true),
            ]
            .into_iter()
            .filter(|(n, _, _)| keep(n))
            .map(|(n, w, off)| (n.clone(), w, off))
            .collect(),
            pickup: f.pickup.clone(),
            pickup_extension: f.pickup_extension.clone(),
            voicemail: f.voicemail.clone(),
        }
    }

    /// The target of `number`: test numbers first, then queues, ring groups,
    /// feature codes and the extensions `is_user` knows.
    pub fn route(
        &self,
        number: &[u8],
        queues: &Directory,
        is_user: impl Fn(&str) -> bool,
    ) -> Target {
        if let Some((_, t)) = self.tests.iter().find(|(n, _)| n.as_bytes() == number) {
            return Target::Test(*t);
        }
        let Ok(number) = std::str::from_utf8(number) else {
            return Target::Unknown;
        };
        if let Some(q) = queues.queue_by_number(number) {
            return Target::Queue(q);
        }
        if queues.ring_group(number).is_some() {
            return Target::RingGroup(number.to_string());
        }
        if let Some((_, s)) = self.features.iter().find(|(n, _)| n == number) {
            return Target::Feature(*s);
        }
        if let Some(t) = self.forward(number) {
            return t;
        }
        if !self.voicemail.is_empty() && number == self.voicemail {
            return Target::Voicemail;
        }
        if !self.pickup.is_empty() && number == self.pickup {
            return Target::Pickup(None);
        }
        if let Some(ext) = number
            .strip_prefix(self.pickup_extension.as_str())
            .filter(|_| !self.pickup_extension.is_empty())
        {
            return match ext.is_empty() {
                true => Target::Incomplete,
                false => Target::Pickup(Some(ext.to_string())),
            };
        }
        if is_user(number) {
            return Target::Extension(number.to_string());
        }
        Target::Unknown
    }

    /// A forwarding code: the exact clearing code, or a setting code followed
    /// by a number (a clearing code wins over a setting code it starts with).
    fn forward(&self, number: &str) -> Option<Target> {
        if let Some((_, when, _)) = self.forwards.iter().find(|(n, _, off)| *off && n == number) {
            return Some(Target::Forward(*when, None));
        }
        let (code, when, _) = self
            .forwards
            .iter()
            .filter(|(n, _, off)| !off && number.starts_with(n.as_str()))
            .max_by_key(|(n, _, _)| n.len())?;
        let to = &number[code.len()..];
        Some(match to.is_empty() {
            true => Target::Incomplete,
            false => Target::Forward(*when, Some(to.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Overflow, Queue};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn every_kind_of_number_goes_where_the_configuration_says() {
        let plan = Dialplan::from_config(&Config::default());
        let mut queues = Directory::default();
        let music = Arc::new(crate::media::prompt::Prompt::confirm());
        let q = queues.add_queue(Queue {
            number: "500".into(),
            groups: Vec::new(),
            ring: Duration::from_secs(1),
            max_wait: Duration::from_secs(1),
            wrap_up: Duration::ZERO,
            greeting: None,
            music: Arc::clone(&music),
            overflow: Overflow::Announce(Arc::clone(&music)),
            sorry: music,
            service_level: Duration::from_secs(20),
        });
        queues.add_ring_group(crate::routing::RingGroup {
            number: "600".into(),
            group: crate::routing::GroupId(0),
            in_order: false,
            ring: Duration::from_secs(1),
            then: None,
        });
        let users = |n: &str| n == "201" || n == "500";
        let table: &[(&[u8], Target)] = &[
            (b"9000", Target::Test(TestNumber::Echo)),
            (b"9001", Target::Test(TestNumber::Hangup)),
            (b"9002", Target::Test(TestNumber::Busy)),
            (b"*40", Target::Feature(State::Available)),
            (b"*41", Target::Feature(State::Away)),
            (b"*42", Target::Feature(State::Busy)),
            (b"*72203", Target::Forward(When::Always, Some("203".into()))),
            (b"*72", Target::Incomplete),
            (b"*73", Target::Forward(When::Always, None)),
            (b"*90600", Target::Forward(When::Busy, Some("600".into()))),
            (b"*91", Target::Forward(When::Busy, None)),
            (
                b"*520049301",
                Target::Forward(When::NoAnswer, Some("0049301".into())),
            ),
            (b"*53", Target::Forward(When::NoAnswer, None)),
            (b"*8", Target::Pickup(None)),
            (b"*97", Target::Voicemail),
            (b"**201", Target::Pickup(Some("201".into()))),
            (b"**", Target::Incomplete),
            (b"600", Target::RingGroup("600".into())),
            (b"500", Target::Queue(q)),
            (b"201", Target::Extension("201".into())),
            (b"202", Target::Unknown),
            (b"20\xff", Target::Unknown),
            (b"", Target::Unknown),
        ];
        for (number, want) in table {
            assert_eq!(
                &plan.route(number, &queues, users),
                want,
                "{}",
                String::from_utf8_lossy(number)
            );
        }
    }

    #[test]
    fn a_disabled_number_is_not_routed() {
        let mut config = Config::default();
        config.test_numbers.echo = String::new();
        config.features.away = String::new();
        let plan = Dialplan::from_config(&config);
        let none = Directory::default();
        assert_eq!(plan.route(b"", &none, |_| false), Target::Unknown);
        assert_eq!(plan.route(b"*41", &none, |_| false), Target::Unknown);
    }
}
