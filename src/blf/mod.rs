//! BLF: subscriptions to an extension's state (RFC 6665) for the lamps of desk
//! phones, in three event packages: `dialog` (RFC 4235: the extension's calls,
//! trying → early → confirmed → terminated; a call ringing there carries the
//! `local-tag` and `remote-tag` a phone's key picks it up with, see
//! `calls::pickup`), `presence` (PIDF, RFC 3863, with
//! the board's state as an RPID activity and a note) and `message-summary`
//! (RFC 3842: the message lamp, from [`crate::mwi`]; only the extension's own
//! user may subscribe to it). Every change in the presence map or the message
//! counts sends a NOTIFY with the full state. Phones configured for it get
//! their message lamp by unsolicited NOTIFY to every registered contact, on
//! each change and when they register.
//!
//! A transaction user of its own: a subscription is a dialog of the shard that
//! received its SUBSCRIBE, and the module acts only through its [`Cx`]. At most
//! one NOTIFY per subscription is in flight; changes meanwhile are coalesced into
//! the next one, so a flood of changes never becomes a NOTIFY storm. A
//! subscription whose NOTIFY fails (481, a timeout, any error) or that runs out
//! without a refresh is removed.

use crate::mwi::Summary;
use crate::presence::{Change, DialogFact, Direction, State};
use crate::sip::auth::Verdict;
use crate::sip::message::{build::random_tag, parse, Builder, HeaderName, Message, Method};
use crate::sip::transaction::TxId;
use crate::sip::{CallId, Dialog, Remote, StatusCode};
use crate::tu::ReqId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The context of a BLF input.
pub(crate) type Cx<'a> = crate::tu::Cx<'a, Timer>;

/// The module's timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A subscription's expiry, by the subscription's Call-ID.
    Expiry(CallId),
    /// An extension's phones get their lamp unsolicited (after registering:
    /// once the REGISTER has its answer).
    Lamp(String),
}

/// How long after a registration its phone gets the unsolicited lamp: after
/// the REGISTER's answer (held until durable), once a booting phone listens.
const LAMP_AFTER_REGISTER: Duration = Duration::from_secs(2);

/// The event packages we notify.
pub const ALLOW_EVENTS: &str = "dialog, presence, message-summary";

/// Most subscriptions one shard keeps (a phone with 100 BLF keys holds 100); new
/// ones beyond get 503, so a misbehaving client cannot grow memory unbounded.
const MAX_SUBSCRIPTIONS: usize = 50_000;

/// Subscription lifetime bounds (seconds).
const MIN_EXPIRES: u32 = 60;
const MAX_EXPIRES: u32 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Package {
    Dialog,
    Presence,
    MessageSummary,
}

impl Package {
    fn parse(event: &[u8]) -> Option<Package> {
        let name = event.split(|c| *c == b';').next()?.trim_ascii();
        if name.eq_ignore_ascii_case(b"dialog") {
            Some(Package::Dialog)
        } else if name.eq_ignore_ascii_case(b"presence") {
            Some(Package::Presence)
        } else if name.eq_ignore_ascii_case(b"message-summary") {
            Some(Package::MessageSummary)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Package::Dialog => "dialog",
            Package::Presence => "presence",
            Package::MessageSummary => "message-summary",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Package::Dialog => "application/dialog-info+xml",
            Package::Presence => "application/pidf+xml",
            Package::MessageSummary => "application/simple-message-summary",
        }
    }
}

/// What a NOTIFY reports: the extension's state and calls at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    state: State,
    dialogs: Arc<[DialogFact]>,
    messages: Summary,
}

/// One subscription (a dialog of ours, we are the notifier).
#[derive(Debug)]
struct Subscription {
    package: Package,
    extension: String,
    /// Our `entity` (the monitored AOR).
    entity: String,
    dialog: Dialog,
    expires_at: Instant,
    /// The dialog-info document version (RFC 4235 §4.1).
    version: u32,
    in_flight: Option<ReqId>,
    /// The latest state not yet sent (coalesced while a NOTIFY is in flight).
    pending: Option<Snapshot>,
    /// The dialogs of the last NOTIFY: one that vanished is reported terminated.
    reported: Vec<DialogFact>,
    /// The state and the messages of the last NOTIFY.
    reported_state: Option<State>,
    reported_messages: Option<Summary>,
    /// The subscription ends once this NOTIFY is sent (expiry, unsubscribe).
    terminating: bool,
    timer_at: Option<Instant>,
}

/// The subscriptions of one shard.
#[derive(Debug, Default)]
pub struct Blf {
    /// By the subscription dialog's Call-ID.
    subscriptions: HashMap<CallId, Subscription>,
    /// The subscriptions to each extension.
    by_extension: HashMap<String, Vec<CallId>>,
    /// Our NOTIFYs in flight, by the subscription they belong to.
    notifies: HashMap<ReqId, CallId>,
}

/// The extension's state, calls and messages now.
fn snapshot(env: &crate::tu::Env, extension: &str) -> Snapshot {
    Snapshot {
        state: env
            .presence
            .state(extension)
            .map_or(State::Offline, |s| s.0),
        dialogs: env.presence.dialogs(extension),
        messages: env.mwi.summary(extension),
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
fn dialog_info(
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
        // A ringing call's tags let a watching phone pick it up (INVITE
        // with Replaces naming the caller's dialog with the PBX).
        let tags = match (&d.tags, d.direction) {
            (Some(t), Direction::Recipient) => format!(
                " local-tag=\"{}\" remote-tag=\"{}\"",
                xml_escape(&t.local),
                xml_escape(&t.remote)
            ),
            _ => String::new(),
        };
        let _ = write!(
            x,
            "<dialog id=\"{}\" call-id=\"{}\"{tags} direction=\"{direction}\"><state>{state}</state><remote><identity>sip:{}@{}</identity></remote></dialog>\r\n",
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
fn pidf(entity: &str, state: State) -> String {
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

impl Blf {
    /// SUBSCRIBE: a new subscription (authenticated), a refresh, or an
    /// unsubscribe (`Expires: 0`).
    pub fn on_subscribe(&mut self, cx: &mut Cx<'_>, tx: TxId, req: &Message, remote: Remote) {
        let Some(call_id) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        let refresh = req.to_header().and_then(|t| t.tag()).is_some();
        let Some(package) = req.value(HeaderName::Event).and_then(Package::parse) else {
            let mut b = cx.response(req, remote, StatusCode::BAD_EVENT);
            b.header("Allow-Events", ALLOW_EVENTS);
            return cx.respond(tx, b.finish());
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
            let mut b = cx.response(req, remote, StatusCode::NOT_ACCEPTABLE);
            b.header("Accept", package.content_type());
            return cx.respond(tx, b.finish());
        }
        let expires = match req.expires() {
            Some(Err(())) => return cx.reply_with(tx, req, remote, 400, "Bad Expires"),
            Some(Ok(0)) => 0,
            Some(Ok(e)) if e < MIN_EXPIRES => {
                let mut b = cx.response(req, remote, StatusCode::INTERVAL_TOO_BRIEF);
                b.header("Min-Expires", MIN_EXPIRES.to_string());
                return cx.respond(tx, b.finish());
            }
            Some(Ok(e)) => e.min(MAX_EXPIRES),
            None => MAX_EXPIRES,
        };
        if refresh {
            return self.refresh(cx, tx, req, remote, &call_id, expires);
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            let mut b = cx.response_with(
                req,
                remote,
                503,
                "Service Unavailable (Too Many Subscriptions)",
            );
            b.header("Retry-After", "60");
            return cx.respond(tx, b.finish());
        }
        let env = cx.env;
        let credentials = req
            .authorizations(HeaderName::Authorization)
            .chain(req.authorizations(HeaderName::ProxyAuthorization));
        let verdict = env
            .auth
            .verify(cx.now, b"SUBSCRIBE", credentials, |u| env.users.ha1(u));
        // Authenticated first: an unauthenticated subscriber cannot tell the
        // extensions that exist from those that do not.
        let user = match env
            .guard
            .verdict(cx.now, remote.addr.ip(), "SUBSCRIBE", verdict)
        {
            Verdict::Authenticated(user) => user,
            Verdict::Challenge { stale } => {
                let mut b = cx.response(req, remote, StatusCode::UNAUTHORIZED);
                for c in env.auth.challenges(cx.now, stale) {
                    b.header("WWW-Authenticate", c);
                }
                return cx.respond(tx, b.finish());
            }
            Verdict::Forbidden { .. } => return cx.reply(tx, req, remote, StatusCode::FORBIDDEN),
        };
        let Some(extension) = req
            .request_uri()
            .and_then(|u| u.user)
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .filter(|e| env.presence.contains(e))
        else {
            return cx.reply(tx, req, remote, StatusCode::NOT_FOUND);
        };
        // Anyone may watch a colleague's lamps; only I see my messages.
        if package == Package::MessageSummary && user != extension {
            tracing::info!(%user, %extension, "message-summary of another user refused");
            return cx.reply(tx, req, remote, StatusCode::FORBIDDEN);
        }
        let mut b = cx.response(req, remote, StatusCode::OK);
        b.header("Expires", expires.to_string())
            .header("Contact", format!("<sip:{}>", cx.hostport(remote)))
            .header("Allow-Events", ALLOW_EVENTS);
        let ok = b.finish();
        let dialog = parse(ok.clone(), &Default::default())
            .ok()
            .and_then(|m| Dialog::from_uas(req, &m, remote));
        cx.respond(tx, ok);
        let Some(dialog) = dialog else { return };
        let sub = Subscription {
            package,
            entity: format!("sip:{extension}@{}", env.domain),
            extension: extension.clone(),
            dialog,
            expires_at: subscription_end(cx, expires),
            version: 0,
            in_flight: None,
            pending: Some(snapshot(env, &extension)),
            reported: Vec::new(),
            reported_state: None,
            reported_messages: None,
            terminating: expires == 0,
            timer_at: None,
        };
        tracing::debug!(%call_id, %extension, event = package.name(), "subscription");
        self.by_extension
            .entry(extension)
            .or_default()
            .push(call_id.clone());
        self.subscriptions.insert(call_id.clone(), sub);
        self.notify(cx, &call_id);
    }

    fn refresh(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        call_id: &CallId,
        expires: u32,
    ) {
        let ours = req.to_header().and_then(|t| t.tag());
        let end = subscription_end(cx, expires);
        let Some(sub) = self
            .subscriptions
            .get_mut(call_id)
            .filter(|s| s.dialog.local_tag() == ours)
        else {
            return cx.reply_with(tx, req, remote, 481, "Subscription Does Not Exist");
        };
        sub.expires_at = end;
        sub.terminating = expires == 0;
        sub.pending = Some(snapshot(cx.env, &sub.extension));
        let mut b = cx.response(req, remote, StatusCode::OK);
        b.header("Expires", expires.to_string())
            .header("Contact", format!("<sip:{}>", cx.hostport(remote)));
        cx.respond(tx, b.finish());
        self.notify(cx, call_id);
    }

    /// Sends the pending state of subscription `key` unless a NOTIFY is in flight.
    fn notify(&mut self, cx: &mut Cx<'_>, key: &CallId) {
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
                dialog_info(
                    &sub.entity,
                    sub.version - 1,
                    &snap.dialogs,
                    &ended,
                    &cx.env.domain,
                )
            }
            Package::Presence => pidf(&sub.entity, snap.state),
            Package::MessageSummary => snap.messages.body(&sub.entity),
        };
        sub.reported = snap.dialogs.to_vec();
        sub.reported_state = Some(snap.state);
        sub.reported_messages = Some(snap.messages);
        let remaining = sub.expires_at.saturating_duration_since(cx.now).as_secs();
        let state = if sub.terminating || remaining == 0 {
            "terminated;reason=timeout".to_string()
        } else {
            format!("active;expires={remaining}")
        };
        sub.dialog.cseq += 1;
        let remote = sub.dialog.remote;
        let bytes = sub.dialog.request_with(
            &Method::Notify,
            sub.dialog.cseq,
            &cx.hostport(remote),
            &[
                ("Event", sub.package.name()),
                ("Subscription-State", &state),
            ],
            Some((sub.package.content_type(), body.as_bytes())),
        );
        let id = cx.send(bytes, remote);
        sub.in_flight = Some(id);
        self.notifies.insert(id, key.clone());
        self.arm(cx, key);
    }

    /// The answer to one of our NOTIFYs (`None`: it timed out or was not sent).
    pub fn on_response(&mut self, cx: &mut Cx<'_>, id: ReqId, resp: Option<&Message>) {
        let code = resp.and_then(Message::status).unwrap_or(408);
        if code < 200 {
            return;
        }
        let Some(key) = self.notifies.remove(&id) else {
            return;
        };
        let Some(sub) = self.subscriptions.get_mut(&key) else {
            return;
        };
        sub.in_flight = None;
        if code >= 300 {
            // 481 (the phone forgot it), 408, or any error: a dead subscription.
            tracing::debug!(call_id = %key, code, "NOTIFY refused; subscription removed");
            return self.end(&key);
        }
        if sub.terminating && sub.pending.is_none() {
            return self.end(&key);
        }
        self.notify(cx, &key);
    }

    fn end(&mut self, key: &CallId) {
        if let Some(sub) = self.subscriptions.remove(key) {
            if let Some(list) = self.by_extension.get_mut(&sub.extension) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    self.by_extension.remove(&sub.extension);
                }
            }
            if let Some(id) = sub.in_flight {
                self.notifies.remove(&id);
            }
        }
    }

    fn arm(&mut self, cx: &mut Cx<'_>, key: &CallId) {
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        if sub.timer_at == Some(sub.expires_at) {
            return;
        }
        sub.timer_at = Some(sub.expires_at);
        cx.timer(sub.expires_at, Timer::Expiry(key.clone()));
    }

    /// `extension` registered a phone: it gets its lamp shortly.
    pub fn on_registered(&mut self, cx: &mut Cx<'_>, extension: &str) {
        cx.timer(
            cx.now + LAMP_AFTER_REGISTER,
            Timer::Lamp(extension.to_string()),
        );
    }

    pub fn on_timer(&mut self, cx: &mut Cx<'_>, key: &Timer, at: Instant) {
        match key {
            Timer::Expiry(call_id) => self.expired(cx, call_id, at),
            Timer::Lamp(extension) => self.notify_unsolicited(cx, extension),
        }
    }

    /// A subscription's expiry timer fired: unless refreshed since, a last NOTIFY
    /// (terminated) and it is gone.
    fn expired(&mut self, cx: &mut Cx<'_>, key: &CallId, at: Instant) {
        let last_call = subscription_end(cx, 0);
        let Some(sub) = self.subscriptions.get_mut(key) else {
            return;
        };
        if sub.timer_at != Some(at) {
            return;
        }
        sub.timer_at = None;
        if cx.now < sub.expires_at {
            return self.arm(cx, key);
        }
        if sub.in_flight.is_some() || sub.terminating {
            // Not answering its NOTIFYs either: drop it without another.
            return self.end(key);
        }
        sub.terminating = true;
        sub.expires_at = last_call;
        sub.pending = Some(snapshot(cx.env, &sub.extension));
        self.notify(cx, key);
    }

    /// A presence change: every subscription to that extension is notified.
    pub fn on_presence_change(&mut self, cx: &mut Cx<'_>, change: &Change) {
        let Some(keys) = self.by_extension.get(&change.extension).cloned() else {
            return;
        };
        for key in keys {
            if let Some(sub) = self.subscriptions.get_mut(&key) {
                if sub.terminating || sub.package == Package::MessageSummary {
                    continue;
                }
                sub.pending = Some(Snapshot {
                    state: change.state,
                    dialogs: Arc::clone(&change.dialogs),
                    messages: cx.env.mwi.summary(&change.extension),
                });
                self.notify(cx, &key);
            }
        }
    }

    /// `extension`'s message counts changed: its message-summary subscribers
    /// are notified.
    pub fn on_messages_change(&mut self, cx: &mut Cx<'_>, extension: &str) {
        let Some(keys) = self.by_extension.get(extension).cloned() else {
            return;
        };
        for key in keys {
            if let Some(sub) = self.subscriptions.get_mut(&key) {
                if !sub.terminating && sub.package == Package::MessageSummary {
                    sub.pending = Some(snapshot(cx.env, extension));
                    self.notify(cx, &key);
                }
            }
        }
    }

    /// An unsolicited message-summary NOTIFY (outside any dialog, as phones
    /// configured for it expect) to every registered contact of `extension`.
    /// Their answers are not waited for: the next change sends the state again.
    pub fn notify_unsolicited(&mut self, cx: &mut Cx<'_>, extension: &str) {
        let env = cx.env;
        let account = format!("sip:{extension}@{}", env.domain);
        let body = env.mwi.summary(extension).body(&account);
        for binding in env.registrar.lookup(extension, cx.wall) {
            let remote = binding.remote();
            let hostport = cx.hostport(remote);
            let mut b = Builder::request(&Method::Notify, binding.contact.as_bytes());
            b.header("Via", cx.via(remote))
                .header("Max-Forwards", "70")
                .header("From", format!("<{account}>;tag={}", random_tag()))
                .header("To", format!("<{account}>"))
                .header("Call-ID", cx.new_call_id().to_string())
                .header("CSeq", "1 NOTIFY")
                .header("Contact", format!("<sip:{hostport}>"))
                .header("Event", "message-summary")
                .header("Subscription-State", "active")
                .header("User-Agent", crate::sip::message::build::PRODUCT);
            let bytes = b.finish_with_body(
                Some(Package::MessageSummary.content_type()),
                body.as_bytes(),
            );
            cx.send(bytes, remote);
        }
    }

    /// Changes may have been missed: every subscription whose extension is not
    /// as last reported (or queued) gets the current state.
    pub fn on_presence_lag(&mut self, cx: &mut Cx<'_>) {
        let keys: Vec<CallId> = self.subscriptions.keys().cloned().collect();
        for key in keys {
            let Some(sub) = self.subscriptions.get_mut(&key) else {
                continue;
            };
            let snap = snapshot(cx.env, &sub.extension);
            let known = match &sub.pending {
                Some(p) => {
                    p.state == snap.state
                        && p.dialogs == snap.dialogs
                        && p.messages == snap.messages
                }
                None => {
                    sub.reported_state == Some(snap.state)
                        && *sub.reported == *snap.dialogs
                        && sub.reported_messages == Some(snap.messages)
                }
            };
            if !known && !sub.terminating {
                sub.pending = Some(snap);
                self.notify(cx, &key);
            }
        }
    }

    /// Whether this shard has subscriptions to `extension`.
    pub fn watches(&self, extension: &str) -> bool {
        self.by_extension.contains_key(extension)
    }

    /// Live subscriptions of this shard.
    pub fn count(&self) -> usize {
        self.subscriptions.len()
    }
}

/// When a subscription for `expires` seconds ends; an ending one (0) lives on
/// for its last NOTIFY's transaction (64*T1) to be answered.
fn subscription_end(cx: &Cx<'_>, expires: u32) -> Instant {
    match expires {
        0 => cx.now + cx.env.timers.t1 * 64,
        e => cx.now + Duration::from_secs(u64::from(e)),
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
            tags: None,
        }
    }

    #[test]
    fn a_ringing_dialog_carries_the_tags_a_phone_picks_it_up_with() {
        let tags = Arc::new(crate::presence::DialogTags {
            local: "pbx\"1".into(),
            remote: "caller".into(),
        });
        let ringing = DialogFact {
            tags: Some(tags.clone()),
            ..fact(1, DialogState::Early)
        };
        let placed = DialogFact {
            tags: Some(tags),
            direction: Direction::Initiator,
            ..fact(2, DialogState::Early)
        };
        let doc = dialog_info("sip:202@pbx", 1, &[ringing, placed], &[], "pbx");
        assert!(
            doc.contains("<dialog id=\"1\" call-id=\"c&lt;1&gt;\" local-tag=\"pbx&quot;1\" remote-tag=\"caller\" direction=\"recipient\">"),
            "{doc}"
        );
        assert!(
            doc.contains("<dialog id=\"2\" call-id=\"c&lt;1&gt;\" direction=\"initiator\">"),
            "only a call ringing here is offered for pickup: {doc}"
        );
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
        assert_eq!(
            Package::parse(b"message-summary"),
            Some(Package::MessageSummary)
        );
        assert_eq!(Package::parse(b"conference"), None);
    }
}
