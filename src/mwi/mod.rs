//! Message waiting: what each extension has waiting for it, for the message
//! lamp of its desk phone (RFC 3842 `message-summary`). One source of truth for
//! the lamp, whatever fills it: call-backs addressed to the agent, and the
//! voicemail messages in the user's mailbox. The desk and the calls that
//! leave a message set the counts; the
//! BLF module reads them for its NOTIFYs, to subscribers and — for the phones
//! configured so — unsolicited to every registered contact.
//!
//! A shared map read on the SIP path; never held across an `.await`.

use dashmap::DashMap;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

/// What one extension has waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Open call-backs for the agent (theirs, their groups', the ones they
    /// handle).
    pub callbacks: u32,
    /// Voicemail messages: new ones, and those already heard.
    pub voice_new: u32,
    pub voice_old: u32,
}

impl Summary {
    /// Whether the lamp is lit.
    pub fn waiting(&self) -> bool {
        self.callbacks > 0 || self.voice_new > 0
    }

    /// The `application/simple-message-summary` body (RFC 3842 §5.2) for
    /// `account` (a SIP URI). Voicemail is the voice class, new/old (heard);
    /// call-backs are written messages: the text class, new/old (none is old:
    /// an item leaves when it is done).
    pub fn body(&self, account: &str) -> String {
        let mut b = String::with_capacity(128);
        let yes = if self.waiting() { "yes" } else { "no" };
        let _ = write!(
            b,
            "Messages-Waiting: {yes}\r\nMessage-Account: {account}\r\nVoice-Message: {}/{}\r\nText-Message: {}/0\r\n",
            self.voice_new, self.voice_old, self.callbacks
        );
        b
    }
}

/// The shared handle.
#[derive(Debug, Clone, Default)]
pub struct Mwi {
    map: Arc<DashMap<String, Summary>>,
    /// Extensions whose phones get NOTIFYs without subscribing.
    unsolicited: Arc<HashSet<String>>,
}

impl Mwi {
    pub fn new(unsolicited: impl IntoIterator<Item = String>) -> Mwi {
        Mwi {
            map: Arc::default(),
            unsolicited: Arc::new(unsolicited.into_iter().collect()),
        }
    }

    pub fn summary(&self, extension: &str) -> Summary {
        self.map.get(extension).map(|s| *s).unwrap_or_default()
    }

    /// Sets the call-backs waiting for `extension`; whether that changed.
    pub fn set_callbacks(&self, extension: &str, n: u32) -> bool {
        let mut s = self.map.entry(extension.to_string()).or_default();
        let changed = s.callbacks != n;
        s.callbacks = n;
        changed
    }

    /// Sets `extension`'s voicemail counts (new, heard); whether that changed.
    pub fn set_voicemail(&self, extension: &str, (new, old): (u32, u32)) -> bool {
        let mut s = self.map.entry(extension.to_string()).or_default();
        let changed = (s.voice_new, s.voice_old) != (new, old);
        (s.voice_new, s.voice_old) = (new, old);
        changed
    }

    /// Whether `extension`'s phones are notified without a subscription.
    pub fn unsolicited(&self, extension: &str) -> bool {
        self.unsolicited.contains(extension)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lamp_is_lit_while_call_backs_wait_and_the_body_says_so() {
        let mwi = Mwi::new(["201".to_string()]);
        assert!(!mwi.summary("202").waiting());
        assert!(mwi.set_callbacks("202", 2));
        assert!(!mwi.set_callbacks("202", 2), "no change");
        let body = mwi.summary("202").body("sip:202@pbx");
        assert_eq!(
            body,
            "Messages-Waiting: yes\r\nMessage-Account: sip:202@pbx\r\nVoice-Message: 0/0\r\nText-Message: 2/0\r\n"
        );
        assert!(mwi.set_callbacks("202", 0));
        assert!(mwi
            .summary("202")
            .body("sip:202@pbx")
            .starts_with("Messages-Waiting: no\r\n"));
        assert!(mwi.unsolicited("201") && !mwi.unsolicited("202"));
    }

    #[test]
    fn new_voicemail_lights_the_lamp_and_heard_messages_do_not() {
        let mwi = Mwi::new([]);
        assert!(mwi.set_voicemail("202", (1, 2)));
        assert!(!mwi.set_voicemail("202", (1, 2)), "no change");
        let body = mwi.summary("202").body("sip:202@pbx");
        assert!(
            body.starts_with("Messages-Waiting: yes\r\n")
                && body.contains("\r\nVoice-Message: 1/2\r\n"),
            "{body}"
        );
        assert!(mwi.set_voicemail("202", (0, 3)));
        assert!(!mwi.summary("202").waiting(), "only heard messages");
    }
}
