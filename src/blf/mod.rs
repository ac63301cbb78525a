//! BLF: subscriptions to an extension's state (RFC 6665) for the lamps of desk
//! phones, in two event packages: `dialog` (RFC 4235: the extension's calls,
//! trying → early → confirmed → terminated) and `presence` (PIDF, RFC 3863, with
//! the board's state as an RPID activity and a note). Every change in the
//! presence map sends a NOTIFY with the full state.
//!
//! This module extends the shard's [`Endpoint`]: a subscription is a dialog of
//! the shard that received its SUBSCRIBE. At most one NOTIFY per subscription is
//! in flight; changes meanwhile are coalesced into the next one, so a flood of
//! changes never becomes a NOTIFY storm. A subscription whose NOTIFY fails (481,
//! a timeout, any error) or that runs out without a refresh is removed.

use crate::b2bua::{Dialog, Pending};
use crate::endpoint::Endpoint;
use crate::presence::{Change, DialogFact, Direction, State};
use crate::sip::auth::Verdict;
use crate::sip::message::{parse, HeaderName, Message, Method};
use crate::sip::transaction::TxId;
use crate::sip::Remote;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timer keys of subscriptions: this prefix and the Call-ID.
pub(crate) const SUBSCRIPTION_TIMER: &str = "subscription\0";

/// The event packages we notify.
pub const ALLOW_EVENTS: &str = "dialog, presence";

/// Most subscriptions one shard keeps (a phone with 100 BLF keys holds 100); new
/// ones beyond get 503, so a misbehaving client cannot grow memory unbounded.
const MAX_SUBSCRIPTIONS: usize = 50_000;

/// Subscription lifetime bounds (seconds).
const MIN_EXPIRES: u32 = 60;
const MAX_EXPIRES: u32 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Package {
    Dialog,
    Presence,
}

impl Package {
    fn parse(event: &[u8]) -> Option<Package> {
        let name = event.split(|c| *c == b';').next()?.trim_ascii();
        if name.eq_ignore_ascii_case(b"dialog") {
            Some(Package::Dialog)
        } else if name.eq_ignore_ascii_case(b"presence") {
            Some(Package::Presence)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Package::Dialog => "dialog",
            Package::Presence => "presence",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Package::Dialog => "application/dialog-info+xml",
            Package::Presence => "application/pidf+xml",
        }
    }
}

/// What a NOTIFY reports: the extension's state and calls at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    state: State,
    dialogs: Arc<[DialogFact]>,
}

/// One subscription (a dialog of ours, we are the notifier).
#[derive(Debug)]
pub(crate) struct Subscription {
    package: Package,
    extension: String,
    /// Our `entity` (the monitored AOR).
    entity: String,
    dialog: Dialog,
    expires_at: Instant,
    /// The dialog-info document version (RFC 4235 §4.1).
    version: u32,
    in_flight: Option<TxId>,
    /// The latest state not yet sent (coalesced while a NOTIFY is in flight).
    pending: Option<Snapshot>,
    /// The dialogs of the last NOTIFY: one that vanished is reported terminated.
    reported: Vec<DialogFact>,
    /// The state of the last NOTIFY.
    reported_state: Option<State>,
    /// The subscription ends once this NOTIFY is sent (expiry, unsubscribe).
    terminating: bool,
    timer_at: Option<Instant>,
}

/// The extension's state and calls now, from the presence map.
fn snapshot(presence: &crate::presence::Presence, extension: &str) -> Snapshot {
    Snapshot {
        state: presence.state(extension).map_or(State::Offline, |s| s.0),
        dialogs: presence.dialogs(extension),
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// An RFC 4235 full-state document: the current dialogs, and those reported
/// before that have ended since (as terminated).
pub(crate) fn dialog_info(
    entity: &str,
    version: u32,
    dialogs: &[DialogFact],
    ended: &[DialogFact],
    domain: &str,
) -> String {
    let mut x = format!(
        "<?xml version=\"1.0\"?>\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" state=\"full\" entity=\"{}\">\r\n",
        xml_escape(entity)
    );
    let current = dialogs.iter().map(|d| (d, d.state.as_str()));
    let gone = ended.iter().map(|d| (d, "terminated"));
    for (d, state) in current.chain(gone) {
        let direction = match d.direction {
            Direction::Initiator => "initiator",
            Direction::Recipient => "recipient",
        };
        let _ = write!(
            x,
            "<dialog id=\"{}\" call-id=\"{}\" direction=\"{direction}\"><state>{state}</state><remote><identity>sip:{}@{}</identity></remote></dialog>\r\n",
            d.id.0,
            xml_escape(&d.call_id),
            xml_escape(&d.peer),
            xml_escape(domain),
        );
    }
    x.push_str("</dialog-info>\r\n");
    x
}

/// A PIDF document (RFC 3863) with an RPID activity (RFC 4480) and the board's
/// state as the note.
pub(crate) fn pidf(entity: &str, state: State) -> String {
    let basic = if state == State::Offline {
        "closed"
    } else {
        "open"
    };
    let activity = match state {
        State::Ringing | State::OnCall => "<rpid:on-the-phone/>",
        State::Away => "<rpid:away/>",
        State::Busy | State::WrapUp => "<rpid:busy/>",
        State::Available | State::Offline => "<rpid:unknown/>",
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"{e}\">\r\n<tuple id=\"sipdesk\"><status><basic>{basic}</basic></status><note>{s}</note></tuple>\r\n<dm:person id=\"p\"><rpid:activities>{activity}</rpid:activities><dm:note>{s}</dm:note></dm:person>\r\n</presence>\r\n",
        e = xml_escape(entity),
        s = state.as_str(),
    )
}

impl Endpoint {
    /// SUBSCRIBE: a new subscription (authenticated), a refresh, or an
    /// unsubscribe (`Expires: 0`).
    pub(crate) fn subscribe(&mut self, now: Instant, tx: TxId, req: &Message, remote: Remote) {
        let call_id = req
            .call_id()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        let refresh = req.to_header().and_then(|t| t.tag()).is_some();
        let Some(package) = req.value(HeaderName::Event).and_then(Package::parse) else {
            let mut b = self.response(req, remote, 489, "Bad Event");
            b.header("Allow-Events", ALLOW_EVENTS);
            return self.send_final(now, tx, b.finish());
        };
        let accepts = req.values(HeaderName::Accept).collect::<Vec<_>>();
        if !accepts.is_empty()
            && !accepts.iter().any(|a| {
                a.split(|c| *c == b',').any(|t| {
                    let t = t
                        .split(|c| *c == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    t.eq_ignore_ascii_case(package.content_type().as_bytes()) || t == b"*/*"
                })
            })
        {
            let mut b = self.response(req, remote, 406, "Not Acceptable");
            b.header("Accept", package.content_type());
            return self.send_final(now, tx, b.finish());
        }
        let expires = match req.expires() {
            Some(Err(())) => return self.reply(now, tx, req, remote, 400, "Bad Expires"),
            Some(Ok(0)) => 0,
            Some(Ok(e)) if e < MIN_EXPIRES => {
                let mut b = self.response(req, remote, 423, "Interval Too Brief");
                b.header("Min-Expires", MIN_EXPIRES.to_string());
                return self.send_final(now, tx, b.finish());
            }
            Some(Ok(e)) => e.min(MAX_EXPIRES),
            None => MAX_EXPIRES,
        };
        if refresh {
            return self.refresh_subscription(now, tx, req, remote, &call_id, expires);
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            let mut b = self.response(
                req,
                remote,
                503,
                "Service Unavailable (Too Many Subscriptions)",
            );
            b.header("Retry-After", "60");
            return self.send_final(now, tx, b.finish());
        }
        let shared = Arc::clone(&self.shared);
        let Some(extension) = req
            .request_uri()
            .and_then(|u| u.user)
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .filter(|e| shared.presence.contains(e))
        else {
            return self.reply(now, tx, req, remote, 404, "Not Found");
        };
        let credentials = req
            .authorizations(HeaderName::Authorization)
            .chain(req.authorizations(HeaderName::ProxyAuthorization));
        match shared
            .auth
            .verify(now, b"SUBSCRIBE", credentials, |u| shared.users.ha1(u))
        {
            Verdict::Authenticated(_) => {}
            Verdict::Challenge { stale } => {
                let mut b = self.response(req, remote, 401, "Unauthorized");
                for c in shared.auth.challenges(now, stale) {
                    b.header("WWW-Authenticate", c);
                }
                return self.send_final(now, tx, b.finish());
            }
            Verdict::Forbidden => return self.reply(now, tx, req, remote, 403, "Forbidden"),
        }
        let mut b = self.response(req, remote, 200, "OK");
        b.header("Expires", expires.to_string())
            .header("Contact", format!("<sip:{}>", self.via_hostport(remote)))
            .header("Allow-Events", ALLOW_EVENTS);
        let ok = b.finish();
        let dialog = parse(ok.clone(), &Default::default())
            .ok()
            .and_then(|m| Dialog::from_uas(req, &m, remote));
        self.send_final(now, tx, ok);
        let Some(dialog) = dialog else { return };
        let sub = Subscription {
            package,
            entity: format!("sip:{extension}@{}", shared.domain),
            extension: extension.clone(),
            dialog,
            expires_at: self.subscription_end(now, expires),
            version: 0,
            in_flight: None,
            pending: Some(snapshot(&shared.presence, &extension)),
            reported: Vec::new(),
            reported_state: None,
            terminating: expires == 0,
            timer_at: None,
        };
        tracing::debug!(%call_id, %extension, event = package.name(), "subscription");
        self.subscriptions_by_ext
            .entry(extension)
            .or_default()
            .push(call_id.clone());
        self.subscriptions.insert(call_id.clone(), sub);
        self.notify(now, &call_id);
    }

    fn refresh_subscription(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        call_id: &str,
        expires: u32,
    ) {
        let ours = req.to_header().and_then(|t| t.tag());
        let end = self.subscription_end(now, expires);
        let Some(sub) = self
            .subscriptions
            .get_mut(call_id)
            .filter(|s| s.dialog.local_tag() == ours)
        else {
            return self.reply(now, tx, req, remote, 481, "Subscription Does Not Exist");
        };
        sub.expires_at = end;
        sub.terminating = expires == 0;
        sub.pending = Some(snapshot(&self.shared.presence, &sub.extension));
        let mut b = self.response(req, remote, 200, "OK");
        b.header("Expires", expires.to_string())
            .header("Contact", format!("<sip:{}>", self.via_hostport(remote)));
        self.send_final(now, tx, b.finish());
        self.notify(now, call_id);
    }

    /// When a subscription for `expires` seconds ends; an ending one (0) lives
    /// on for its last NOTIFY's transaction (64*T1) to be answered.
    fn subscription_end(&self, now: Instant, expires: u32) -> Instant {
        match expires {
            0 => now + self.shared.timers.t1 * 64,
            e => now + Duration::from_secs(u64::from(e)),
        }
    }

    /// Sends the pending state of subscription `key` unless a NOTIFY is in flight.
    fn notify(&mut self, now: Instant, key: &str) {
        let domain = self.shared.domain.clone();
        let Some(remote) = self.subscriptions.get(key).map(|s| s.dialog.remote) else {
            return;
        };
        let hostport = self.via_hostport(remote);
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        if sub.in_flight.is_some() {
            return;
        }
        let Some(snap) = sub.pending.take() else {
            return;
        };
        let body = match sub.package {
            Package::Dialog => {
                let ended: Vec<DialogFact> = sub
                    .reported
                    .iter()
                    .filter(|r| !snap.dialogs.iter().any(|d| d.id == r.id))
                    .cloned()
                    .collect();
                sub.version += 1;
                dialog_info(&sub.entity, sub.version - 1, &snap.dialogs, &ended, &domain)
            }
            Package::Presence => pidf(&sub.entity, snap.state),
        };
        sub.reported = snap.dialogs.to_vec();
        sub.reported_state = Some(snap.state);
        let remaining = sub.expires_at.saturating_duration_since(now).as_secs();
        let state = if sub.terminating || remaining == 0 {
            "terminated;reason=timeout".to_string()
        } else {
            format!("active;expires={remaining}")
        };
        sub.dialog.cseq += 1;
        let bytes = sub.dialog.request_with(
            &Method::Notify,
            sub.dialog.cseq,
            &hostport,
            &[
                ("Event", sub.package.name()),
                ("Subscription-State", &state),
            ],
            Some((sub.package.content_type(), body.as_bytes())),
        );
        match self.layer.send_request(now, bytes, remote) {
            Ok(tx) => {
                if let Some(sub) = self.subscriptions.get_mut(key) {
                    sub.in_flight = Some(tx);
                }
                self.pending.insert(tx, Pending::Notify(key.to_string()));
            }
            Err(e) => {
                tracing::debug!(call_id = %key, "NOTIFY not sent: {e}");
                return self.end_subscription(key);
            }
        }
        self.arm_subscription_timer(key);
    }

    /// The answer to one of our NOTIFYs (`None`: it timed out).
    pub(crate) fn notify_response(
        &mut self,
        now: Instant,
        key: &str,
        tx: TxId,
        resp: Option<&Message>,
    ) {
        let code = self.settle(tx, resp);
        if code < 200 {
            return;
        }
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        sub.in_flight = None;
        if code >= 300 {
            // 481 (the phone forgot it), 408, or any error: a dead subscription.
            tracing::debug!(call_id = %key, code, "NOTIFY refused; subscription removed");
            return self.end_subscription(key);
        }
        if sub.terminating && sub.pending.is_none() {
            return self.end_subscription(key);
        }
        self.notify(now, key);
    }

    fn end_subscription(&mut self, key: &str) {
        if let Some(sub) = self.subscriptions.remove(key) {
            if let Some(list) = self.subscriptions_by_ext.get_mut(&sub.extension) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    self.subscriptions_by_ext.remove(&sub.extension);
                }
            }
        }
    }

    fn arm_subscription_timer(&mut self, key: &str) {
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        if sub.timer_at == Some(sub.expires_at) {
            return;
        }
        sub.timer_at = Some(sub.expires_at);
        self.call_timers.push(std::cmp::Reverse((
            sub.expires_at,
            format!("{SUBSCRIPTION_TIMER}{key}"),
        )));
    }

    /// A subscription's expiry timer fired: unless refreshed since, a last NOTIFY
    /// (terminated) and it is gone.
    pub(crate) fn subscription_timer(&mut self, now: Instant, key: &str, at: Instant) {
        let last_call = self.subscription_end(now, 0);
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        if sub.timer_at != Some(at) {
            return;
        }
        sub.timer_at = None;
        if now < sub.expires_at {
            return self.arm_subscription_timer(key);
        }
        if sub.in_flight.is_some() || sub.terminating {
            // Not answering its NOTIFYs either: drop it without another.
            return self.end_subscription(key);
        }
        sub.terminating = true;
        sub.expires_at = last_call;
        sub.pending = Some(snapshot(&self.shared.presence, &sub.extension));
        self.notify(now, key);
    }

    /// A presence change: every subscription to that extension is notified.
    pub(crate) fn notify_change(&mut self, now: Instant, change: &Change) {
        let Some(keys) = self.subscriptions_by_ext.get(&change.extension).cloned() else {
            return;
        };
        for key in keys {
            if let Some(sub) = self.subscriptions.get_mut(&key) {
                if sub.terminating {
                    continue;
                }
                sub.pending = Some(Snapshot {
                    state: change.state,
                    dialogs: Arc::clone(&change.dialogs),
                });
                self.notify(now, &key);
            }
        }
    }

    /// Changes may have been missed: every subscription whose extension is not
    /// as last reported (or queued) gets the current state.
    pub(crate) fn notify_all(&mut self, now: Instant) {
        let keys: Vec<String> = self.subscriptions.keys().cloned().collect();
        for key in keys {
            let Some(sub) = self.subscriptions.get_mut(&key) else {
                continue;
            };
            let snap = snapshot(&self.shared.presence, &sub.extension);
            let known = match &sub.pending {
                Some(p) => p.state == snap.state && p.dialogs == snap.dialogs,
                None => sub.reported_state == Some(snap.state) && *sub.reported == *snap.dialogs,
            };
            if !known && !sub.terminating {
                sub.pending = Some(snap);
                self.notify(now, &key);
            }
        }
    }

    /// Live subscriptions of this shard.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{DialogId, DialogState};

    fn fact(id: u64, state: DialogState) -> DialogFact {
        DialogFact {
            id: DialogId(id),
            call_id: "c<1>".into(),
            direction: Direction::Recipient,
            state,
            peer: "201".into(),
        }
    }

    #[test]
    fn dialog_info_lists_current_and_ended_dialogs_escaped() {
        let x = dialog_info(
            "sip:202@pbx",
            3,
            &[fact(1, DialogState::Early)],
            &[fact(2, DialogState::Confirmed)],
            "pbx",
        );
        assert!(x.contains("version=\"3\" state=\"full\" entity=\"sip:202@pbx\""));
        assert!(x.contains(
            "<dialog id=\"1\" call-id=\"c&lt;1&gt;\" direction=\"recipient\"><state>early</state>"
        ));
        assert!(x.contains("<dialog id=\"2\" call-id=\"c&lt;1&gt;\" direction=\"recipient\"><state>terminated</state>"));
        assert!(x.contains("<identity>sip:201@pbx</identity>"));
    }

    #[test]
    fn pidf_is_closed_only_when_offline() {
        assert!(pidf("sip:1@x", State::Offline).contains("<basic>closed</basic>"));
        let on_call = pidf("sip:1@x", State::OnCall);
        assert!(on_call.contains("<basic>open</basic>") && on_call.contains("on-the-phone"));
        assert!(pidf("sip:1@x", State::Away).contains("<rpid:away/>"));
    }

    #[test]
    fn event_headers_name_a_package_or_nothing() {
        assert_eq!(Package::parse(b"dialog"), Some(Package::Dialog));
        assert_eq!(Package::parse(b"Presence;id=1"), Some(Package::Presence));
        assert_eq!(Package::parse(b"message-summary"), None);
    }
}
