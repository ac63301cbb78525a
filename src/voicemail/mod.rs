//! Voicemail: each user's mailbox, the messages callers left in it. One
//! source of truth for a mailbox's contents and its message lamp counts
//! (new and heard), read by the calls module (whether a user has a mailbox),
//! the desk (list, play, mark heard, delete) and the lamp ([`crate::mwi`]).
//!
//! A message is its record here and its WAV file in the voice directory
//! (the same durable writer as the queue's voice messages): the WAV is on
//! disk before the record is written, and the record is durable before
//! anyone is told the message was left. A shared map, never held across an
//! `.await`.

use crate::clock::UnixMillis;
use crate::store::Record;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// One message a caller left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VoiceMessage {
    /// Also its WAV's id in the voice directory.
    pub id: u64,
    /// The user whose mailbox it is in.
    pub mailbox: String,
    /// Who called: their number (or "anonymous") and name, if known.
    pub caller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_name: Option<String>,
    /// When it was left.
    pub at_ms: u64,
    /// Its length.
    pub ms: u64,
    /// Listened to (an old message, RFC 3842), else new.
    #[serde(default)]
    pub heard: bool,
}

impl Record for VoiceMessage {
    const TREE: &'static str = "voicemail.v1";
    fn key(&self) -> Vec<u8> {
        crate::store::owned_key(&self.mailbox, self.id)
    }
}

/// A user's own greeting: a recording in the voice directory (recorded on
/// the phone or uploaded) that callers hear instead of the built-in one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Greeting {
    pub mailbox: String,
    /// The recording's id.
    pub id: u64,
    /// Its length.
    pub ms: u64,
}

impl Record for Greeting {
    const TREE: &'static str = "voicemail-greetings.v1";
    fn key(&self) -> Vec<u8> {
        self.mailbox.as_bytes().to_vec()
    }
}

/// A mailbox operation that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoicemailError {
    #[error("{0} has no mailbox")]
    NoMailbox(String),
    #[error("no message {0} in this mailbox")]
    NoMessage(u64),
}

/// The shared handle.
#[derive(Debug, Clone, Default)]
pub struct Mailboxes {
    /// The users who have a mailbox, with the SHA-256 of its PIN (none: the
    /// phone's own credentials are enough).
    owners: Arc<HashMap<String, Option<[u8; 32]>>>,
    /// Each mailbox's messages, oldest first.
    boxes: Arc<DashMap<String, BTreeMap<u64, VoiceMessage>>>,
    /// The users' own greetings.
    greetings: Arc<DashMap<String, Greeting>>,
    /// The longest message a caller may leave.
    pub max_message: Duration,
}

/// A mailbox's lamp counts: (new, heard).
pub type Counts = (u32, u32);

impl Mailboxes {
    /// Mailboxes for `owners` (with their PINs, if any), holding the
    /// `stored` messages.
    pub fn new(
        owners: impl IntoIterator<Item = (String, Option<String>)>,
        max_message: Duration,
        stored: impl IntoIterator<Item = VoiceMessage>,
    ) -> Mailboxes {
        let owners = owners
            .into_iter()
            .map(|(user, pin)| (user, pin.map(|p| pin_hash(&p))))
            .collect();
        let m = Mailboxes {
            owners: Arc::new(owners),
            boxes: Arc::default(),
            greetings: Arc::default(),
            max_message,
        };
        for v in stored {
            m.boxes
                .entry(v.mailbox.clone())
                .or_default()
                .insert(v.id, v);
        }
        m
    }

    /// Whether `user` has a mailbox.
    pub fn has(&self, user: &str) -> bool {
        self.owners.contains_key(user)
    }

    /// `user`'s own greeting, if they have one.
    pub fn greeting(&self, user: &str) -> Option<Greeting> {
        self.greetings.get(user).map(|g| g.clone())
    }

    /// A greeting (durable) replaces `user`'s former one, which is returned.
    pub fn set_greeting(&self, greeting: Greeting) -> Option<Greeting> {
        self.greetings.insert(greeting.mailbox.clone(), greeting)
    }

    /// `user`'s greeting (removed on disk) goes: callers hear the built-in one.
    pub fn remove_greeting(&self, user: &str) -> Option<Greeting> {
        self.greetings.remove(user).map(|(_, g)| g)
    }

    /// Whether `user`'s mailbox asks for a PIN on the phone.
    pub fn has_pin(&self, user: &str) -> bool {
        self.owners.get(user).is_some_and(Option::is_some)
    }

    /// Whether `digits` are `user`'s PIN (compared in constant time).
    pub fn pin_ok(&self, user: &str, digits: &str) -> bool {
        match self.owners.get(user) {
            Some(Some(hash)) => bool::from(hash.ct_eq(&pin_hash(digits))),
            _ => false,
        }
    }

    /// Every mailbox with its counts (for the lamps at start).
    pub fn all_counts(&self) -> Vec<(String, Counts)> {
        self.owners
            .keys()
            .map(|o| (o.clone(), self.counts(o)))
            .collect()
    }

    /// `user`'s (new, heard) message counts.
    pub fn counts(&self, user: &str) -> Counts {
        self.boxes.get(user).map_or((0, 0), |b| {
            let heard = b.values().filter(|v| v.heard).count() as u32;
            (b.len() as u32 - heard, heard)
        })
    }

    /// `user`'s messages, oldest first.
    pub fn list(&self, user: &str) -> Vec<VoiceMessage> {
        self.boxes
            .get(user)
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Message `id` of `user`'s mailbox.
    pub fn get(&self, user: &str, id: u64) -> Result<VoiceMessage, VoicemailError> {
        self.boxes
            .get(user)
            .and_then(|b| b.get(&id).cloned())
            .ok_or(VoicemailError::NoMessage(id))
    }

    /// A message left (already durable); the mailbox's new counts.
    pub fn left(&self, message: VoiceMessage) -> Result<Counts, VoicemailError> {
        let user = message.mailbox.clone();
        if !self.has(&user) {
            return Err(VoicemailError::NoMailbox(user));
        }
        self.boxes
            .entry(user.clone())
            .or_default()
            .insert(message.id, message);
        Ok(self.counts(&user))
    }

    /// Message `id` of `user` as it is once heard (to be stored).
    pub fn heard(&self, user: &str, id: u64) -> Result<VoiceMessage, VoicemailError> {
        let mut v = self.get(user, id)?;
        v.heard = true;
        Ok(v)
    }

    /// Puts a changed message (durable) back; the mailbox's new counts.
    pub fn changed(&self, message: VoiceMessage) -> Counts {
        let user = message.mailbox.clone();
        if let Some(mut b) = self.boxes.get_mut(&user) {
            if let Some(v) = b.get_mut(&message.id) {
                *v = message;
            }
        }
        self.counts(&user)
    }

    /// Removes a message whose removal is durable; the mailbox's new counts.
    pub fn removed(&self, user: &str, id: u64) -> Counts {
        if let Some(mut b) = self.boxes.get_mut(user) {
            b.remove(&id);
        }
        self.counts(user)
    }
}

fn pin_hash(pin: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(pin.as_bytes()).into()
}

/// A message's record for caller `caller` left in `mailbox` now.
pub fn message(
    id: u64,
    mailbox: &str,
    (caller, caller_name): (&str, Option<&str>),
    at: UnixMillis,
    ms: u64,
) -> VoiceMessage {
    VoiceMessage {
        id,
        mailbox: mailbox.to_string(),
        caller: caller.to_string(),
        caller_name: caller_name.map(str::to_string),
        at_ms: at.0,
        ms,
        heard: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_counts_new_and_heard_messages_and_keeps_them_in_order() {
        let m = Mailboxes::new(
            [("202".to_string(), Some("4321".into()))],
            Duration::from_secs(60),
            [],
        );
        assert!(m.has("202") && !m.has("203"));
        assert!(m.has_pin("202") && m.pin_ok("202", "4321"));
        assert!(!m.pin_ok("202", "1234") && !m.pin_ok("203", "4321"));
        let first = message(7, "202", ("5550001", Some("Ann")), UnixMillis(1), 2000);
        let second = message(9, "202", ("anonymous", None), UnixMillis(2), 500);
        assert_eq!(m.left(second.clone()), Ok((1, 0)));
        assert_eq!(m.left(first.clone()), Ok((2, 0)));
        assert_eq!(m.list("202"), [first.clone(), second]);
        let heard = m.heard("202", 7).expect("heard");
        assert!(heard.heard);
        assert_eq!(m.counts("202"), (2, 0), "not heard until stored");
        assert_eq!(m.changed(heard), (1, 1));
        assert_eq!(m.removed("202", 9), (0, 1));
        assert_eq!(m.get("202", 9), Err(VoicemailError::NoMessage(9)));
        let elsewhere = message(1, "203", ("x", None), UnixMillis(3), 1);
        assert_eq!(
            m.left(elsewhere),
            Err(VoicemailError::NoMailbox("203".into()))
        );
        assert_eq!(m.all_counts(), [("202".to_string(), (0, 1))]);
    }

    #[test]
    fn stored_messages_fill_the_mailboxes_at_start() {
        let stored = [message(3, "202", ("1", None), UnixMillis(1), 10)];
        let m = Mailboxes::new([("202".to_string(), None)], Duration::from_secs(60), stored);
        assert!(!m.has_pin("202"));
        assert_eq!(m.counts("202"), (1, 0));
        let k = m.list("202")[0].key();
        assert!(k.starts_with(b"202\0"), "keys group a mailbox: {k:?}");
    }
}
