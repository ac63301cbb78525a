//! Call forwarding: each user's own rules — always, when busy (or in do not
//! disturb), when not answered within N seconds — each to another number: an
//! extension, a ring group, a queue, or an outside number the user's dialing
//! class allows. One source of truth, read on the SIP path when a call reaches
//! the user; it starts from the config (`[[users]] forward_*`), is changed from
//! the phone's feature codes and the desk, and every change is stored, so a
//! user's own choice outlives a restart (and wins over the config from then
//! on).
//!
//! A shared map read on the SIP path; never held across an `.await`.

use crate::store::Record;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How long a user's phones ring before a no-answer forward, unless they say.
pub const DEFAULT_NO_ANSWER: Duration = Duration::from_secs(20);

/// The shortest and longest no-answer wait a user may set.
pub const NO_ANSWER_SECS: std::ops::RangeInclusive<u32> = 5..=120;

/// Which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Every call, before any phone rings.
    Always,
    /// The user's phones answered busy, or the user is in do not disturb.
    Busy,
    /// Nobody answered in time, or the user has no phone registered.
    NoAnswer,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::Always => "always",
            When::Busy => "busy",
            When::NoAnswer => "no_answer",
        }
    }
}

/// One user's forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<String>,
    /// How long the phones ring before the no-answer forward (0: the default).
    #[serde(default)]
    pub no_answer_secs: u32,
}

impl Rules {
    /// The destination of rule `when`, if set.
    pub fn to(&self, when: When) -> Option<&str> {
        match when {
            When::Always => self.always.as_deref(),
            When::Busy => self.busy.as_deref(),
            When::NoAnswer => self.no_answer.as_deref(),
        }
    }

    /// These rules with rule `when` set to `to` (or, with `None`, cleared).
    pub fn with(mut self, when: When, to: Option<String>) -> Rules {
        *self.slot(when) = to;
        self
    }

    fn slot(&mut self, when: When) -> &mut Option<String> {
        match when {
            When::Always => &mut self.always,
            When::Busy => &mut self.busy,
            When::NoAnswer => &mut self.no_answer,
        }
    }

    /// How long the phones ring before the no-answer forward.
    pub fn no_answer_after(&self) -> Duration {
        match self.no_answer_secs {
            0 => DEFAULT_NO_ANSWER,
            s => Duration::from_secs(u64::from(s)),
        }
    }

    /// Whether any rule is set.
    pub fn any(&self) -> bool {
        self.always.is_some() || self.busy.is_some() || self.no_answer.is_some()
    }
}

/// What a number is, for a forward to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// An extension, ring group or queue of this PBX.
    Inside,
    /// An outside number; whether the user's dialing classes allow it.
    Outside { allowed: bool },
    /// Nothing this PBX can reach.
    Unknown,
}

/// Why a forwarding change was refused (the user's input; nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardingError {
    #[error("{0} cannot forward to itself")]
    ToItself(String),
    #[error("{0} is not a number this PBX can reach")]
    Unknown(String),
    #[error("{0} is an outside number your dialing class does not allow")]
    NotAllowed(String),
    #[error("no_answer_secs must be 0 (the default) or between {} and {}", NO_ANSWER_SECS.start(), NO_ANSWER_SECS.end())]
    BadSeconds,
    #[error("no user {0}")]
    NoUser(String),
}

/// Checks `rules` for `user`, `reach` saying what each number is.
pub fn check(
    user: &str,
    rules: &Rules,
    reach: impl Fn(&str) -> Reach,
) -> Result<(), ForwardingError> {
    if rules.no_answer_secs != 0 && !NO_ANSWER_SECS.contains(&rules.no_answer_secs) {
        return Err(ForwardingError::BadSeconds);
    }
    for when in [When::Always, When::Busy, When::NoAnswer] {
        let Some(to) = rules.to(when) else { continue };
        if to == user {
            return Err(ForwardingError::ToItself(user.to_string()));
        }
        match reach(to) {
            Reach::Inside | Reach::Outside { allowed: true } => {}
            Reach::Outside { allowed: false } => {
                return Err(ForwardingError::NotAllowed(to.to_string()))
            }
            Reach::Unknown => return Err(ForwardingError::Unknown(to.to_string())),
        }
    }
    Ok(())
}

/// A user's rules as stored (the user's own choice, over the config's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRules {
    pub extension: String,
    pub rules: Rules,
}

impl Record for StoredRules {
    const TREE: &'static str = "forwarding.v1";
    fn key(&self) -> Vec<u8> {
        self.extension.as_bytes().to_vec()
    }
}

/// The shared handle.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    map: Arc<DashMap<String, Rules>>,
}

impl Forwarding {
    /// The config's rules, then the stored ones over them.
    pub fn new(
        config: impl IntoIterator<Item = (String, Rules)>,
        stored: impl IntoIterator<Item = StoredRules>,
    ) -> Forwarding {
        let map: DashMap<String, Rules> = config.into_iter().filter(|(_, r)| r.any()).collect();
        for s in stored {
            map.insert(s.extension, s.rules);
        }
        Forwarding { map: Arc::new(map) }
    }

    /// `extension`'s rules (none set: the default, nothing forwarded).
    pub fn rules(&self, extension: &str) -> Rules {
        self.map
            .get(extension)
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Replaces `extension`'s rules (checked by the caller); the record to store.
    pub fn replace(&self, extension: &str, rules: Rules) -> StoredRules {
        self.map.insert(extension.to_string(), rules.clone());
        StoredRules {
            extension: extension.to_string(),
            rules,
        }
    }

    /// Sets (or, with `None`, clears) one rule of `extension`; the record to
    /// store.
    pub fn set(&self, extension: &str, when: When, to: Option<String>) -> StoredRules {
        let rules = self.rules(extension).with(when, to);
        self.replace(extension, rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(n: &str) -> Reach {
        match n {
            "202" | "600" => Reach::Inside,
            "0049301234" => Reach::Outside { allowed: true },
            "00900123" => Reach::Outside { allowed: false },
            _ => Reach::Unknown,
        }
    }

    #[test]
    fn the_stored_choice_wins_over_the_config() {
        let config = Rules {
            always: Some("202".into()),
            ..Rules::default()
        };
        let stored = StoredRules {
            extension: "201".into(),
            rules: Rules::default(),
        };
        let f = Forwarding::new(
            [
                ("201".to_string(), config.clone()),
                ("203".into(), config.clone()),
            ],
            [stored],
        );
        assert_eq!(f.rules("201"), Rules::default(), "cleared by the user");
        assert_eq!(f.rules("203"), config);
        assert_eq!(f.rules("204"), Rules::default());
    }

    #[test]
    fn setting_one_rule_keeps_the_others() {
        let f = Forwarding::default();
        f.set("201", When::Busy, Some("202".into()));
        let stored = f.set("201", When::NoAnswer, Some("600".into()));
        assert_eq!(stored.rules.busy.as_deref(), Some("202"));
        assert_eq!(stored.rules.no_answer.as_deref(), Some("600"));
        assert_eq!(f.rules("201").no_answer_after(), DEFAULT_NO_ANSWER);
        let stored = f.set("201", When::Busy, None);
        assert_eq!(stored.rules.busy, None);
        assert_eq!(f.rules("201").no_answer.as_deref(), Some("600"));
    }

    #[test]
    fn a_forward_to_itself_nowhere_or_a_forbidden_number_is_refused() {
        let with = |when: When, to: &str| {
            let mut r = Rules::default();
            *r.slot(when) = Some(to.into());
            check("201", &r, reach)
        };
        assert_eq!(with(When::Always, "202"), Ok(()));
        assert_eq!(with(When::Busy, "0049301234"), Ok(()));
        assert_eq!(
            with(When::Always, "201"),
            Err(ForwardingError::ToItself("201".into()))
        );
        assert_eq!(
            with(When::NoAnswer, "999"),
            Err(ForwardingError::Unknown("999".into()))
        );
        assert_eq!(
            with(When::Busy, "00900123"),
            Err(ForwardingError::NotAllowed("00900123".into()))
        );
        let r = Rules {
            no_answer_secs: 2,
            ..Rules::default()
        };
        assert_eq!(check("201", &r, reach), Err(ForwardingError::BadSeconds));
    }

    #[test]
    fn a_stored_record_reads_back() {
        let s = StoredRules {
            extension: "201".into(),
            rules: Rules {
                no_answer: Some("202".into()),
                no_answer_secs: 15,
                ..Rules::default()
            },
        };
        let json = serde_json::to_string(&s).expect("encode");
        assert_eq!(
            json,
            r#"{"extension":"201","rules":{"no_answer":"202","no_answer_secs":15}}"#
        );
        let back: StoredRules = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
    }
}
