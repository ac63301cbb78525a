//! Calls the PBX places (third-party call control, `Pbx::originate`): ring
//! extension A first; when A answers, call B (an extension at its phone, or any
//! number the PBX answers itself, through our own address) with the codec A
//! chose, and connect the two through a relay. While B rings, A hears B's early
//! media when B sends some, else the ringback tone. Either side's BYE ends both.

use super::cdr::{Disposition, HangupBy};
use super::{new_cdr, write_cdr, Calls, Cx, Party, Pending, Side, Timer, ALLOW};
use crate::media::{prompt::Prompt, Peer, RelayControl};
use crate::presence::{DialogState, Direction};
use crate::sip::message::{build::random_tag, parse, Builder, Message, Method};
use crate::sip::transaction::TxId;
use crate::sip::{sdp, CallId, Dialog, Remote, StatusCode};
use crate::tu::ReqId;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Why an origination could not start (the API's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginateError {
    #[error("no such extension: {0}")]
    UnknownExtension(String),
    #[error("extension {0} has no registered phone")]
    NotRegistered(String),
    #[error("no free media ports")]
    NoMedia,
    #[error("the PBX is shutting down")]
    Stopped,
}

/// Where an origination stands; the ringing phases hold their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    CallingA { ring_deadline: Instant },
    CallingB { ring_deadline: Instant },
    Connected,
}

/// One UAC leg of an origination.
#[derive(Debug)]
struct Leg {
    id: ReqId,
    /// This leg's Call-ID (leg A's names the call).
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
    b: Option<Leg>,
    /// Who leg B calls.
    target: String,
    relay: Box<dyn RelayControl>,
    /// The payload type A chose (0 or 8): what the ringback is played in.
    pt: u8,
    /// B has rung: A hears the ringback or B's early media (not restarted).
    rang: bool,
    cdr: super::cdr::Cdr,
}

impl Origination {
    fn leg(&mut self, side: Side) -> Option<&mut Leg> {
        match side {
            Side::A => Some(&mut self.a),
            Side::B(_) => self.b.as_mut(),
        }
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
        let remote = binding.remote();
        let offer = local_offer(cx.media_ip(remote), relay.ports()[0], None);
        let bytes = uac_invite(
            cx,
            &key,
            to,
            from,
            binding.contact.as_bytes(),
            remote,
            &offer,
        );
        let invite = parse(bytes, &Default::default()).map_err(|_| OriginateError::NoMedia)?;
        let id = cx.send_parsed(invite.clone(), remote);
        self.pending
            .insert(id, Pending::Origin(key.clone(), Side::A));
        self.legs.insert(key.clone(), (key.clone(), Side::A));
        let cdr = new_cdr(cx, &key, from, to);
        Self::started(cx);
        let ring_deadline = cx.now + cx.env.calls.ring_timeout;
        let party = super::start_party(
            &cx.env.presence,
            from,
            &key,
            Direction::Recipient,
            to,
            cx.wall,
        );
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
                b: None,
                target: to.to_string(),
                relay,
                pt: 0,
                rang: false,
                cdr,
            },
        );
        cx.timer(ring_deadline, Timer::Origin(key.clone()));
        Ok(key)
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
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        let Some(leg) = o.leg(side) else { return };
        let step = match code {
            101..=199 => Some(DialogState::Early),
            200..=299 => Some(DialogState::Confirmed),
            _ => None,
        };
        if let (Some(state), Some((ext, id))) = (step, &leg.party) {
            let _ = cx.env.presence.dialog_state(ext, *id, state, cx.wall);
        }
        if code < 200 {
            if matches!(side, Side::B(_)) && code >= 180 {
                let ip = leg.remote.addr.ip();
                o.b_ringing(&cx.env.calls.ringback, resp.as_ref(), ip);
            }
            return;
        }
        if code >= 300 {
            let by = if side == Side::A {
                HangupBy::Caller
            } else {
                HangupBy::Callee
            };
            let disposition = if code == 486 || code == 600 {
                Disposition::Busy
            } else {
                Disposition::NoAnswer
            };
            return self.end_origination(cx, key, Some(side), disposition, by);
        }
        let Some(r) = resp else { return };
        let dialog = Dialog::from_uac(&leg.invite, &r, leg.remote);
        if let Some(d) = &dialog {
            super::bridge::ack(cx, d, 1);
        }
        if leg.dialog.is_some() {
            return; // a retransmitted 2xx, acknowledged again above
        }
        leg.dialog = dialog;
        let leg_ip = leg.remote.addr.ip();
        let answer = sdp::parse(r.body()).ok();
        if let Some(s) = &answer {
            o.relay
                .set_peer(usize::from(side != Side::A), peer_of(s, leg_ip));
        }
        match side {
            Side::A => {
                let codec = answer
                    .as_ref()
                    .and_then(|s| s.media.first())
                    .and_then(|m| m.formats.first().cloned());
                o.pt = if codec.as_deref() == Some("8") { 8 } else { 0 };
                self.call_leg_b(cx, key, codec.as_deref());
            }
            Side::B(_) => {
                o.relay.stop_playing();
                o.phase = Phase::Connected;
                o.cdr.answer_ms = Some(cx.wall.0);
            }
        }
    }

    fn call_leg_b(&mut self, cx: &mut Cx<'_>, key: &CallId, codec: Option<&str>) {
        let Some(o) = self.originations.get(key) else {
            return;
        };
        let (target, from, port) = (o.target.clone(), o.cdr.caller.clone(), o.relay.ports()[1]);
        // An extension is called at its phone; anything else goes to ourselves, so
        // test numbers (and later queues) answer it like any caller.
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
        let offer = local_offer(cx.media_ip(remote), port, codec);
        let call_id = cx.new_call_id();
        let bytes = uac_invite(cx, &call_id, &from, &target, uri.as_bytes(), remote, &offer);
        let Ok(invite) = parse(bytes, &Default::default()) else {
            return self.end_origination(cx, key, None, Disposition::Failed, HangupBy::System);
        };
        let id = cx.send_parsed(invite.clone(), remote);
        self.pending
            .insert(id, Pending::Origin(key.clone(), Side::B(0)));
        self.legs.insert(call_id.clone(), (key.clone(), Side::B(0)));
        let ring_deadline = cx.now + cx.env.calls.ring_timeout;
        let party = super::start_party(
            &cx.env.presence,
            &target,
            &call_id,
            Direction::Recipient,
            &from,
            cx.wall,
        );
        if let Some(o) = self.originations.get_mut(key) {
            o.phase = Phase::CallingB { ring_deadline };
            o.b = Some(Leg {
                id,
                call_id: call_id.clone(),
                invite,
                remote,
                dialog: None,
                party,
            });
        }
        cx.timer(ring_deadline, Timer::Origin(key.clone()));
    }

    /// The ring timer of an origination.
    pub(super) fn origin_timer(&mut self, cx: &mut Cx<'_>, key: &CallId) {
        let Some(o) = self.originations.get(key) else {
            return;
        };
        let due = match o.phase {
            Phase::CallingA { ring_deadline } | Phase::CallingB { ring_deadline } => ring_deadline,
            Phase::Connected => return,
        };
        if cx.now >= due {
            self.end_origination(cx, key, None, Disposition::NoAnswer, HangupBy::System);
        }
    }

    /// Ends an origination: CANCEL a ringing leg, BYE an answered one (except the
    /// leg `from`, which ended it), CDR written.
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
        for (side, leg) in [(Side::A, Some(&mut o.a)), (Side::B(0), o.b.as_mut())] {
            let Some(leg) = leg else { continue };
            self.legs.remove(&leg.call_id);
            self.pending.remove(&leg.id);
            if let Some((ext, id)) = leg.party.take() {
                let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
            }
            if from == Some(side) {
                continue;
            }
            match leg.dialog.as_mut() {
                Some(d) => super::bridge::bye(cx, d),
                None => {
                    super::bridge::cancel(cx, &leg.invite, leg.remote);
                    self.orphans
                        .insert(leg.id, (leg.invite.clone(), leg.remote));
                }
            }
        }
        let disposition = if o.phase == Phase::Connected {
            Disposition::Answered
        } else {
            disposition
        };
        write_cdr(cx, o.cdr, disposition, by);
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
