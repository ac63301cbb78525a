//! Calls between extensions: a back-to-back user agent. The caller's dialog (leg A)
//! and one dialog per contact of the callee (legs B, forked in parallel, each with
//! its own Call-ID, tags, CSeq and Via) are separate; media is anchored in a relay.
//! The first 2xx wins and the other branches are cancelled; provisional answers
//! (with early-media SDP) are relayed; final failures are mapped (404, 480, 486,
//! 487, 603); BYE from either side ends both; re-INVITE, UPDATE and INFO are relayed
//! to the other leg with its own CSeq and tags. A call to a queue is a bridge too,
//! whose B legs are the ACD's offers to agents (see `queue`).

mod queue;

pub(crate) use queue::QUEUE_TIMER;

use super::cdr::{Cdr, Disposition, HangupBy};
use super::{lossy, party_number, Dialog, Refusal};
use crate::endpoint::{to_tag_string, Endpoint};
use crate::media::{Peer, Relay};
use crate::presence::{DialogId, DialogState, Direction as Role};
use crate::registrar::Binding;
use crate::sip::message::{parse, Builder, HeaderName, Message, Method};
use crate::sip::sdp::{self, Direction};
use crate::sip::transaction::{reply_remote, Transmit, TxId};
use crate::sip::{Remote, Transport};
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One forked branch toward a contact of the callee.
#[derive(Debug)]
pub(crate) struct Branch {
    tx: TxId,
    /// Our INVITE (a CANCEL copies its Via, From, To, Call-ID and CSeq number).
    invite: Message,
    remote: Remote,
    /// The final status, once there is one (a timeout counts as 408).
    final_code: Option<u16>,
    /// Set when this branch answered with 2xx.
    dialog: Option<Dialog>,
}

/// Where leg A stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum APhase {
    /// Ringing the callee's contacts.
    Calling,
    /// Our 200 is sent; waiting for A's ACK.
    Answered,
    Confirmed,
}

/// A call between two extensions.
#[derive(Debug)]
pub(crate) struct Bridge {
    phase: APhase,
    a_tx: TxId,
    /// A's INVITE (responses to it copy its headers).
    a_invite: Message,
    a_remote: Remote,
    /// Our To tag toward A.
    a_tag: String,
    /// Leg A's dialog (from our side), built when we answer.
    a_dialog: Option<Dialog>,
    branches: Vec<Branch>,
    answered: Option<usize>,
    relay: Relay,
    cdr: Cdr,
    /// Our 200 to A, retransmitted until A's ACK (RFC 3261 §13.3.1.4).
    ok: Option<(Bytes, Remote)>,
    retransmit: Duration,
    ack_deadline: Instant,
    ring_deadline: Instant,
    /// The one live entry of this bridge in the endpoint's timer heap.
    timer_at: Option<Instant>,
    /// The negotiated session interval (RFC 4028), and when the session expires
    /// unless a re-INVITE or UPDATE refreshes it.
    session: Option<(Duration, Instant)>,
    /// The caller's and the callee's dialogs in the presence map (extensions only;
    /// for a queue call the callee is the agent being offered or talking).
    pub(super) caller_party: Option<Party>,
    pub(super) callee_party: Option<Party>,
    /// Set for a call to a queue (the ACD state of the call).
    pub(super) queue: Option<queue::Queued>,
}

/// An extension in a call: its dialog in the presence map.
pub(crate) type Party = (String, DialogId);

/// Who a branch INVITE is from and to.
pub(super) struct BranchSpec<'a> {
    pub caller: &'a str,
    pub display: Option<&'a str>,
    pub callee: &'a str,
    pub max_forwards: u32,
    /// The caller's INVITE, whose session-timer headers are copied (RFC 4028).
    pub timers_from: Option<&'a Message>,
}

impl Bridge {
    pub(crate) fn timer_at(&self) -> Option<Instant> {
        self.timer_at
    }
    pub(crate) fn set_timer(&mut self, at: Instant) {
        self.timer_at = Some(at);
    }
}

/// Who calls whom, and the callee's live contacts.
#[derive(Debug)]
pub(crate) struct CallTarget {
    pub caller: String,
    pub callee: String,
    pub bindings: Vec<Binding>,
}

/// What a client transaction of ours belongs to.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    /// A forked INVITE: (A's Call-ID, branch index).
    Branch(String, usize),
    /// A request relayed inside the call: answer the server transaction `tx` on
    /// the other leg with what comes back.
    Relayed { a_call_id: String, tx: TxId },
    /// An INVITE of an origination: (its key, which leg).
    Origin(String, Side),
    /// A NOTIFY of the subscription with this Call-ID.
    Notify(String),
}

/// Which side of a bridge a dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    A,
    B(usize),
}

/// The SDP direction of the first media line, as "does this phone receive".
fn receives(s: &sdp::Session) -> bool {
    s.media
        .first()
        .map(|m| matches!(m.direction, Direction::SendRecv | Direction::RecvOnly))
        .unwrap_or(true)
        && !s
            .media
            .first()
            .and_then(|m| m.addr)
            .is_some_and(|a| a.is_unspecified())
}

/// The G.711 payload type (0 or 8) an SDP lists first on its audio line, if any:
/// what the PBX can play to that phone.
fn g711_pt(s: &sdp::Session) -> Option<u8> {
    let m = s.media.iter().find(|m| m.kind == "audio" && m.port != 0)?;
    m.formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .find(|pt| *pt == 0 || *pt == 8)
}

/// Media peer for the relay from a phone's SDP and SIP address.
pub(super) fn peer_of(s: &sdp::Session, sip: SocketAddr) -> Peer {
    let first = s.media.iter().find(|m| m.port != 0);
    Peer {
        rtp: first.and_then(|m| m.addr.map(|a| SocketAddr::new(a, m.port))),
        sip_ip: Some(sip.ip()),
        receives: receives(s),
    }
}

/// Ports for rewriting: the relay port for the first audio line, 0 (refused) for
/// any other stream (the relay carries one audio stream).
fn relay_ports(s: &sdp::Session, port: u16) -> Vec<u16> {
    let mut given = false;
    s.media
        .iter()
        .map(|m| {
            if !given && m.kind == "audio" && m.port != 0 {
                given = true;
                port
            } else {
                0
            }
        })
        .collect()
}

impl Endpoint {
    /// A Call-ID that the dispatcher routes to this shard (B legs stay with A).
    pub(crate) fn shard_call_id(&self) -> String {
        loop {
            let id = format!("{}@sipdesk", to_tag_string());
            if self.shared.shard_count <= 1
                || crate::transport::fnv1a(id.as_bytes()) % self.shared.shard_count as u64
                    == self.shard as u64
            {
                return id;
            }
        }
    }

    /// Our `host:port` toward a remote, for Via and Contact.
    pub(crate) fn via_hostport(&self, remote: Remote) -> String {
        let ip = self.media_ip(remote);
        match ip {
            IpAddr::V4(v4) => format!("{v4}:{}", self.shared.sip_port),
            IpAddr::V6(v6) => format!("[{v6}]:{}", self.shared.sip_port),
        }
    }

    fn rewrite_for(&self, body: &[u8], toward: Remote, port: u16) -> Option<(Bytes, sdp::Session)> {
        let parsed = sdp::parse(body).ok()?;
        let ports = relay_ports(&parsed, port);
        let ip = self.media_ip(toward);
        let out = sdp::rewrite(body, ip, &ports).ok()?;
        Some((out, parsed))
    }

    /// What a bridge (or a queue call) needs before its B legs go out: the
    /// caller's offer and a relay; or why the call is refused.
    pub(super) fn prepare_bridge(
        &self,
        req: &Message,
        remote: Remote,
        a_call_id: &str,
    ) -> Result<(sdp::Session, Relay), Refusal> {
        let offer = sdp::parse(req.body()).map_err(|e| {
            tracing::info!(%remote, "INVITE refused, SDP: {e}");
            Refusal::failed(488, "Not Acceptable Here")
        })?;
        let no_media = Refusal::failed(503, "Service Unavailable (No Media Ports)");
        let media = self.shared.media.as_ref().ok_or(no_media)?;
        let relay = media
            .relay(
                self.shared.inactivity,
                self.idle_notifier(a_call_id.to_string()),
            )
            .map_err(|_| no_media)?;
        Ok((offer, relay))
    }

    /// A new INVITE from `caller` to extension `callee` with these live bindings.
    pub(crate) fn invite_extension(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        target: CallTarget,
    ) {
        let CallTarget {
            caller,
            callee,
            bindings,
        } = target;
        let Some(a_call_id) = req.call_id().map(lossy) else {
            return;
        };
        let mut cdr = self.new_cdr(now, req, &callee);
        cdr.caller = caller.clone();
        let prepared = if bindings.is_empty() {
            Err(Refusal::failed(480, "Temporarily Unavailable"))
        } else {
            self.prepare_bridge(req, remote, &a_call_id)
        };
        let (offer, relay) = match prepared {
            Ok(prepared) => prepared,
            Err(refusal) => return self.refuse_call(now, tx, req, remote, cdr, refusal),
        };
        relay.set_peer(0, peer_of(&offer, remote.addr));
        let display = req.from_header().and_then(|f| f.display).map(lossy);
        let spec = BranchSpec {
            caller: &caller,
            display: display.as_deref(),
            callee: &callee,
            max_forwards: req
                .max_forwards()
                .and_then(Result::ok)
                .unwrap_or(70)
                .saturating_sub(1),
            timers_from: Some(req),
        };
        let port = relay.ports[1];
        let branches = self.send_branches(now, &a_call_id, &spec, bindings, 0, |ep, target| {
            ep.rewrite_for(req.body(), target, port).map(|(b, _)| b)
        });
        if branches.is_empty() {
            return self.refuse_call(
                now,
                tx,
                req,
                remote,
                cdr,
                Refusal::failed(480, "Temporarily Unavailable"),
            );
        }
        let ring = now + self.shared.ring_timeout;
        let wall = self.wall(now);
        let presence = &self.shared.presence;
        let b_call_id = branches[0].invite.call_id().map(lossy).unwrap_or_default();
        let callee_party = start_party(
            presence,
            &callee,
            &b_call_id,
            Role::Recipient,
            &caller,
            wall,
        );
        let caller_party = start_party(
            presence,
            &caller,
            &a_call_id,
            Role::Initiator,
            &callee,
            wall,
        );
        self.add_bridge(
            &a_call_id,
            Bridge {
                phase: APhase::Calling,
                a_tx: tx,
                a_invite: req.clone(),
                a_remote: remote,
                a_tag: to_tag_string(),
                a_dialog: None,
                branches,
                answered: None,
                relay,
                cdr,
                ok: None,
                retransmit: self.shared.timers.t1,
                ack_deadline: ring,
                ring_deadline: ring,
                timer_at: None,
                session: None,
                caller_party,
                callee_party,
                queue: None,
            },
        );
        self.arm_timer(&a_call_id, ring);
    }

    /// Sends one INVITE per binding (the fork), numbering the branches from
    /// `first`; `body` gives the SDP offer toward each contact (none: skipped).
    pub(super) fn send_branches(
        &mut self,
        now: Instant,
        a_call_id: &str,
        spec: &BranchSpec<'_>,
        bindings: Vec<Binding>,
        first: usize,
        body: impl Fn(&Self, Remote) -> Option<Bytes>,
    ) -> Vec<Branch> {
        let domain = self.shared.domain.clone();
        let caller = spec.caller;
        let mut branches = Vec::new();
        for binding in bindings {
            let target = Remote {
                transport: binding.transport,
                addr: binding.source,
                conn: match binding.transport {
                    Transport::Udp => None,
                    Transport::Tcp => binding.conn,
                },
            };
            let Some(body) = body(self, target) else {
                continue;
            };
            let b_call_id = self.shard_call_id();
            let from = match spec.display {
                Some(d) => format!("{d} <sip:{caller}@{domain}>;tag={}", to_tag_string()),
                None => format!("<sip:{caller}@{domain}>;tag={}", to_tag_string()),
            };
            let hostport = self.via_hostport(target);
            let mut b = Builder::request(&Method::Invite, binding.contact.as_bytes());
            b.header(
                "Via",
                format!(
                    "SIP/2.0/{} {hostport};branch=z9hG4bK{};rport",
                    target.transport,
                    to_tag_string()
                ),
            )
            .header("Max-Forwards", spec.max_forwards.to_string())
            .header("From", from)
            .header("To", format!("<sip:{}@{domain}>", spec.callee))
            .header("Call-ID", &b_call_id)
            .header("CSeq", "1 INVITE")
            .header(
                "Contact",
                format!(
                    "<sip:{caller}@{hostport};transport={}>",
                    target.transport.as_str().to_ascii_lowercase()
                ),
            )
            .header("Allow", super::ALLOW)
            .header("User-Agent", crate::sip::message::build::PRODUCT);
            if let Some(req) = spec.timers_from {
                copy_session_timer(&mut b, req);
            }
            let bytes = b.finish_with_body(Some("application/sdp"), &body);
            let Ok(invite) = parse(bytes.clone(), &Default::default()) else {
                continue;
            };
            match self.layer.send_request(now, bytes, target) {
                Ok(btx) => {
                    let idx = first + branches.len();
                    self.pending
                        .insert(btx, Pending::Branch(a_call_id.to_string(), idx));
                    self.legs
                        .insert(b_call_id, (a_call_id.to_string(), Side::B(idx)));
                    branches.push(Branch {
                        tx: btx,
                        invite,
                        remote: target,
                        final_code: None,
                        dialog: None,
                    });
                }
                Err(e) => tracing::warn!("B leg not sent: {e}"),
            }
        }
        branches
    }

    /// The status of an answer on one of our client transactions (`None`: it timed
    /// out, 408); a final one ends the transaction's pending entry.
    pub(crate) fn settle(&mut self, tx: TxId, resp: Option<&Message>) -> u16 {
        let code = resp.and_then(Message::status).unwrap_or(408);
        if code >= 200 {
            self.pending.remove(&tx);
        }
        code
    }

    /// A response on one of our client transactions that belongs to a bridge.
    pub(crate) fn bridge_response(
        &mut self,
        now: Instant,
        pending: Pending,
        tx: TxId,
        resp: Option<Message>,
    ) {
        match pending {
            Pending::Branch(a, idx) => self.branch_response(now, &a, idx, tx, resp),
            Pending::Origin(key, side) => self.origin_response(now, &key, side, tx, resp),
            Pending::Notify(key) => self.notify_response(now, &key, tx, resp.as_ref()),
            Pending::Relayed {
                a_call_id,
                tx: server_tx,
            } => self.relayed_response(now, &a_call_id, server_tx, tx, resp),
        }
    }

    fn branch_response(
        &mut self,
        now: Instant,
        a: &str,
        idx: usize,
        tx: TxId,
        resp: Option<Message>,
    ) {
        let code = self.settle(tx, resp.as_ref());
        let wall = self.wall(now);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return; // the call is gone (its branches were cancelled)
        };
        match code {
            100 => {}
            101..=199 => {
                let presence = &self.shared.presence;
                if let Some((ext, id)) = &bridge.callee_party {
                    let _ = presence.dialog_state(ext, *id, DialogState::Early, wall);
                }
                if bridge.queue.is_some() {
                    return; // the caller hears music, not the agent's phone
                }
                if let Some((ext, id)) = &bridge.caller_party {
                    let _ = presence.dialog_state(ext, *id, DialogState::Early, wall);
                }
                if bridge.phase != APhase::Calling {
                    return;
                }
                let early = resp
                    .as_ref()
                    .filter(|r| !r.body().is_empty())
                    .and_then(|r| sdp::parse(r.body()).ok().map(|s| (s, r.body().to_vec())));
                let (a_req, a_remote, a_tag, a_tx) = (
                    bridge.a_invite.clone(),
                    bridge.a_remote,
                    bridge.a_tag.clone(),
                    bridge.a_tx,
                );
                if let Some((s, _)) = &early {
                    bridge
                        .relay
                        .set_peer(1, peer_of(s, bridge.branches[idx].remote.addr));
                }
                let relay_port = bridge.relay.ports[0];
                let reason = if code == 180 {
                    "Ringing"
                } else {
                    "Session Progress"
                };
                let mut b =
                    Builder::response(&a_req, a_remote.addr, code, reason, Some(a_tag.as_bytes()));
                b.header("Contact", format!("<sip:{}>", self.via_hostport(a_remote)));
                let bytes = match early
                    .and_then(|(_, body)| self.rewrite_for(&body, a_remote, relay_port))
                {
                    Some((body, _)) => b.finish_with_body(Some("application/sdp"), &body),
                    None => b.finish(),
                };
                self.send_final(now, a_tx, bytes);
            }
            200..=299 => {
                let Some(r) = resp else { return };
                self.branch_answered(now, a, idx, &r);
            }
            _ => {
                bridge.branches[idx].final_code = Some(code);
                if let Some(q) = &bridge.queue {
                    // An agent who declines or fails is skipped for this call.
                    let offer_over = q.offer.as_ref().is_some_and(|o| {
                        idx >= o.first_branch
                            && bridge.branches[o.first_branch..]
                                .iter()
                                .all(|b| b.final_code.is_some())
                    });
                    if offer_over {
                        self.offer_failed(now, a);
                    }
                    return;
                }
                if bridge.phase == APhase::Calling
                    && bridge.branches.iter().all(|b| b.final_code.is_some())
                {
                    let codes: Vec<u16> = bridge
                        .branches
                        .iter()
                        .filter_map(|b| b.final_code)
                        .collect();
                    let (code, reason, disposition) =
                        if let Some(c) = codes.iter().find(|c| **c >= 600) {
                            (
                                *c,
                                if *c == 603 {
                                    "Decline"
                                } else {
                                    "Busy Everywhere"
                                },
                                Disposition::Busy,
                            )
                        } else if codes.contains(&486) {
                            (486, "Busy Here", Disposition::Busy)
                        } else if codes.iter().all(|c| *c == 488) {
                            (488, "Not Acceptable Here", Disposition::Failed)
                        } else if codes.contains(&487) {
                            (487, "Request Terminated", Disposition::Cancelled)
                        } else {
                            (480, "Temporarily Unavailable", Disposition::NoAnswer)
                        };
                    self.fail_call(now, a, code, reason, disposition, HangupBy::Callee);
                }
            }
        }
    }

    fn branch_answered(&mut self, now: Instant, a: &str, idx: usize, r: &Message) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let branch_remote = bridge.branches[idx].remote;
        let dialog = Dialog::from_uac(&bridge.branches[idx].invite, r, branch_remote);
        // ACK every 2xx (retransmissions too) on its own dialog.
        if let Some(d) = &dialog {
            let ack = d.request(&Method::Ack, 1, &self.via_hostport(branch_remote), None);
            self.out.push_back(Transmit {
                remote: branch_remote,
                payload: ack,
            });
        }
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        if bridge.answered == Some(idx) || bridge.branches[idx].dialog.is_some() {
            return; // a retransmitted 2xx: acknowledged again above
        }
        let stale_offer = bridge
            .queue
            .as_ref()
            .is_some_and(|q| q.offer.as_ref().is_none_or(|o| idx < o.first_branch));
        if bridge.answered.is_some()
            || stale_offer
            || (bridge.queue.is_none() && bridge.phase != APhase::Calling)
        {
            // Another branch won: end this one (its ACK went out above).
            let invite = bridge.branches[idx].invite.clone();
            bridge.branches[idx].final_code = Some(200);
            let Some(mut d) = Dialog::from_uac(&invite, r, branch_remote) else {
                return;
            };
            let bye = d.next_request(&Method::Bye, &self.via_hostport(branch_remote), None);
            let _ = self.layer.send_request(now, bye, branch_remote);
            return;
        }
        if bridge.queue.is_some() {
            return self.queue_answered(now, a, idx, r, dialog);
        }
        bridge.answered = Some(idx);
        bridge.branches[idx].dialog = dialog;
        bridge.branches[idx].final_code = Some(200);
        if let Ok(s) = sdp::parse(r.body()) {
            bridge.relay.set_peer(1, peer_of(&s, branch_remote.addr));
        }
        let (a_remote, relay_port) = (bridge.a_remote, bridge.relay.ports[0]);
        self.cancel_ringing(now, a, 0, Some(idx));
        // Answer A with B's SDP pointed at the relay.
        let callee = self
            .bridges
            .get(a)
            .map(|b| b.cdr.callee.clone())
            .unwrap_or_default();
        let body = self
            .rewrite_for(r.body(), a_remote, relay_port)
            .map(|(b, _)| b);
        self.answer_caller(now, a, &callee, body.as_deref(), Some(r));
        let wall = self.wall(now);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        parties_step(&self.shared.presence, bridge, DialogState::Confirmed, wall);
        bridge.session = session_interval(r).map(|d| (d, now + d));
    }

    /// Sends our 200 to A (as `user`, with `body`; retransmitted until A's ACK)
    /// and records leg A's dialog.
    pub(super) fn answer_caller(
        &mut self,
        now: Instant,
        a: &str,
        user: &str,
        body: Option<&[u8]>,
        timers_from: Option<&Message>,
    ) {
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        let (a_req, a_remote, a_tx) = (bridge.a_invite.clone(), bridge.a_remote, bridge.a_tx);
        let mut b = Builder::response(
            &a_req,
            a_remote.addr,
            200,
            "OK",
            Some(bridge.a_tag.as_bytes()),
        );
        b.header(
            "Contact",
            format!(
                "<sip:{user}@{};transport={}>",
                self.via_hostport(a_remote),
                a_remote.transport.as_str().to_ascii_lowercase()
            ),
        )
        .header("Allow", super::ALLOW)
        .header("Server", crate::sip::message::build::PRODUCT);
        if let Some(r) = timers_from {
            copy_session_timer(&mut b, r);
        }
        let ok = match body {
            Some(body) => b.finish_with_body(Some("application/sdp"), body),
            None => b.finish(),
        };
        self.send_final(now, a_tx, ok.clone());
        let a_dialog = parse(ok.clone(), &Default::default())
            .ok()
            .and_then(|m| Dialog::from_uas(&a_req, &m, a_remote));
        let (t1, wall) = (self.shared.timers.t1, self.wall(now).0);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        bridge.phase = APhase::Answered;
        bridge.cdr.answer_ms = Some(wall);
        bridge.a_dialog = a_dialog;
        bridge.ok = Some((ok, reply_remote(&a_req, a_remote)));
        bridge.retransmit = t1;
        bridge.ack_deadline = now + t1 * 64;
        self.arm_timer(a, now + t1);
    }

    /// Cancels call `a`'s branches from `first` on that are still ringing, all
    /// but `except` (the one that answered).
    pub(super) fn cancel_ringing(
        &mut self,
        now: Instant,
        a: &str,
        first: usize,
        except: Option<usize>,
    ) {
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        let ringing: Vec<(Message, Remote)> = bridge
            .branches
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(i, b)| Some(*i) != except && b.final_code.is_none())
            .map(|(_, b)| (b.invite.clone(), b.remote))
            .collect();
        for (invite, remote) in ringing {
            self.cancel_branch(now, &invite, remote);
        }
    }

    pub(crate) fn cancel_branch(&mut self, now: Instant, invite: &Message, remote: Remote) {
        let uri = invite.request_uri_bytes().unwrap_or_default();
        let mut b = Builder::request(&Method::Cancel, uri);
        for name in [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
        ] {
            if let Some(v) = invite.value(name) {
                b.header(header_name(name), v);
            }
        }
        let seq = invite.cseq().map_or(1, |c| c.seq);
        b.header("CSeq", format!("{seq} CANCEL"))
            .header("Max-Forwards", "70");
        if let Err(e) = self.layer.send_request(now, b.finish(), remote) {
            tracing::debug!("CANCEL not sent: {e}");
        }
    }

    /// A final answer on a branch whose call is gone: a 2xx is acknowledged and
    /// its dialog ended at once.
    pub(crate) fn orphan_response(&mut self, now: Instant, tx: TxId, r: &Message) {
        if r.status().is_none_or(|c| c < 200) {
            return;
        }
        let Some((invite, remote)) = self.orphans.remove(&tx) else {
            return;
        };
        if r.status().is_some_and(|c| c < 300) {
            self.ack_and_bye_stray(now, &invite, r, remote);
        }
    }

    fn ack_and_bye_stray(&mut self, now: Instant, invite: &Message, r: &Message, remote: Remote) {
        let Some(mut d) = Dialog::from_uac(invite, r, remote) else {
            return;
        };
        let hostport = self.via_hostport(remote);
        let ack = d.request(&Method::Ack, d.cseq, &hostport, None);
        self.out.push_back(Transmit {
            remote,
            payload: ack,
        });
        let bye = d.next_request(&Method::Bye, &hostport, None);
        let _ = self.layer.send_request(now, bye, remote);
    }

    /// Ends a call that never connected: final answer to A, branches cancelled.
    fn fail_call(
        &mut self,
        now: Instant,
        a: &str,
        code: u16,
        reason: &str,
        disposition: Disposition,
        by: HangupBy,
    ) {
        let Some(bridge) = self.remove_bridge(a) else {
            return;
        };
        parties_end(&self.shared.presence, &bridge, self.wall(now));
        for b in bridge.branches.iter().filter(|b| b.final_code.is_none()) {
            self.cancel_branch(now, &b.invite, b.remote);
        }
        let answer = Builder::response(
            &bridge.a_invite,
            bridge.a_remote.addr,
            code,
            reason,
            Some(bridge.a_tag.as_bytes()),
        )
        .finish();
        self.write_cdr(now, bridge.cdr, disposition, by);
        self.hold_until_durable(bridge.a_tx, answer, bridge.a_remote);
    }

    /// A new call: counted live, reachable by leg A's Call-ID.
    pub(super) fn add_bridge(&mut self, a: &str, bridge: Bridge) {
        self.shared
            .stats
            .live_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.legs.insert(a.to_string(), (a.to_string(), Side::A));
        self.bridges.insert(a.to_string(), bridge);
    }

    fn remove_bridge(&mut self, a: &str) -> Option<Bridge> {
        let bridge = self.bridges.remove(a)?;
        if let Some(q) = &bridge.queue {
            self.shared.routing.leave(q.id, q.ticket);
            self.waiting_calls.remove(a);
        }
        self.shared
            .stats
            .live_calls
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // Branches still ringing may answer anyway (a CANCEL/2xx race): keep what
        // is needed to ACK and end them.
        for b in bridge.branches.iter().filter(|b| b.final_code.is_none()) {
            self.orphans.insert(b.tx, (b.invite.clone(), b.remote));
        }
        self.legs.retain(|_, (owner, _)| owner != a);
        self.pending.retain(|_, p| match p {
            Pending::Branch(owner, _)
            | Pending::Relayed {
                a_call_id: owner, ..
            } => owner != a,
            Pending::Origin(..) | Pending::Notify(..) => true,
        });
        Some(bridge)
    }

    /// A's CANCEL: 487 to A's INVITE, CANCEL to every branch.
    pub(crate) fn cancel_bridge(&mut self, now: Instant, a: &str) -> bool {
        match self.bridges.get(a) {
            Some(b) if b.phase == APhase::Calling => {
                self.fail_call(
                    now,
                    a,
                    487,
                    "Request Terminated",
                    Disposition::Cancelled,
                    HangupBy::Caller,
                );
                true
            }
            _ => false,
        }
    }

    /// The bridge timer: ring timeout while calling, 2xx retransmission after.
    pub(crate) fn bridge_timer(&mut self, now: Instant, a: &str) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        match bridge.phase {
            APhase::Calling if now >= bridge.ring_deadline => {
                self.fail_call(
                    now,
                    a,
                    480,
                    "Temporarily Unavailable",
                    Disposition::NoAnswer,
                    HangupBy::System,
                );
            }
            APhase::Answered => {
                if now >= bridge.ack_deadline {
                    tracing::info!(call_id = %a, "no ACK from the caller; ending the call");
                    return self.end_bridge(now, a, None, HangupBy::System);
                }
                if let Some((ok, to)) = bridge.ok.clone() {
                    self.out.push_back(Transmit {
                        remote: to,
                        payload: ok,
                    });
                }
                bridge.retransmit = (bridge.retransmit * 2).min(self.shared.timers.t2);
                let next = (now + bridge.retransmit).min(bridge.ack_deadline);
                self.arm_timer(a, next);
            }
            APhase::Confirmed if bridge.session.is_some_and(|(_, at)| now >= at) => {
                tracing::info!(call_id = %a, "session not refreshed in time (RFC 4028); ending the call");
                self.end_bridge(now, a, None, HangupBy::System);
            }
            _ => {}
        }
    }

    /// A's ACK for our 2xx.
    pub(crate) fn bridge_ack(&mut self, a: &str, req: &Message) {
        let Some(b) = self.bridges.get_mut(a) else {
            return;
        };
        if b.phase == APhase::Answered && to_tag_is(req, &b.a_tag) {
            b.phase = APhase::Confirmed;
            b.ok = None;
            if let Some((_, expires)) = b.session {
                self.arm_timer(a, expires);
            }
        }
    }

    /// Ends a connected call: BYE to every leg except `from` (which sent BYE), CDR.
    fn end_bridge(&mut self, now: Instant, a: &str, from: Option<Side>, by: HangupBy) {
        let Some(mut bridge) = self.remove_bridge(a) else {
            return;
        };
        parties_end(&self.shared.presence, &bridge, self.wall(now));
        if bridge.queue.is_some() && bridge.answered.is_none() {
            // The caller left the queue while an agent was being rung.
            for b in bridge.branches.iter().filter(|b| b.final_code.is_none()) {
                self.cancel_branch(now, &b.invite, b.remote);
            }
        }
        if from != Some(Side::A) {
            if let Some(d) = bridge.a_dialog.as_mut() {
                let hostport = self.via_hostport(d.remote);
                let bye = d.next_request(&Method::Bye, &hostport, None);
                let _ = self.layer.send_request(now, bye, d.remote);
            }
        }
        if let Some(idx) = bridge.answered {
            if from != Some(Side::B(idx)) {
                if let Some(d) = bridge.branches[idx].dialog.as_mut() {
                    let hostport = self.via_hostport(d.remote);
                    let bye = d.next_request(&Method::Bye, &hostport, None);
                    let _ = self.layer.send_request(now, bye, d.remote);
                }
            }
        }
        let disposition = queue::disposition(&bridge);
        self.write_cdr(now, bridge.cdr, disposition, by);
    }

    /// Media saw nothing for the inactivity period.
    pub(crate) fn bridge_idle(&mut self, now: Instant, a: &str) {
        match self.bridges.get(a).map(|b| b.phase) {
            Some(APhase::Calling) => {}
            Some(_) => self.end_bridge(now, a, None, HangupBy::System),
            None => {}
        }
    }

    /// A request inside one of the bridge's dialogs.
    pub(crate) fn bridge_in_dialog(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: &str,
        side: Side,
    ) {
        let Some(bridge) = self.bridges.get(a) else {
            return self.reply(now, tx, req, remote, 481, "Call/Transaction Does Not Exist");
        };
        let valid = match side {
            Side::A => to_tag_is(req, &bridge.a_tag) && bridge.a_dialog.is_some(),
            Side::B(i) => Some(i) == bridge.answered,
        };
        if !valid {
            return self.reply(now, tx, req, remote, 481, "Call/Transaction Does Not Exist");
        }
        match req.method() {
            Some(Method::Bye) => {
                let by = if side == Side::A {
                    HangupBy::Caller
                } else {
                    HangupBy::Callee
                };
                let answer = self.response(req, remote, 200, "OK").finish();
                self.end_bridge(now, a, Some(side), by);
                self.hold_until_durable(tx, answer, remote);
            }
            Some(Method::Invite | Method::Update | Method::Info)
                if bridge.queue.is_some() && bridge.answered.is_none() =>
            {
                self.queue_in_dialog(now, tx, req, remote, a)
            }
            Some(m @ (Method::Invite | Method::Update | Method::Info)) => {
                let m = m.clone();
                self.relay_request(now, tx, req, a, side, &m);
            }
            _ => self.reply(now, tx, req, remote, 200, "OK"),
        }
    }

    /// Sends `req`'s equivalent on the other leg; its answer comes back to `tx`.
    fn relay_request(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        a: &str,
        side: Side,
        method: &Method,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let (other_side, port) = match side {
            Side::A => (1, bridge.relay.ports[1]),
            Side::B(_) => (0, bridge.relay.ports[0]),
        };
        if let Ok(s) = sdp::parse(req.body()) {
            // The requester's new media state (hold, resume, new address).
            let from = if other_side == 1 { 0 } else { 1 };
            let sip = match side {
                Side::A => bridge.a_remote.addr,
                Side::B(i) => bridge.branches[i].remote.addr,
            };
            bridge.relay.set_peer(from, peer_of(&s, sip));
            // Music on hold: the requester stops listening, the other side hears
            // music until it resumes (and then hears it, as one RTP stream).
            if let Some(music) = &self.shared.hold_music {
                if receives(&s) {
                    bridge.relay.stop_playing();
                } else if let Some(pt) = g711_pt(&s) {
                    bridge.relay.play(other_side, Arc::clone(music), pt, true);
                }
            }
        }
        let dialog = match side {
            Side::A => bridge
                .answered
                .and_then(|i| bridge.branches[i].dialog.as_mut()),
            Side::B(_) => bridge.a_dialog.as_mut(),
        };
        let Some(d) = dialog else { return };
        let target = d.remote;
        let body = sdp::parse(req.body()).ok().and_then(|p| {
            sdp::rewrite(req.body(), self.media_ip(target), &relay_ports(&p, port)).ok()
        });
        let hostport = self.via_hostport(target);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let d = match side {
            Side::A => bridge
                .answered
                .and_then(|i| bridge.branches[i].dialog.as_mut()),
            Side::B(_) => bridge.a_dialog.as_mut(),
        };
        let Some(d) = d else { return };
        let bytes = d.next_request(method, &hostport, body.as_deref());
        match self.layer.send_request(now, bytes, target) {
            Ok(ctx) => {
                self.pending.insert(
                    ctx,
                    Pending::Relayed {
                        a_call_id: a.to_string(),
                        tx,
                    },
                );
            }
            Err(e) => tracing::warn!("relayed request not sent: {e}"),
        }
    }

    fn relayed_response(
        &mut self,
        now: Instant,
        a: &str,
        server_tx: TxId,
        client_tx: TxId,
        resp: Option<Message>,
    ) {
        let code = self.settle(client_tx, resp.as_ref());
        if code < 200 {
            return;
        }
        let Some(req) = self.layer.request(server_tx).cloned() else {
            return;
        };
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        // The requester is the other side of the responder.
        let requester_is_a = bridge
            .a_dialog
            .as_ref()
            .and_then(|d| req.call_id().map(|c| c == d.call_id.as_bytes()))
            .unwrap_or(false);
        let (remote, port) = if requester_is_a {
            (bridge.a_remote, bridge.relay.ports[0])
        } else {
            let r = bridge
                .answered
                .map(|i| bridge.branches[i].remote)
                .unwrap_or(bridge.a_remote);
            (r, bridge.relay.ports[1])
        };
        // ACK the responder's 2xx to a re-INVITE at once (the requester's ACK is absorbed).
        if let (Some(r), true) = (
            &resp,
            (200..300).contains(&code) && req.method() == Some(&Method::Invite),
        ) {
            let responder = if requester_is_a {
                bridge
                    .answered
                    .and_then(|i| bridge.branches[i].dialog.as_ref())
            } else {
                bridge.a_dialog.as_ref()
            };
            if let Some(d) = responder {
                let seq = r.cseq().map_or(1, |c| c.seq);
                let ack = d.request(&Method::Ack, seq, &self.via_hostport(d.remote), None);
                self.out.push_back(Transmit {
                    remote: d.remote,
                    payload: ack,
                });
            }
            if let Ok(s) = sdp::parse(r.body()) {
                let responder_side = if requester_is_a { 1 } else { 0 };
                let sip = if requester_is_a {
                    bridge
                        .answered
                        .map(|i| bridge.branches[i].remote.addr)
                        .unwrap_or(remote.addr)
                } else {
                    bridge.a_remote.addr
                };
                bridge.relay.set_peer(responder_side, peer_of(&s, sip));
            }
        }
        if (200..300).contains(&code)
            && matches!(req.method(), Some(Method::Invite | Method::Update))
        {
            self.refresh_session(now, a, resp.as_ref());
        }
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        let reason = resp
            .as_ref()
            .and_then(|r| r.reason())
            .map(lossy)
            .unwrap_or_else(|| "Request Timeout".into());
        let tag = if requester_is_a {
            Some(bridge.a_tag.clone())
        } else {
            None
        };
        let mut b = Builder::response(
            &req,
            remote.addr,
            code,
            &reason,
            tag.as_deref().map(str::as_bytes),
        );
        b.header("Contact", format!("<sip:{}>", self.via_hostport(remote)));
        let bytes = match resp
            .as_ref()
            .filter(|r| !r.body().is_empty())
            .and_then(|r| self.rewrite_for(r.body(), remote, port))
        {
            Some((body, _)) => b.finish_with_body(Some("application/sdp"), &body),
            None => b.finish(),
        };
        self.send_final(now, server_tx, bytes);
    }

    /// A successful re-INVITE/UPDATE refreshed the session (RFC 4028 §10).
    fn refresh_session(&mut self, now: Instant, a: &str, resp: Option<&Message>) {
        let Some(b) = self.bridges.get_mut(a) else {
            return;
        };
        let Some((interval, _)) = b.session else {
            return;
        };
        let interval = resp.and_then(session_interval).unwrap_or(interval);
        b.session = Some((interval, now + interval));
        if b.phase == APhase::Confirmed {
            self.arm_timer(a, now + interval);
        }
    }

    /// Live bridged calls of this shard.
    pub fn bridge_count(&self) -> usize {
        self.bridges.len()
    }
}

/// `ext`'s new dialog (trying) in the presence map, if `ext` is an extension
/// (callers from outside are not).
pub(crate) fn start_party(
    presence: &crate::presence::Presence,
    ext: &str,
    call_id: &str,
    direction: Role,
    peer: &str,
    at: crate::registrar::UnixMillis,
) -> Option<Party> {
    if !presence.contains(ext) {
        return None;
    }
    let id = presence
        .dialog_started(ext, call_id, direction, peer, at)
        .ok()?;
    Some((ext.to_string(), id))
}

/// Moves both parties' presence dialogs to `state`.
fn parties_step(
    presence: &crate::presence::Presence,
    bridge: &Bridge,
    state: DialogState,
    at: crate::registrar::UnixMillis,
) {
    for (ext, id) in [&bridge.caller_party, &bridge.callee_party]
        .into_iter()
        .flatten()
    {
        let _ = presence.dialog_state(ext, *id, state, at);
    }
}

/// Ends both parties' presence dialogs; the agent of an answered queue call
/// goes into wrap-up.
pub(super) fn parties_end(
    presence: &crate::presence::Presence,
    bridge: &Bridge,
    at: crate::registrar::UnixMillis,
) {
    if let Some((ext, id)) = &bridge.caller_party {
        let _ = presence.dialog_ended(ext, *id, None, at);
    }
    if let Some((ext, id)) = &bridge.callee_party {
        let wrap_up = bridge
            .queue
            .as_ref()
            .filter(|_| bridge.answered.is_some())
            .map(|q| q.wrap_up);
        let _ = presence.dialog_ended(ext, *id, wrap_up, at);
    }
}

/// Copies the session-timer headers (RFC 4028) from one leg's message to the
/// other's: the endpoints negotiate and refresh, the B2BUA relays and polices.
fn copy_session_timer(b: &mut Builder, from: &Message) {
    for name in ["Session-Expires", "x", "Min-SE"] {
        for v in from.other_values(name) {
            b.header(name, v);
        }
    }
    if from
        .values(HeaderName::Supported)
        .any(|v| v.eq_ignore_ascii_case(b"timer"))
    {
        b.header("Supported", "timer");
    }
    if from
        .values(HeaderName::Require)
        .any(|v| v.eq_ignore_ascii_case(b"timer"))
    {
        b.header("Require", "timer");
    }
}

/// The session interval a message sets (`Session-Expires: N;refresher=…`).
fn session_interval(m: &Message) -> Option<Duration> {
    let v = m
        .other_values("Session-Expires")
        .next()
        .or_else(|| m.other_values("x").next())?;
    let secs = crate::sip::message::headers::parse_u32(v.split(|c| *c == b';').next()?)?;
    (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
}

fn to_tag_is(req: &Message, tag: &str) -> bool {
    req.to_header()
        .and_then(|t| t.tag())
        .is_some_and(|t| t == tag.as_bytes())
}

fn header_name(name: HeaderName) -> &'static str {
    match name {
        HeaderName::Via => "Via",
        HeaderName::From => "From",
        HeaderName::To => "To",
        HeaderName::CallId => "Call-ID",
        _ => "X-Unknown",
    }
}

/// A queue caller's number (the caller index key): From's user part, or
/// "anonymous" when withheld (no number, or `Privacy: id`).
pub(crate) fn caller_number(req: &Message) -> String {
    let withheld = req
        .other_values("Privacy")
        .flat_map(|v| v.split(|c| *c == b';'))
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"id"));
    if withheld {
        return "anonymous".into();
    }
    party_number(req.from_header())
}

/// For CDRs of bridged calls: the caller's number from an authenticated user or From.
pub(crate) fn caller_of(req: &Message, authenticated: Option<String>) -> String {
    authenticated.unwrap_or_else(|| party_number(req.from_header()))
}
