//! Originate (third-party call control, in the spirit of RFC 3725): the PBX calls a
//! first party (an extension), and when it answers, calls the second party (an
//! extension, or any number the PBX itself answers, such as a test number) and
//! bridges the two through the relay. Because media is anchored, each leg
//! negotiates with the PBX on its own and is acknowledged at once: leg A gets our
//! G.711 offer, leg B is offered the codec A chose (the relay does not transcode).
//! Click-to-call and campaigns build on this.

use super::cdr::{Disposition, HangupBy};
use super::{Dialog, Pending, Side};
use crate::endpoint::{to_tag_string, Endpoint};
use crate::media::{Peer, Relay};
use crate::presence::{DialogState, Direction};
use crate::sip::message::{parse, Builder, Message, Method};
use crate::sip::sdp;
use crate::sip::transaction::{Transmit, TxId};
use crate::sip::{Remote, Transport};
use std::net::SocketAddr;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    CallingA,
    CallingB,
    Connected,
}

/// One UAC leg of an origination.
#[derive(Debug)]
struct Leg {
    tx: TxId,
    invite: Message,
    remote: Remote,
    dialog: Option<Dialog>,
    /// The extension this leg rings, in the presence map.
    party: Option<super::bridge::Party>,
}

/// A call the PBX placed between two parties.
#[derive(Debug)]
pub(crate) struct Origination {
    phase: Phase,
    a: Leg,
    b: Option<Leg>,
    /// Who leg B calls.
    target: String,
    relay: Relay,
    cdr: super::cdr::Cdr,
    ring_deadline: Instant,
}

impl Origination {
    fn leg(&mut self, side: Side) -> Option<&mut Leg> {
        match side {
            Side::A => Some(&mut self.a),
            Side::B(_) => self.b.as_mut(),
        }
    }
}

fn sip_remote(b: &crate::registrar::Binding) -> Remote {
    Remote {
        transport: b.transport,
        addr: b.source,
        conn: match b.transport {
            Transport::Udp => None,
            Transport::Tcp => b.conn,
        },
    }
}

impl Endpoint {
    /// Starts calling `from` (an extension); once it answers, `to` is called.
    /// Returns leg A's Call-ID, which names the call.
    pub fn originate(
        &mut self,
        now: Instant,
        from: &str,
        to: &str,
    ) -> Result<String, OriginateError> {
        if !self.shared.users.contains(from) {
            return Err(OriginateError::UnknownExtension(from.to_string()));
        }
        let binding = self
            .shared
            .registrar
            .lookup(from, self.wall(now))
            .into_iter()
            .next()
            .ok_or_else(|| OriginateError::NotRegistered(from.to_string()))?;
        let key = self.shard_call_id();
        let relay = match &self.shared.media {
            Some(m) => m
                .relay(self.shared.inactivity, self.idle_notifier(key.clone()))
                .map_err(|_| OriginateError::NoMedia)?,
            None => return Err(OriginateError::NoMedia),
        };
        let remote = sip_remote(&binding);
        let offer = self.local_offer(remote, relay.ports[0], None);
        let invite = self.uac_invite(&key, to, from, binding.contact.as_bytes(), remote, &offer);
        let (tx, invite) = self
            .send_invite(now, invite, remote)
            .ok_or(OriginateError::NoMedia)?;
        self.pending
            .insert(tx, Pending::Origin(key.clone(), Side::A));
        self.legs.insert(key.clone(), (key.clone(), Side::A));
        let cdr = self.cdr_for(now, &key, from, to);
        self.shared
            .stats
            .live_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ring = now + self.shared.ring_timeout;
        let party = super::bridge::start_party(
            &self.shared.presence,
            from,
            &key,
            Direction::Recipient,
            to,
            self.wall(now),
        );
        self.originations.insert(
            key.clone(),
            Origination {
                phase: Phase::CallingA,
                a: Leg {
                    tx,
                    invite,
                    remote,
                    dialog: None,
                    party,
                },
                b: None,
                target: to.to_string(),
                relay,
                cdr,
                ring_deadline: ring,
            },
        );
        self.call_timers
            .push(std::cmp::Reverse((ring, key.clone())));
        Ok(key)
    }

    /// Our SDP offer at `port`: G.711 (or only `codec`, the one the other leg chose).
    fn local_offer(&self, toward: Remote, port: u16, codec: Option<&str>) -> Vec<u8> {
        let ip = self.media_ip(toward);
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
        &self,
        call_id: &str,
        shown: &str,
        callee: &str,
        uri: &[u8],
        remote: Remote,
        sdp: &[u8],
    ) -> bytes::Bytes {
        let domain = &self.shared.domain;
        let hostport = self.via_hostport(remote);
        let mut b = Builder::request(&Method::Invite, uri);
        b.header(
            "Via",
            format!(
                "SIP/2.0/{} {hostport};branch=z9hG4bK{};rport",
                remote.transport,
                to_tag_string()
            ),
        )
        .header("Max-Forwards", "70")
        .header(
            "From",
            format!("<sip:{shown}@{domain}>;tag={}", to_tag_string()),
        )
        .header("To", format!("<sip:{callee}@{domain}>"))
        .header("Call-ID", call_id)
        .header("CSeq", "1 INVITE")
        .header("Contact", format!("<sip:{shown}@{hostport}>"))
        .header("Allow", super::ALLOW)
        .header("User-Agent", crate::sip::message::build::PRODUCT);
        b.finish_with_body(Some("application/sdp"), sdp)
    }

    fn send_invite(
        &mut self,
        now: Instant,
        bytes: bytes::Bytes,
        remote: Remote,
    ) -> Option<(TxId, Message)> {
        let parsed = parse(bytes.clone(), &Default::default()).ok()?;
        let tx = self.layer.send_request(now, bytes, remote).ok()?;
        Some((tx, parsed))
    }

    /// A response on one of an origination's INVITEs (`None`: timed out).
    pub(crate) fn origin_response(
        &mut self,
        now: Instant,
        key: &str,
        side: Side,
        tx: TxId,
        resp: Option<Message>,
    ) {
        let code = self.settle(tx, resp.as_ref());
        let wall = self.wall(now);
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
            let _ = self.shared.presence.dialog_state(ext, *id, state, wall);
        }
        if code < 200 {
            return;
        }
        let leg_remote = leg.remote;
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
            return self.end_origination(now, key, Some(side), disposition, by);
        }
        let Some(r) = resp else { return };
        let dialog = Dialog::from_uac(&leg.invite, &r, leg_remote);
        if let Some(d) = &dialog {
            let ack = d.request(&Method::Ack, 1, &self.via_hostport(leg_remote), None);
            self.out.push_back(Transmit {
                remote: leg_remote,
                payload: ack,
            });
        }
        let Some(o) = self.originations.get_mut(key) else {
            return;
        };
        let Some(leg) = o.leg(side) else { return };
        if leg.dialog.is_some() {
            return; // a retransmitted 2xx, acknowledged again above
        }
        leg.dialog = dialog;
        let answer = sdp::parse(r.body()).ok();
        let relay_side = usize::from(side != Side::A);
        if let Some(s) = &answer {
            let first = s.media.iter().find(|m| m.port != 0);
            o.relay.set_peer(
                relay_side,
                Peer {
                    rtp: first.and_then(|m| m.addr.map(|a| SocketAddr::new(a, m.port))),
                    sip_ip: Some(leg_remote.addr.ip()),
                    receives: true,
                },
            );
        }
        match side {
            Side::A => {
                let codec = answer
                    .as_ref()
                    .and_then(|s| s.media.first())
                    .and_then(|m| m.formats.first().cloned());
                self.call_leg_b(now, key, codec.as_deref());
            }
            Side::B(_) => {
                if let Some(o) = self.originations.get_mut(key) {
                    o.phase = Phase::Connected;
                    o.cdr.answer_ms = Some(wall.0);
                }
            }
        }
    }

    fn call_leg_b(&mut self, now: Instant, key: &str, codec: Option<&str>) {
        let Some(o) = self.originations.get(key) else {
            return;
        };
        let (target, from, port) = (o.target.clone(), o.cdr.caller.clone(), o.relay.ports[1]);
        let own: SocketAddr = SocketAddr::new(
            self.shared
                .advertise_ip
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            self.shared.sip_port,
        );
        // An extension is called at its phone; anything else goes to ourselves, so
        // test numbers (and later queues) answer it like any caller.
        let (uri, remote) = match self
            .shared
            .registrar
            .lookup(&target, self.wall(now))
            .into_iter()
            .next()
        {
            Some(b) => (b.contact.clone(), sip_remote(&b)),
            None => (format!("sip:{target}@{own}"), Remote::udp(own)),
        };
        let offer = self.local_offer(remote, port, codec);
        let call_id = self.shard_call_id();
        let invite = self.uac_invite(&call_id, &from, &target, uri.as_bytes(), remote, &offer);
        let Some((tx, invite)) = self.send_invite(now, invite, remote) else {
            return self.end_origination(now, key, None, Disposition::Failed, HangupBy::System);
        };
        self.pending
            .insert(tx, Pending::Origin(key.to_string(), Side::B(0)));
        self.legs
            .insert(call_id.clone(), (key.to_string(), Side::B(0)));
        let ring = now + self.shared.ring_timeout;
        let party = super::bridge::start_party(
            &self.shared.presence,
            &target,
            &call_id,
            Direction::Recipient,
            &from,
            self.wall(now),
        );
        if let Some(o) = self.originations.get_mut(key) {
            o.phase = Phase::CallingB;
            o.b = Some(Leg {
                tx,
                invite,
                remote,
                dialog: None,
                party,
            });
            o.ring_deadline = ring;
        }
        self.call_timers
            .push(std::cmp::Reverse((ring, key.to_string())));
    }

    /// The ring timer of an origination.
    pub(crate) fn origin_timer(&mut self, now: Instant, key: &str) {
        let Some(o) = self.originations.get(key) else {
            return;
        };
        if o.phase != Phase::Connected && now >= o.ring_deadline {
            self.end_origination(now, key, None, Disposition::NoAnswer, HangupBy::System);
        }
    }

    /// Ends an origination: CANCEL a ringing leg, BYE an answered one (except the
    /// leg `from`, which ended it), CDR written.
    pub(crate) fn end_origination(
        &mut self,
        now: Instant,
        key: &str,
        from: Option<Side>,
        disposition: Disposition,
        by: HangupBy,
    ) {
        let Some(mut o) = self.originations.remove(key) else {
            return;
        };
        self.shared
            .stats
            .live_calls
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.legs.retain(|_, (owner, _)| owner != key);
        self.pending
            .retain(|_, p| !matches!(p, Pending::Origin(owner, _) if owner == key));
        let wall = self.wall(now);
        for (side, leg) in [(Side::A, Some(&mut o.a)), (Side::B(0), o.b.as_mut())] {
            let Some(leg) = leg else { continue };
            if let Some((ext, id)) = leg.party.take() {
                let _ = self.shared.presence.dialog_ended(&ext, id, None, wall);
            }
            if from == Some(side) {
                continue;
            }
            match leg.dialog.as_mut() {
                Some(d) => {
                    let hostport = self.via_hostport(leg.remote);
                    let bye = d.next_request(&Method::Bye, &hostport, None);
                    let _ = self.layer.send_request(now, bye, leg.remote);
                }
                None => {
                    self.cancel_branch(now, &leg.invite, leg.remote);
                    self.orphans
                        .insert(leg.tx, (leg.invite.clone(), leg.remote));
                }
            }
        }
        let disposition = if o.phase == Phase::Connected {
            Disposition::Answered
        } else {
            disposition
        };
        self.write_cdr(now, o.cdr, disposition, by);
    }

    /// A request inside one of an origination's dialogs.
    pub(crate) fn origin_in_dialog(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        key: &str,
        side: Side,
    ) {
        match req.method() {
            Some(Method::Bye) => {
                let answer = self.response(req, remote, 200, "OK").finish();
                let by = if side == Side::A {
                    HangupBy::Caller
                } else {
                    HangupBy::Callee
                };
                self.end_origination(now, key, Some(side), Disposition::Answered, by);
                self.hold_until_durable(tx, answer, remote);
            }
            // Both legs negotiated with us: a re-offer (hold) is answered from here.
            _ => self.reply(now, tx, req, remote, 200, "OK"),
        }
    }
}
