//! Calls. Today: the test numbers a load tester dials (echo, hang up after N
//! seconds, busy), each a local UAS dialog with its own media session, and the CDR
//! of every call. The B2BUA legs between extensions build on the same dialog and
//! CDR handling.
//!
//! This module extends the shard's [`Endpoint`]: it owns the calls of that shard and
//! runs their dialog timers (2xx retransmission and ACK wait, RFC 3261 §13.3.1.4;
//! hang-up timers) with `now` as an input like the rest of the core.

mod bridge;
pub mod cdr;
mod originate;

pub use originate::OriginateError;
pub(crate) use originate::Origination;

pub(crate) use bridge::{caller_number, caller_of, Bridge, CallTarget, Pending, Side};

use crate::endpoint::Endpoint;
use crate::media;
use crate::sip::message::{Builder, HeaderName, Message, Method, NameAddr, Uri};
use crate::sip::sdp;
use crate::sip::transaction::{reply_remote, Transmit, TxId};
use crate::sip::Remote;
use bytes::Bytes;
use cdr::{Cdr, Disposition, HangupBy};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// What a test number does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestNumber {
    Echo,
    Hangup,
    Busy,
    /// A feature code was dialled: a short confirmation, then hang up.
    Confirmation,
}

/// Where a local call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// 200 sent, waiting for the ACK (retransmitting the 200).
    Answered,
    /// ACK received.
    Confirmed,
}

/// One SIP dialog as seen from our side (RFC 3261 §12): what our in-dialog
/// requests carry and where they go.
#[derive(Debug, Clone)]
pub(crate) struct Dialog {
    pub call_id: String,
    /// Our party with our tag (From of our requests).
    pub local: Bytes,
    /// The peer's party with its tag (To of our requests).
    pub remote_party: Bytes,
    /// The peer's Contact URI: the Request-URI of our requests.
    pub target: Bytes,
    /// Route set (Record-Route, in the order our requests need it).
    pub route: Vec<Bytes>,
    /// Where the peer's messages come from; our requests go there (NAT-safe).
    pub remote: Remote,
    /// Our last CSeq number.
    pub cseq: u32,
}

impl Dialog {
    /// The dialog our INVITE and the peer's 2xx made (we are the UAC).
    pub fn from_uac(invite: &Message, ok: &Message, remote: Remote) -> Option<Dialog> {
        let target = ok
            .contacts()
            .entries()
            .flatten()
            .next()
            .map(|c| Bytes::copy_from_slice(c.uri))?;
        let mut route: Vec<Bytes> = ok
            .values(HeaderName::RecordRoute)
            .map(Bytes::copy_from_slice)
            .collect();
        route.reverse();
        Some(Dialog {
            call_id: invite.call_id().map(lossy)?,
            local: Bytes::copy_from_slice(invite.value(HeaderName::From)?),
            remote_party: Bytes::copy_from_slice(ok.value(HeaderName::To)?),
            target,
            route,
            remote,
            cseq: invite.cseq().map_or(1, |c| c.seq),
        })
    }

    /// The dialog the peer's INVITE and our 2xx made (we are the UAS).
    pub fn from_uas(invite: &Message, ok: &Message, remote: Remote) -> Option<Dialog> {
        let target = invite
            .contacts()
            .entries()
            .flatten()
            .next()
            .map(|c| Bytes::copy_from_slice(c.uri))
            .or_else(|| invite.from_header().map(|f| Bytes::copy_from_slice(f.uri)))?;
        Some(Dialog {
            call_id: invite.call_id().map(lossy)?,
            local: Bytes::copy_from_slice(ok.value(HeaderName::To)?),
            remote_party: Bytes::copy_from_slice(invite.value(HeaderName::From)?),
            target,
            route: invite
                .values(HeaderName::RecordRoute)
                .map(Bytes::copy_from_slice)
                .collect(),
            remote,
            cseq: 0,
        })
    }

    /// A request in this dialog with CSeq `seq` (ACK reuses the INVITE's number).
    pub fn request(&self, method: &Method, seq: u32, hostport: &str, sdp: Option<&[u8]>) -> Bytes {
        let body = sdp.map(|b| ("application/sdp", b));
        self.request_with(method, seq, hostport, &[], body)
    }

    /// A request in this dialog with more headers and a body of any type.
    pub fn request_with(
        &self,
        method: &Method,
        seq: u32,
        hostport: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Bytes {
        let mut b = Builder::request(method, &self.target);
        b.header(
            "Via",
            format!(
                "SIP/2.0/{} {hostport};branch=z9hG4bK{};rport",
                self.remote.transport,
                crate::endpoint::to_tag_string()
            ),
        );
        for r in &self.route {
            b.header("Route", r);
        }
        b.header("Max-Forwards", "70")
            .header("From", &self.local)
            .header("To", &self.remote_party)
            .header("Call-ID", &self.call_id)
            .header("CSeq", format!("{seq} {method}"))
            .header("User-Agent", crate::sip::message::build::PRODUCT);
        if matches!(method, Method::Invite | Method::Update | Method::Notify) {
            b.header("Contact", format!("<sip:{hostport}>"));
        }
        for (name, value) in headers {
            b.header(name, value);
        }
        match body {
            Some((content_type, body)) => b.finish_with_body(Some(content_type), body),
            None => b.finish(),
        }
    }

    /// Our tag (in `local`).
    pub fn local_tag(&self) -> Option<&[u8]> {
        NameAddr::parse(&self.local).and_then(|n| n.tag())
    }

    /// The next request (CSeq + 1).
    pub fn next_request(&mut self, method: &Method, hostport: &str, sdp: Option<&[u8]>) -> Bytes {
        self.cseq += 1;
        self.request(method, self.cseq, hostport, sdp)
    }
}

/// A call answered by the PBX itself (a test number).
#[derive(Debug)]
pub struct LocalCall {
    kind: TestNumber,
    phase: Phase,
    /// Our tag (the To tag of the dialog).
    local_tag: String,
    dialog: Dialog,
    /// The 200 OK, retransmitted until the ACK.
    ok: Bytes,
    ok_to: Remote,
    /// The next dialog timer of this call.
    timer: Option<(Instant, CallTimer)>,
    /// The 2xx retransmit interval, and when to give up waiting for the ACK.
    retransmit: Duration,
    ack_deadline: Instant,
    cdr: Cdr,
    /// The media session; dropping it frees the ports.
    media: Option<media::Session>,
    /// The caller's dialog in the presence map, if the caller is an extension.
    party: Option<bridge::Party>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallTimer {
    Retransmit2xx,
    HangUp,
}

/// How a call that never connected is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub disposition: Disposition,
    pub by: HangupBy,
}

impl Refusal {
    /// A call the PBX could not set up (CDR: failed, ended by the system).
    pub(crate) const fn failed(code: u16, reason: &'static str) -> Refusal {
        Refusal {
            code,
            reason,
            disposition: Disposition::Failed,
            by: HangupBy::System,
        }
    }
}

/// Methods a dialog of ours accepts.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, SUBSCRIBE";

/// The payload type of an SDP answer of ours (its first format; PCMU if unreadable).
pub(crate) fn answered_pt(answer: &[u8]) -> u8 {
    sdp::parse(answer)
        .ok()
        .and_then(|s| s.media.first().and_then(|m| m.formats.first().cloned()))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// The confirmation a feature code plays (synthesised once).
fn confirmation() -> std::sync::Arc<media::prompt::Prompt> {
    static PROMPT: std::sync::OnceLock<std::sync::Arc<media::prompt::Prompt>> =
        std::sync::OnceLock::new();
    std::sync::Arc::clone(
        PROMPT.get_or_init(|| std::sync::Arc::new(media::prompt::Prompt::confirm())),
    )
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The user part of a name-addr header's URI (the number), or "anonymous".
fn party_number(v: Option<NameAddr<'_>>) -> String {
    v.and_then(|n| Uri::parse(n.uri))
        .and_then(|u| u.user)
        .map_or_else(|| "anonymous".to_string(), lossy)
}

/// The local address the kernel would use to reach `peer` (no packet is sent).
pub fn local_ip_toward(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

impl Endpoint {
    /// The test number a Request-URI dials, if any.
    pub(crate) fn test_number(&self, req: &Message) -> Option<TestNumber> {
        let user = req.request_uri()?.user?;
        let t = &self.shared.test_numbers;
        [
            (&t.echo, TestNumber::Echo),
            (&t.hangup, TestNumber::Hangup),
            (&t.busy, TestNumber::Busy),
        ]
        .into_iter()
        .find(|(n, _)| !n.is_empty() && n.as_bytes() == user)
        .map(|(_, k)| k)
    }

    pub(crate) fn media_ip(&self, remote: Remote) -> IpAddr {
        self.shared
            .advertise_ip
            .or_else(|| local_ip_toward(remote.addr))
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    pub(crate) fn new_cdr(&self, now: Instant, req: &Message, callee: &str) -> Cdr {
        let call_id = req.call_id().map(lossy).unwrap_or_default();
        self.cdr_for(now, &call_id, &party_number(req.from_header()), callee)
    }

    /// A CDR for a call starting now (finished by `write_cdr`).
    pub(crate) fn cdr_for(&self, now: Instant, call_id: &str, caller: &str, callee: &str) -> Cdr {
        Cdr {
            id: self.shared.store.next_cdr_id().unwrap_or_default(),
            call_id: call_id.to_string(),
            caller: caller.to_string(),
            callee: callee.to_string(),
            start_ms: self.wall(now).0,
            answer_ms: None,
            end_ms: 0,
            disposition: Disposition::Failed,
            hangup_by: HangupBy::System,
        }
    }

    /// Stores a finished call's CDR; the caller holds its final answer until the
    /// flush (see `hold_until_durable`).
    pub(crate) fn write_cdr(
        &mut self,
        now: Instant,
        mut cdr: Cdr,
        disposition: Disposition,
        by: HangupBy,
    ) {
        cdr.end_ms = self.wall(now).0;
        cdr.disposition = disposition;
        cdr.hangup_by = by;
        let call_id = cdr.call_id.clone();
        if let Err(e) = self.shared.writer.write(crate::store::Write::PutCdr(cdr)) {
            tracing::error!(%call_id, "CDR not stored: {e}");
        }
        self.request_durability();
    }

    /// Refuses a new call: the final answer waits until its CDR is durable.
    pub(crate) fn refuse_call(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        cdr: Cdr,
        r: Refusal,
    ) {
        let answer = self.response(req, remote, r.code, r.reason).finish();
        self.write_cdr(now, cdr, r.disposition, r.by);
        self.hold_until_durable(tx, answer, remote);
    }

    /// Everything a test-number call needs before it is answered: its media session
    /// and our SDP answer; or why it is refused.
    fn prepare_test_call(
        &self,
        req: &Message,
        remote: Remote,
        kind: TestNumber,
        call_id: &str,
        session_id: u64,
    ) -> Result<(media::Session, Bytes), Refusal> {
        if kind == TestNumber::Busy {
            return Err(Refusal {
                code: 486,
                reason: "Busy Here",
                disposition: Disposition::Busy,
                by: HangupBy::Callee,
            });
        }
        let offer = if req.body().is_empty() {
            // Late offer: we offer G.711 in the 200 and read the answer in the ACK.
            sdp::parse(b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 9 RTP/AVP 0 8\r\n")
        } else {
            sdp::parse(req.body())
        };
        let offer = offer.map_err(|e| {
            tracing::info!(%remote, "INVITE with unusable SDP: {e}");
            Refusal::failed(488, "Not Acceptable Here")
        })?;
        let media = self
            .shared
            .media
            .as_ref()
            .ok_or(Refusal::failed(503, "Service Unavailable"))?;
        let idle = self.idle_notifier(call_id.to_string());
        let session = match kind {
            TestNumber::Confirmation => {
                let pt = sdp::local_answer(&offer, self.media_ip(remote), 0, session_id)
                    .map_or(0, |a| answered_pt(&a));
                let peer = bridge::peer_of(&offer, remote.addr);
                media.player(confirmation(), pt, peer, self.shared.inactivity, idle)
            }
            _ => media.echo(self.shared.inactivity, idle),
        }
        .map_err(|e| {
            tracing::warn!("no media for a test call: {e}");
            Refusal::failed(503, "Service Unavailable")
        })?;
        let body = sdp::local_answer(&offer, self.media_ip(remote), session.port, session_id)
            .ok_or(Refusal::failed(488, "Not Acceptable Here"))?;
        Ok((session, body))
    }

    /// A new INVITE for a test number (`kind`).
    pub(crate) fn invite_test_number(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        kind: TestNumber,
    ) {
        let callee = req
            .request_uri()
            .and_then(|u| u.user)
            .map(lossy)
            .unwrap_or_default();
        let cdr = self.new_cdr(now, req, &callee);
        let Some(call_id) = req.call_id().map(lossy) else {
            return;
        };
        let (session, body) = match self.prepare_test_call(req, remote, kind, &call_id, cdr.id) {
            Ok(prepared) => prepared,
            Err(refusal) => return self.refuse_call(now, tx, req, remote, cdr, refusal),
        };
        let local_tag = crate::endpoint::to_tag_string();
        let mut b = Builder::response(req, remote.addr, 200, "OK", Some(local_tag.as_bytes()));
        b.header("Server", crate::sip::message::build::PRODUCT)
            .header(
                "Contact",
                format!(
                    "<sip:{callee}@{};transport={}>",
                    self.via_hostport(remote),
                    remote.transport.as_str().to_ascii_lowercase()
                ),
            )
            .header("Allow", ALLOW)
            .header("Supported", "");
        let ok = b.finish_with_body(Some("application/sdp"), &body);
        let dialog = crate::sip::message::parse(ok.clone(), &Default::default())
            .ok()
            .and_then(|okm| Dialog::from_uas(req, &okm, remote));
        self.send_final(now, tx, ok.clone());
        let Some(dialog) = dialog else { return };
        let mut cdr = cdr;
        cdr.answer_ms = Some(self.wall(now).0);
        let t1 = self.shared.timers.t1;
        let wall = self.wall(now);
        let presence = &self.shared.presence;
        let party = bridge::start_party(
            presence,
            &cdr.caller,
            &call_id,
            crate::presence::Direction::Initiator,
            &callee,
            wall,
        );
        if let Some((ext, id)) = &party {
            let _ = presence.dialog_state(ext, *id, crate::presence::DialogState::Confirmed, wall);
        }
        let call = LocalCall {
            party,
            kind,
            phase: Phase::Answered,
            local_tag,
            dialog,
            ok,
            ok_to: reply_remote(req, remote),
            timer: None,
            retransmit: t1,
            ack_deadline: now + t1 * 64,
            cdr,
            media: Some(session),
        };
        self.shared
            .stats
            .live_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.calls.insert(call_id.clone(), call);
        self.arm(&call_id, now + t1, CallTimer::Retransmit2xx);
    }

    fn arm(&mut self, call_id: &str, at: Instant, timer: CallTimer) {
        if let Some(c) = self.calls.get_mut(call_id) {
            c.timer = Some((at, timer));
            self.call_timers
                .push(std::cmp::Reverse((at, call_id.to_string())));
        }
    }

    /// The earliest dialog timer (may be stale: checked when it fires).
    pub(crate) fn next_call_timer(&self) -> Option<Instant> {
        self.call_timers
            .peek()
            .map(|std::cmp::Reverse((at, _))| *at)
    }

    pub(crate) fn fire_call_timers(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((at, call_id))) = self.call_timers.peek().cloned() {
            if at > now {
                break;
            }
            self.call_timers.pop();
            if let Some(key) = call_id.strip_prefix(crate::blf::SUBSCRIPTION_TIMER) {
                self.subscription_timer(now, key, at);
                continue;
            }
            if let Some(a) = call_id.strip_prefix(bridge::QUEUE_TIMER) {
                self.queue_timer(now, a, at);
                continue;
            }
            if self.originations.contains_key(&call_id) {
                self.origin_timer(now, &call_id);
                continue;
            }
            if self
                .bridges
                .get(&call_id)
                .is_some_and(|b| b.timer_at() == Some(at))
            {
                self.bridge_timer(now, &call_id);
                continue;
            }
            let Some(call) = self.calls.get_mut(&call_id) else {
                continue;
            };
            let Some((due, timer)) = call.timer else {
                continue;
            };
            if due != at {
                continue; // re-armed since
            }
            call.timer = None;
            match timer {
                CallTimer::Retransmit2xx if call.phase == Phase::Answered => {
                    if now >= call.ack_deadline {
                        // No ACK for 64*T1: confirm and end the session (§13.3.1.4).
                        tracing::info!(%call_id, "no ACK for our 200; hanging up");
                        self.hang_up(now, &call_id, HangupBy::System);
                        continue;
                    }
                    let (ok, to) = (call.ok.clone(), call.ok_to);
                    call.retransmit = (call.retransmit * 2).min(self.shared.timers.t2);
                    let next = (now + call.retransmit).min(call.ack_deadline);
                    self.out.push_back(Transmit {
                        remote: to,
                        payload: ok,
                    });
                    self.arm(&call_id, next, CallTimer::Retransmit2xx);
                }
                CallTimer::HangUp => self.hang_up(now, &call_id, HangupBy::Callee),
                CallTimer::Retransmit2xx => {}
            }
        }
    }

    /// An ACK outside any transaction: the ACK of one of our 200s.
    pub(crate) fn ack(&mut self, now: Instant, req: &Message) {
        let Some(call_id) = req.call_id().map(lossy) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.phase != Phase::Answered || !dialog_matches(req, &call.local_tag) {
            return;
        }
        call.phase = Phase::Confirmed;
        call.timer = None;
        let after = match call.kind {
            TestNumber::Hangup => Duration::from_secs(self.shared.test_numbers.hangup_after_secs),
            TestNumber::Confirmation => confirmation().duration() + Duration::from_millis(300),
            _ => return,
        };
        self.arm(&call_id, now + after, CallTimer::HangUp);
    }

    /// Arms a bridge's timer (one per bridge; stale heap entries are skipped).
    pub(crate) fn arm_timer(&mut self, key: &str, at: Instant) {
        if let Some(b) = self.bridges.get_mut(key) {
            b.set_timer(at);
        }
        self.call_timers
            .push(std::cmp::Reverse((at, key.to_string())));
    }

    /// Media saw no packet for the inactivity period.
    pub fn handle_media_idle(&mut self, now: Instant, call_id: &str) {
        if self.bridges.contains_key(call_id) {
            return self.bridge_idle(now, call_id);
        }
        if self.originations.contains_key(call_id) {
            return self.end_origination(
                now,
                call_id,
                None,
                cdr::Disposition::Answered,
                HangupBy::System,
            );
        }
        if self.calls.contains_key(call_id) {
            tracing::info!(%call_id, "no RTP: hanging up a dead call");
            self.hang_up(now, call_id, HangupBy::System);
        }
    }

    /// We end a call: BYE to the caller, CDR written.
    fn hang_up(&mut self, now: Instant, call_id: &str, by: HangupBy) {
        let Some(mut call) = self.take_call(now, call_id) else {
            return;
        };
        call.media = None;
        let hostport = self.via_hostport(call.dialog.remote);
        let bye = call.dialog.next_request(&Method::Bye, &hostport, None);
        if let Err(e) = self.layer.send_request(now, bye, call.dialog.remote) {
            tracing::warn!(%call_id, "BYE not sent: {e}");
        }
        self.write_cdr(now, call.cdr, Disposition::Answered, by);
    }

    /// A request inside a dialog (its To has a tag).
    pub(crate) fn in_dialog(&mut self, now: Instant, tx: TxId, req: &Message, remote: Remote) {
        let call_id = req.call_id().map(lossy).unwrap_or_default();
        let known = self
            .calls
            .get(&call_id)
            .is_some_and(|c| dialog_matches(req, &c.local_tag));
        if !known {
            return self.reply(now, tx, req, remote, 481, "Call/Transaction Does Not Exist");
        }
        match req.method() {
            Some(Method::Bye) => {
                let Some(mut call) = self.take_call(now, &call_id) else {
                    return;
                };
                call.media = None;
                let answer = self.response(req, remote, 200, "OK").finish();
                self.write_cdr(now, call.cdr, Disposition::Answered, HangupBy::Caller);
                self.hold_until_durable(tx, answer, remote);
            }
            Some(Method::Invite) => {
                // A re-INVITE (hold, resume, refresh): answer with our media again.
                let port = self
                    .calls
                    .get(&call_id)
                    .and_then(|c| c.media.as_ref())
                    .map(|m| m.port);
                let offer = sdp::parse(req.body());
                let body = match (port, offer) {
                    (Some(port), Ok(offer)) => sdp::local_answer(
                        &offer,
                        self.media_ip(remote),
                        port,
                        now.elapsed().as_secs(),
                    ),
                    _ => None,
                };
                match body {
                    Some(body) => {
                        let mut b = self.response(req, remote, 200, "OK");
                        b.header("Contact", format!("<sip:{}>", self.via_hostport(remote)));
                        self.send_final(
                            now,
                            tx,
                            b.finish_with_body(Some("application/sdp"), &body),
                        );
                    }
                    None => self.reply(now, tx, req, remote, 488, "Not Acceptable Here"),
                }
            }
            _ => self.reply(now, tx, req, remote, 200, "OK"),
        }
    }

    fn take_call(&mut self, now: Instant, call_id: &str) -> Option<LocalCall> {
        let mut call = self.calls.remove(call_id)?;
        self.shared
            .stats
            .live_calls
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((ext, id)) = call.party.take() {
            let _ = self
                .shared
                .presence
                .dialog_ended(&ext, id, None, self.wall(now));
        }
        Some(call)
    }

    /// Whether an in-dialog request belongs to a call we answered ourselves.
    pub(crate) fn is_local_dialog(&self, req: &Message) -> bool {
        req.call_id()
            .and_then(|c| self.calls.get(&*String::from_utf8_lossy(c)))
            .is_some_and(|c| dialog_matches(req, &c.local_tag))
    }

    /// Live local calls of this shard.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }
}

/// Whether an in-dialog request's To tag is ours.
fn dialog_matches(req: &Message, local_tag: &str) -> bool {
    req.to_header()
        .and_then(|t| t.tag())
        .is_some_and(|t| t == local_tag.as_bytes())
}
