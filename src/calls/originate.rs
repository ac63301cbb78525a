//! Calls the PBX places (third-party call control, `Pbx::originate`): ring
//! extension A first; when A answers, call B (an extension at its phone, or any
//! number the PBX answers itself, through our own address) with the codec A
//! chose, and connect the two through a relay. While B rings, A hears B's early
//! media when B sends some, else the ringback tone. Either side's BYE ends both.
//!
//! A campaign attempt is an origination too, agent first:
//! - the agent (A) is reserved in the presence map as their phone starts to
//!   ring (two attempts, or an attempt and a queue call, never take one agent);
//!   an agent whose phone does not take the call is set away;
//! - once the agent answers they hear the waiting tone while their desktop
//!   shows the customer's record; the customer (B, an outside number through
//!   the campaign's trunk, tried as in `outbound`) is dialled only when they
//!   confirm, or when the time to confirm runs out if the campaign says so;
//! - if the agent's leg ends first, the customer hears the farewell before
//!   our BYE, never silence.
//!
//! Each step is reported to the desk (`Effect::Attempt`), the last with the
//! attempt's outcome.

use super::bridge::Branch;
use super::cdr::{Disposition, HangupBy};
use super::outbound::{Host, Outbound, Tries};
use super::{new_cdr, write_cdr, Calls, Cx, Party, Pending, Refusal, Side, Timer, ALLOW};
use crate::campaigns::{AttemptKey, Outcome, Report, Step};
use crate::media::{prompt::Prompt, Peer, RelayControl};
use crate::outside::{Attempt, TrunkId};
use crate::presence::{DialogState, Direction, State};
use crate::sip::message::{build::random_tag, parse, Builder, Message, Method};
use crate::sip::transaction::TxId;
use crate::sip::{sdp, CallId, Dialog, Remote, StatusCode};
use crate::tu::ReqId;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why an origination could not start (the API's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginateError {
    #[error("no such extension: {0}")]
    UnknownExtension(String),
    #[error("extension {0} has no registered phone")]
    NotRegistered(String),
    #[error("extension {0} is not available")]
    NotAvailable(String),
    #[error("{0} starts with a blocked prefix")]
    Blocked(String),
    #[error("no free media ports")]
    NoMedia,
    #[error("the PBX is shutting down")]
    Stopped,
}

/// A campaign attempt to place, agent first.
#[derive(Debug, Clone)]
pub struct AttemptCall {
    pub key: AttemptKey,
    pub agent: String,
    /// What the agent's phone shows calling (the campaign's name).
    pub shown: String,
    /// The customer's number, sent to the trunk as it is (E.164).
    pub number: String,
    pub trunk: TrunkId,
    /// The caller ID the customer sees ("": the trunk's own).
    pub caller_id: String,
    /// How long the agent has to confirm or skip.
    pub confirm: Duration,
    /// When that time runs out: dial anyway (else the attempt ends).
    pub dial_on_timeout: bool,
    /// How long the customer's phone rings before "no answer".
    pub ring: Duration,
    /// What the customer hears if the agent's leg ends first (the
    /// campaign's own; else `[calls] campaign_farewell`).
    pub farewell: Option<Arc<Prompt>>,
}

/// Where an origination stands; each phase holds its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    CallingA {
        ring_deadline: Instant,
    },
    /// A campaign's agent answered and hears the waiting tone.
    Confirming {
        deadline: Instant,
    },
    CallingB {
        ring_deadline: Instant,
    },
    Connected,
    /// The agent's leg ended first: the customer hears the farewell, then BYE.
    Farewell {
        until: Instant,
    },
}

/// Leg A of an origination (our UAC leg to the extension that is rung first).
#[derive(Debug)]
struct Leg {
    id: ReqId,
    /// This leg's Call-ID, which names the call.
    call_id: CallId,
    invite: Message,
    remote: Remote,
    dialog: Option<Dialog>,
    /// The extension this leg rings, in the presence map.
    party: Option<Party>,
}

/// A call the PBX placed between two parties.
#[derive(Debug)]
pub(super) struct Origination {
    phase: Phase,
    a: Leg,
    /// Leg B's INVITEs: one to an extension, or the tries of an outside number.
    b: Vec<Branch>,
    /// B's dialog in the presence map (an extension's).
    b_party: Option<Party>,
    /// The try of B that answered.
    answered: Option<usize>,
    /// Who leg B calls.
    target: String,
    relay: Box<dyn RelayControl>,
    /// The payload type A chose (0 or 8): what tones are played in.
    pt: u8,
    /// B has rung: A hears the ringback or B's early media (not restarted).
    rang: bool,
    cdr: super::cdr::Cdr,
    /// The SDP B is offered: the codec A chose, at the relay's port 1.
    b_offer: Vec<u8>,
    /// Set when B is an outside number (its trunk tries).
    outbound: Option<Outbound>,
    /// Set for a campaign attempt.
    attempt: Option<AttemptCall>,
    /// How the attempt ended, when something other than the phase decides it.
    outcome: Option<Outcome>,
    /// Recording on demand (from the desk; see `recording`).
    pub(super) on_demand: super::recording::OnDemand,
}

impl Origination {
    /// The call as `user` records it: its first party (the agent who placed
    /// it) or an extension it called; connected only.
    pub(super) fn recordable(
        &mut self,
        user: &str,
    ) -> Result<super::recording::Recordable<'_>, super::recording::Unrecordable> {
        use super::recording::{Recordable, Unrecordable};
        let customer = if self.cdr.caller == user {
            self.cdr.callee.clone()
        } else if self.b_party.as_ref().is_some_and(|(ext, _)| ext == user) {
            self.cdr.caller.clone()
        } else {
            return Err(Unrecordable::NotYours);
        };
        if !matches!(self.phase, Phase::Connected) {
            return Err(Unrecordable::NotConnected);
        }
        Ok(Recordable {
            relay: &*self.relay,
            on_demand: &mut self.on_demand,
            customer,
            cdr: self.cdr.id,
        })
    }

    /// B's outside tries, if B is an outside number.
    pub(super) fn tries(&mut self) -> Option<Tries<'_>> {
        Some(Tries {
            host: Host::Origination,
            out: self.outbound.as_mut()?,
            branches: &mut self.b,
            offer: &self.b_offer,
            port: self.relay.ports()[1],
            privacy: false,
        })
    }

    /// When the origination's timer is due.
    fn due(&self) -> Option<Instant> {
        let at = match self.phase {
            Phase::CallingA { ring_deadline } | Phase::CallingB { ring_deadline } => ring_deadline,
            Phase::Confirming { deadline } => deadline,
            Phase::Farewell { until } => until,
            Phase::Connected => return None,
        };
        let silent = self.outbound.as_ref().and_then(|o| o.silent_until);
        Some(silent.map_or(at, |s| s.min(at)))
    }

    /// Leg B rings: its early media, when it sends some, goes to A; otherwise A
    /// hears the ringback tone until B answers.
    fn b_ringing(&mut self, ringback: &Arc<Prompt>, resp: Option<&Message>, sip_ip: IpAddr) {
        let early = resp
            .and_then(|r| sdp::parse(r.body()).ok())
            .filter(|s| s.media.iter().any(|m| m.port != 0));
        match early {
            Some(s) => {
                self.relay.set_peer(1, peer_of(&s, sip_ip));
                self.relay.stop_playing();
            }
            None if !self.rang => self.relay.play(0, Arc::clone(ringback), self.pt, true),
            None => {}
        }
        self.rang = true;
    }

    /// The outcome of the attempt (if it is one) ending now.
    fn outcome(&self, disposition: Disposition) -> Option<Outcome> {
        self.attempt.as_ref()?;
        Some(self.outcome.unwrap_or(match self.phase {
            Phase::CallingA { .. } | Phase::Confirming { .. } => Outcome::AgentTimeout,
            Phase::CallingB { .. } => match disposition {
                Disposition::Busy => Outcome::Busy,
                Disposition::NoAnswer => Outcome::NoAnswer,
                _ => Outcome::Failed,
            },
            Phase::Connected => Outcome::Connected,
            // The agent's leg ended first: the customer heard the farewell.
            Phase::Farewell { .. } => Outcome::AgentDropped,
        }))
    }
}

/// Where a party receives media, from its SDP and its SIP source address.
fn peer_of(s: &sdp::Session, sip_ip: IpAddr) -> Peer {
    let first = s.media.iter().find(|m| m.port != 0);
    Peer {
        rtp: first.and_then(|m| m.addr.map(|a| SocketAddr::new(a, m.port))),
        sip_ip: Some(sip_ip),
        receives: true,
    }
}

/// Our SDP offer at `port`: G.711 (or only `codec`, the one the other leg chose).
fn local_offer(ip: std::net::IpAddr, port: u16, codec: Option<&str>) -> Vec<u8> {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let (fmts, maps) = match codec {
        Some("8") => ("8 101", "a=rtpmap:8 PCMA/8000\r\n"),
        Some(_) => ("0 101", "a=rtpmap:0 PCMU/8000\r\n"),
        None => (
            "0 8 101",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
        ),
    };
    format!(
        "v=0\r\no=sipdesk {port} 1 IN {family} {ip}\r\ns=sipdesk\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {fmts}\r\n{maps}a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    .into_bytes()
}

/// An initial INVITE of ours: `shown` is the party the callee sees calling.
fn uac_invite(
    cx: &Cx<'_>,
    call_id: &CallId,
    shown: &str,
    callee: &str,
    uri: &[u8],
    remote: Remote,
    sdp: &[u8],
) -> bytes::Bytes {
    let domain = &cx.env.domain;
    let hostport = cx.hostport(remote);
    let mut b = Builder::request(&Method::Invite, uri);
    b.header("Via", cx.via(remote))
        .header("Max-Forwards", "70")
        .header(
            "From",
            format!("<sip:{shown}@{domain}>;tag={}", random_tag()),
        )
        .header("To", format!("<sip:{callee}@{domain}>"))
        .header("Call-ID", call_id)
        .header("CSeq", "1 INVITE")
        .header("Contact", format!("<sip:{shown}@{hostport}>"))
        .header("Allow", ALLOW)
        .header("User-Agent", crate::sip::message::build::PRODUCT);
    b.finish_with_body(Some("application/sdp"), sdp)
}

impl Calls {
    /// Starts calling `from` (an extension); once it answers, `to` is called.
    /// Returns leg A's Call-ID, which names the call.
    pub fn originate(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        to: &str,
    ) -> Result<CallId, OriginateError> {
        self.place(cx, from, to, None)
    }

    /// Starts campaign attempt `call`: reserves and rings the agent (never
    /// for a number the toll-fraud rules block).
    pub fn attempt(
        &mut self,
        cx: &mut Cx<'_>,
        call: AttemptCall,
    ) -> Result<CallId, OriginateError> {
        let agent = call.agent.clone();
        if cx.env.outside.fraud.blocked(&agent, &call.number).is_some() {
            return Err(OriginateError::Blocked(call.number));
        }
        self.place(cx, &agent, &call.number.clone(), Some(call))
    }

    fn place(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        to: &str,
        attempt: Option<AttemptCall>,
    ) -> Result<CallId, OriginateError> {
        if !cx.env.users.contains(from) {
            return Err(OriginateError::UnknownExtension(from.to_string()));
        }
        let binding = cx
            .env
            .registrar
            .lookup(from, cx.wall)
            .into_iter()
            .next()
            .ok_or_else(|| OriginateError::NotRegistered(from.to_string()))?;
        let key = cx.new_call_id();
        let media = cx.env.media.as_ref().ok_or(OriginateError::NoMedia)?;
        let relay = media.relay(&key).map_err(|_| OriginateError::NoMedia)?;
        // The agent's phone shows the campaign, never the customer's number.
        let shown = attempt.as_ref().map_or(to, |c| c.shown.as_str());
        let presence = &cx.env.presence;
        let party = match &attempt {
            Some(_) => {
                let id = presence
                    .reserve(from, (&key.to_string(), None), shown, cx.wall)
                    .ok_or_else(|| OriginateError::NotAvailable(from.to_string()))?;
                Some((from.to_string(), id))
            }
            None => super::start_party(presence, from, &key, Direction::Recipient, to, cx.wall),
        };
        let remote = binding.remote();
        let offer = local_offer(cx.media_ip(remote), relay.ports()[0], None);
        let uri = binding.contact.as_bytes();
        let bytes = uac_invite(cx, &key, shown, from, uri, remote, &offer);
        let Ok(invite) = parse(bytes, &Default::default()) else {
            if let Some((ext, id)) = party {
                let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
            }
            return Err(OriginateError::NoMedia);
        };
        let id = cx.send_parsed(invite.clone(), remote);
        self.pending
            .insert(id, Pending::Origin(key.clone(), Side::A));
        self.legs.insert(key.clone(), (key.clone(), Side::A));
        let cdr = new_cdr(cx, &key, from, to);
        Self::started(cx);
        let ring_deadline = cx.now + cx.env.calls.ring_timeout;
        if let Some(c) = &attempt {
            tracing::info!(call_id = %key, agent = %c.agent, attempt = ?c.key, "campaign attempt: ringing the agent");
        }
        self.originations.insert(
            key.clone(),
            Origination {
                phase: Phase::CallingA { ring_deadline },
                a: Leg {
                    id,
                    call_id: key.clone(),
                    invite,
                    remote,
                    dialog: None,
                    party,
                },
                b: Vec::new(),
                b_party: None,
                answered: None,
                target: to.to_string(),
                relay,
                pt: 0,
                rang: false,
                cdr,
                b_offer: Vec::new(),
                outbound: None,
                attempt,
                outcome: None,
                on_demand: Default::default(),
            },
        );
        self.arm_origin(cx, &key);
        Ok(key)
    }

    /// Arms origination `key`'s timer at its next deadline.
    pub(super) fn arm_origin(&self, cx: &mut Cx<'_>, key: &CallId) {
        if let Some(at) = self.originations.get(key).and_then(Origination::due) {
            cx.timer(at, Timer::Origin(key.clone()));
        }
    }

    /// A response on one of an origination's INVITEs (`code` 408: timed out).
    pub(super) fn origin_response(
        &mut self,
        cx: &mut Cx<'_>,
        key: &CallId,
        side: Side,
        code: u16,
        resp: Option<Message>,
    ) {
        match side {
            Side::A => self.a_response(cx, key, code, resp),
            Side::B(idx) => {
                let outside = self
                    .originations
                    .get(key)
                    .is_some_and(|o| o.outbound.is_some());
                if outside && self.outbound_response(cx, key, idx, code, resp.as_ref()) {
                    return;
                }
                self.b_response(cx, key, idx, code, resp)
            }
        }
    }

    fn a_response(&mut self, cx: &mut Cx<'_>, key: &CallId, code: u16, resp: Option<Message>) {
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        step_party(cx, o.a.party.as_ref(), code);
        if code < 200 {
            return;
        }
        if code >= 300 {
            let disposition = refused(code);
            return self.end_origination(cx, key, Some(Side::A), disposition, HangupBy::Caller);
        }
        let Some(r) = resp else { return };
        let dialog = Dialog::from_uac(&o.a.invite, &r, o.a.remote);
        if let Some(d) = &dialog {
            super::bridge::ack(cx, d, 1);
        }
        if o.a.dialog.is_some() {
            return; // a retransmitted 2xx, acknowledged again above
        }
        o.a.dialog = dialog;
        let answer = sdp::parse(r.body()).ok();
        if let Some(s) = &answer {
            o.relay.set_peer(0, peer_of(s, o.a.remote.addr.ip()));
        }
        let codec = answer
            .as_ref()
            .and_then(|s| s.media.first())
            .and_then(|m| m.formats.first().cloned());
        o.pt = if codec.as_deref() == Some("8") { 8 } else { 0 };
        o.b_offer = local_offer(
            cx.media_ip(o.a.remote),
            o.relay.ports()[1],
            codec.as_deref(),
        );
        let Some(c) = &o.attempt else {
            return self.call_leg_b(cx, key);
        };
        tracing::info!(call_id = %key, agent = %c.agent, "campaign attempt: the agent answered; waiting for their confirmation");
        let report = Report {
            key: c.key,
            call: key.clone(),
            step: Step::AgentAnswered,
        };
        o.phase = Phase::Confirming {
            deadline: cx.now + c.confirm,
        };
        o.relay
            .play(0, Arc::clone(&cx.env.calls.waiting), o.pt, true);
        cx.attempt(report);
        self.arm_origin(cx, key);
    }

    fn b_response(
        &mut self,
        cx: &mut Cx<'_>,
        key: &CallId,
        idx: usize,
        code: u16,
        resp: Option<Message>,
    ) {
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        let Some(branch) = o.b.get_mut(idx) else {
            return;
        };
        step_party(cx, o.b_party.as_ref(), code);
        if code < 200 {
            if code >= 180 {
                let ip = branch.remote.addr.ip();
                o.b_ringing(&cx.env.calls.ringback, resp.as_ref(), ip);
            }
            return;
        }
        if code >= 300 {
            branch.final_code = Some(code);
            let disposition = refused(code);
            let by = HangupBy::Callee;
            return self.end_origination(cx, key, Some(Side::B(idx)), disposition, by);
        }
        let Some(r) = resp else { return };
        let dialog = Dialog::from_uac(&branch.invite, &r, branch.remote);
        if let Some(d) = &dialog {
            super::bridge::ack(cx, d, 1);
        }
        if branch.dialog.is_some() {
            return; // a retransmitted 2xx, acknowledged again above
        }
        branch.final_code = Some(code);
        branch.dialog = dialog;
        if let Ok(s) = sdp::parse(r.body()) {
            o.relay.set_peer(1, peer_of(&s, branch.remote.addr.ip()));
        }
        o.answered = Some(idx);
        o.relay.stop_playing();
        o.phase = Phase::Connected;
        o.cdr.answer_ms = Some(cx.wall.0);
        if let Some(c) = &o.attempt {
            tracing::info!(call_id = %key, agent = %c.agent, "campaign attempt: the customer answered");
            cx.attempt(Report {
                key: c.key,
                call: key.clone(),
                step: Step::CustomerAnswered,
            });
        }
        self.outbound_answered(key, idx);
    }

    /// The agent of attempt `key` confirmed (`dial`) or skipped its customer:
    /// `false` when the attempt is not waiting for that.
    pub fn confirm(&mut self, cx: &mut Cx<'_>, key: &CallId, dial: bool) -> bool {
        let Some(o) = self.originations.get_mut(key) else {
            return false;
        };
        if !matches!(o.phase, Phase::Confirming { .. }) {
            return false;
        }
        if dial {
            self.call_leg_b(cx, key);
        } else {
            o.outcome = Some(Outcome::Skipped);
            self.end_origination(cx, key, None, Disposition::Cancelled, HangupBy::Caller);
        }
        true
    }

    /// Calls B: an extension at its phone, a campaign's customer through its
    /// trunk, anything else at our own address.
    fn call_leg_b(&mut self, cx: &mut Cx<'_>, key: &CallId) {
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        o.relay.stop_playing();
        if let Some(c) = &o.attempt {
            let ring_deadline = cx.now + c.ring;
            o.phase = Phase::CallingB { ring_deadline };
            let line = cx.env.outside.line(c.trunk);
            let attempts = line
                .targets
                .in_order()
                .into_iter()
                .map(|target| Attempt {
                    trunk: c.trunk,
                    target,
                    number: c.number.clone(),
                })
                .collect();
            let caller_id = match c.caller_id.as_str() {
                "" => cx.env.outside.caller_id(None, c.trunk, ""),
                id => id.to_string(),
            };
            o.outbound = Some(Outbound {
                caller_id: Some(caller_id),
                ..Outbound::new(c.agent.clone(), None, attempts)
            });
            tracing::info!(call_id = %key, agent = %c.agent, trunk = %line.name, "campaign attempt: dialling the customer");
            cx.attempt(Report {
                key: c.key,
                call: key.clone(),
                step: Step::CustomerDialled,
            });
            if !self.try_next_trunk(cx, key) {
                let r = Refusal::failed(StatusCode::SERVICE_UNAVAILABLE);
                self.origin_failed(cx, key, r);
            }
            return;
        }
        let (target, from) = (o.target.clone(), o.cdr.caller.clone());
        // An extension is called at its phone; anything else goes to ourselves, so
        // test numbers and queues answer it like any caller.
        let own = SocketAddr::new(
            cx.env
                .addrs
                .advertised()
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
            cx.env.sip_port,
        );
        let (uri, remote) = match cx.env.registrar.lookup(&target, cx.wall).into_iter().next() {
            Some(b) => (b.contact.clone(), b.remote()),
            None => (format!("sip:{target}@{own}"), Remote::udp(own)),
        };
        let call_id = cx.new_call_id();
        let bytes = uac_invite(
            cx,
            &call_id,
            &from,
            &target,
            uri.as_bytes(),
            remote,
            &o.b_offer,
        );
        let Ok(invite) = parse(bytes, &Default::default()) else {
            return self.end_origination(cx, key, None, Disposition::Failed, HangupBy::System);
        };
        let id = cx.send_parsed(invite.clone(), remote);
        self.pending
            .insert(id, Pending::Origin(key.clone(), Side::B(0)));
        self.legs.insert(call_id.clone(), (key.clone(), Side::B(0)));
        let ring_deadline = cx.now + cx.env.calls.ring_timeout;
        o.b_party = super::start_party(
            &cx.env.presence,
            &target,
            &call_id,
            Direction::Recipient,
            &from,
            cx.wall,
        );
        o.phase = Phase::CallingB { ring_deadline };
        o.b.push(Branch {
            id,
            call_id,
            invite,
            remote,
            final_code: None,
            dialog: None,
            ext: None,
        });
        self.arm_origin(cx, key);
    }

    /// The timer of an origination: B's provider silent, or a deadline of
    /// its phase.
    pub(super) fn origin_timer(&mut self, cx: &mut Cx<'_>, key: &CallId) {
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        if o.due().is_none_or(|at| cx.now < at) {
            return; // a stale timer: the call moved on
        }
        let silent = o.outbound.as_ref().and_then(|out| out.silent_until);
        if silent.is_some_and(|s| s <= cx.now) && matches!(o.phase, Phase::CallingB { .. }) {
            return self.outbound_silent(cx, key);
        }
        match o.phase {
            Phase::Confirming { .. } if o.attempt.as_ref().is_some_and(|c| c.dial_on_timeout) => {
                tracing::info!(call_id = %key, "campaign attempt: no confirmation in time; dialling anyway");
                self.call_leg_b(cx, key)
            }
            Phase::Confirming { .. } => {
                tracing::info!(call_id = %key, "campaign attempt: no confirmation in time");
                self.end_origination(cx, key, None, Disposition::NoAnswer, HangupBy::System)
            }
            Phase::Farewell { .. } => self.end_origination(
                cx,
                key,
                Some(Side::A),
                Disposition::Answered,
                HangupBy::Caller,
            ),
            _ => self.end_origination(cx, key, None, Disposition::NoAnswer, HangupBy::System),
        }
    }

    /// Outside leg B of origination `key` never connected.
    pub(super) fn origin_failed(&mut self, cx: &mut Cx<'_>, key: &CallId, r: Refusal) {
        self.end_origination(cx, key, None, r.disposition, r.by);
    }

    /// Ends an origination: CANCEL a ringing leg, BYE an answered one (except the
    /// leg `from`, which ended it), CDR written, an attempt's outcome reported.
    pub(super) fn end_origination(
        &mut self,
        cx: &mut Cx<'_>,
        key: &CallId,
        from: Option<Side>,
        disposition: Disposition,
        by: HangupBy,
    ) {
        let Some(mut o) = self.originations.remove(key) else {
            return;
        };
        Self::ended(cx);
        let outcome = o.outcome(disposition);
        let agent_missed = matches!(o.phase, Phase::CallingA { .. }) && o.attempt.is_some();
        self.legs.remove(&o.a.call_id);
        self.pending.remove(&o.a.id);
        if let Some((ext, id)) = o.a.party.take() {
            let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
        }
        if from != Some(Side::A) {
            match o.a.dialog.as_mut() {
                Some(d) => super::bridge::bye(cx, d),
                None => {
                    super::bridge::cancel(cx, &o.a.invite, o.a.remote);
                    self.orphans
                        .insert(o.a.id, (o.a.invite.clone(), o.a.remote));
                }
            }
        }
        if let Some((ext, id)) = o.b_party.take() {
            let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
        }
        let trunk = o
            .outbound
            .as_ref()
            .and_then(|out| out.current.map(|(t, _)| t));
        for (i, branch) in o.b.iter_mut().enumerate() {
            self.legs.remove(&branch.call_id);
            self.pending.remove(&branch.id);
            if from == Some(Side::B(i)) {
                continue;
            }
            match branch.dialog.as_mut() {
                Some(d) => self.bye_toward(cx, d, trunk),
                None if branch.final_code.is_none() => {
                    super::bridge::cancel(cx, &branch.invite, branch.remote);
                    self.orphans
                        .insert(branch.id, (branch.invite.clone(), branch.remote));
                    if let Some(c) = &o.attempt {
                        self.abandoned.insert(branch.id, (c.key, key.clone()));
                    }
                }
                None => {}
            }
        }
        if let Some(out) = o.outbound.as_mut() {
            out.release(cx);
        }
        if let (Some(c), Some(outcome)) = (&o.attempt, outcome) {
            if agent_missed {
                // Not rung again at once: the agent is away until they say otherwise.
                let reason = Some("missed a campaign call");
                let _ = cx
                    .env
                    .presence
                    .choose_for(&c.agent, State::Away, reason, cx.wall);
            }
            tracing::info!(call_id = %key, agent = %c.agent, ?outcome, "campaign attempt over");
            cx.attempt(Report {
                key: c.key,
                call: key.clone(),
                step: Step::Ended(outcome),
            });
        }
        let disposition = if o.answered.is_some() {
            Disposition::Answered
        } else {
            disposition
        };
        write_cdr(cx, o.cdr, disposition, by);
    }

    /// The agent's leg of connected attempt `key` ended first: the customer
    /// hears the farewell, then our BYE.
    fn farewell(&mut self, cx: &mut Cx<'_>, key: &CallId) {
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        self.legs.remove(&o.a.call_id);
        o.a.dialog = None;
        if let Some((ext, id)) = o.a.party.take() {
            let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
        }
        let farewell = o
            .attempt
            .as_ref()
            .and_then(|c| c.farewell.clone())
            .unwrap_or_else(|| Arc::clone(&cx.env.calls.farewell));
        o.phase = Phase::Farewell {
            until: cx.now + farewell.duration(),
        };
        o.relay.play(1, farewell, o.pt, false);
        self.arm_origin(cx, key);
    }

    /// A request inside one of an origination's dialogs.
    pub(super) fn origin_in_dialog(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        key: &CallId,
        side: Side,
    ) {
        match req.method() {
            Some(Method::Bye) => {
                let answer = cx.response(req, remote, StatusCode::OK).finish();
                let connected_attempt = self
                    .originations
                    .get(key)
                    .is_some_and(|o| o.attempt.is_some() && o.phase == Phase::Connected);
                if side == Side::A && connected_attempt {
                    self.farewell(cx, key);
                    return cx.respond(tx, answer);
                }
                let by = if side == Side::A {
                    HangupBy::Caller
                } else {
                    HangupBy::Callee
                };
                self.end_origination(cx, key, Some(side), Disposition::Answered, by);
                cx.respond_durable(tx, answer);
            }
            // Both legs negotiated with us: a re-offer (hold) is answered from here.
            _ => cx.reply(tx, req, remote, StatusCode::OK),
        }
    }
}

/// How a leg that refused our INVITE with `code` ended.
fn refused(code: u16) -> Disposition {
    match code {
        486 | 600 => Disposition::Busy,
        _ => Disposition::NoAnswer,
    }
}

/// Moves a leg's presence dialog on with a provisional or 2xx answer.
fn step_party(cx: &Cx<'_>, party: Option<&Party>, code: u16) {
    let step = match code {
        101..=199 => DialogState::Early,
        200..=299 => DialogState::Confirmed,
        _ => return,
    };
    if let Some((ext, id)) = party {
        let _ = cx.env.presence.dialog_state(ext, *id, step, cx.wall);
    }
}
