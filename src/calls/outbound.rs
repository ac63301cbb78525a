//! Outside calls: a B leg that goes to a provider through the route's trunks,
//! one at a time — a phone's call out (a bridge: the caller was authenticated
//! and passed the toll-fraud guard before anything is sent, see
//! `Calls::on_invite`), or a campaign's customer (an origination). Each try
//! takes one of the trunk's channels and sends the number in the trunk's form
//! with the caller ID the rules choose (From, and P-Asserted-Identity where the
//! trunk wants it), offering only the trunk's codecs.
//!
//! - a 401/407 challenge is answered once per try with the trunk's credentials
//!   (RFC 3261 §22.2), as a new INVITE of the same dialog attempt;
//! - a reliable provisional answer (`Require: 100rel`) is acknowledged with
//!   PRACK (RFC 3262); early media (183 + SDP) reaches the phone through the
//!   relay like any other bridge's;
//! - a trunk with several addresses (DNS SRV) is tried at its next address
//!   when one sends nothing within the trunk's `trying_timeout`, or 503
//!   (RFC 3263 §4.3);
//! - the next trunk is tried on the final answers the route names (408, 5xx,
//!   6xx by default), and when the provider sends nothing at all — never
//!   once the callee rang or answered.
//!
//! The permit and the channel are given back when the call ends, however it ends.

use super::bridge::{refuse, ALeg, Branch, Bridge};
use super::originate::Origination;
use super::{lossy, new_cdr, Calls, Cx, Pending, Refusal, Side};
use crate::outside::{Attempt, Permit, RouteId, TrunkId};
use crate::presence::Direction;
use crate::sip::message::{build::random_tag, parse, Builder, HeaderName, Message, Method};
use crate::sip::transaction::TxId;
use crate::sip::{sdp, CallId, Dialog, Remote, StatusCode};
use std::collections::HashMap;
use std::time::Instant;

/// The outside part of a call: a bridge's B leg, or a campaign attempt's
/// customer.
#[derive(Debug)]
pub(super) struct Outbound {
    /// The toll-fraud guard's grant (a phone's call; campaigns are bounded by
    /// their own limits and the trunk's channels).
    pub permit: Option<Permit>,
    pub user: String,
    /// The route dialled (a campaign names its trunk instead: no failover).
    pub route: Option<RouteId>,
    /// The caller ID shown, when the call sets its own (a campaign's).
    pub caller_id: Option<String>,
    pub attempts: Vec<Attempt>,
    /// The next attempt to make.
    pub next: usize,
    /// The trunk of the latest try, and its branch.
    pub current: Option<(TrunkId, usize)>,
    /// The trunk whose channel the call holds (until it moves on or ends).
    pub channel: Option<TrunkId>,
    /// The callee rang (or sent early media): no failover after this.
    pub rang: bool,
    /// The current try answered a challenge already.
    pub challenged: bool,
    /// Nothing heard from the current try's provider yet: it counts as down at this time.
    pub silent_until: Option<Instant>,
    /// The highest CSeq we used in the callee's early dialog (PRACKs), so the
    /// confirmed dialog's requests go above it.
    pub cseq: u32,
    /// The last RSeq acknowledged with PRACK.
    pub rseq: Option<u32>,
}

impl Outbound {
    /// Outside tries `attempts` for `user`, none made yet.
    pub fn new(user: String, route: Option<RouteId>, attempts: Vec<Attempt>) -> Outbound {
        Outbound {
            permit: None,
            user,
            route,
            caller_id: None,
            attempts,
            next: 0,
            current: None,
            channel: None,
            rang: false,
            challenged: false,
            silent_until: None,
            cseq: 1,
            rseq: None,
        }
    }

    /// How many of the next attempts go to trunk `t` (its other addresses).
    fn left_on(&self, t: TrunkId) -> usize {
        let rest = self.attempts.get(self.next..).unwrap_or_default();
        rest.iter().take_while(|a| a.trunk == t).count()
    }

    /// Gives back the channel the call holds (if any).
    fn release_channel(&mut self, cx: &Cx<'_>) {
        if let Some(t) = self.channel.take() {
            cx.env.outside.line(t).release();
        }
    }

    /// Gives back everything the call holds.
    pub fn release(&mut self, cx: &Cx<'_>) {
        self.release_channel(cx);
        if let Some(p) = &self.permit {
            cx.env.outside.fraud.release(p);
        }
    }
}

/// Which kind of call outside tries belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Host {
    Bridge,
    Origination,
}

impl Host {
    /// What the answers of try `idx` of call `a` come back as.
    fn pending(self, a: &CallId, idx: usize) -> Pending {
        match self {
            Host::Bridge => Pending::Branch(a.clone(), idx),
            Host::Origination => Pending::Origin(a.clone(), Side::B(idx)),
        }
    }
}

/// An outside call's tries, and what they are made from.
pub(super) struct Tries<'a> {
    pub host: Host,
    pub out: &'a mut Outbound,
    pub branches: &'a mut Vec<Branch>,
    /// The SDP offered to the provider, pointed at the relay's port `port`.
    pub offer: &'a [u8],
    pub port: u16,
    /// The caller asked for their identity to be withheld.
    pub privacy: bool,
}

/// The outside tries of call `a`, wherever it lives.
fn tries<'a>(
    bridges: &'a mut HashMap<CallId, Bridge>,
    originations: &'a mut HashMap<CallId, Origination>,
    a: &CallId,
) -> Option<Tries<'a>> {
    if let Some(b) = bridges.get_mut(a) {
        let (offer, side) = super::bridge::next_leg(b.transfer.as_ref(), &b.a);
        let port = b.relay.ports()[side];
        return Some(Tries {
            host: Host::Bridge,
            out: b.outbound.as_mut()?,
            branches: &mut b.branches,
            offer,
            port,
            privacy: crate::outside::privacy_asked(&b.a.invite),
        });
    }
    originations.get_mut(a)?.tries()
}

/// What an outside call is, before it is placed.
pub(super) struct OutsideCall {
    pub user: String,
    pub number: String,
    pub route: RouteId,
    pub permit: Permit,
}

impl Calls {
    /// A new INVITE from authenticated `call.user` to an outside number,
    /// allowed by the guard (`call.permit`).
    pub(super) fn invite_outside(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: CallId,
        call: OutsideCall,
    ) {
        let a_leg = ALeg::new(tx, req, remote);
        let cdr = new_cdr(cx, &a, &call.user, &call.number);
        let relay = match Self::prepare_bridge(cx, req, remote, &a) {
            Ok((_, relay)) => relay,
            Err(refusal) => {
                cx.env.outside.fraud.release(&call.permit);
                return refuse(cx, &a_leg, cdr, refusal);
            }
        };
        let attempts = cx.env.outside.attempts(call.route, &call.number);
        let route = cx.env.outside.route_of(call.route);
        tracing::info!(call_id = %a, user = %call.user, number = %call.number, route = %route.name, "outside call");
        let caller_party = super::start_party(
            &cx.env.presence,
            &call.user,
            &a,
            Direction::Initiator,
            &call.number,
            cx.wall,
        );
        let outbound = Outbound {
            permit: Some(call.permit),
            ..Outbound::new(call.user, Some(call.route), attempts)
        };
        let bridge = Bridge {
            caller_party,
            outbound: Some(outbound),
            ..Bridge::new(cx, a_leg, relay, cdr)
        };
        self.add_bridge(cx, a.clone(), bridge);
        if !self.try_next_trunk(cx, &a) {
            self.fail_call(cx, &a, no_trunk());
        }
    }

    /// Sends outside call `a` to its next trunk with a free channel; `false`
    /// when none is left.
    pub(super) fn try_next_trunk(&mut self, cx: &mut Cx<'_>, a: &CallId) -> bool {
        let env = cx.env;
        let Some(t) = tries(&mut self.bridges, &mut self.originations, a) else {
            return false;
        };
        let (host, out) = (t.host, t.out);
        loop {
            out.release_channel(cx);
            let Some(attempt) = out.attempts.get(out.next).cloned() else {
                return false;
            };
            out.next += 1;
            let line = env.outside.line(attempt.trunk);
            if !line.is_up() {
                tracing::info!(call_id = %a, trunk = %line.name, "trunk down (registration); next");
                out.next += out.left_on(attempt.trunk);
                continue;
            }
            if !line.seize() {
                tracing::info!(call_id = %a, trunk = %line.name, "trunk busy (max_channels); next");
                out.next += out.left_on(attempt.trunk);
                continue;
            }
            out.current = Some((attempt.trunk, t.branches.len()));
            out.channel = Some(attempt.trunk);
            out.challenged = false;
            out.rseq = None;
            out.cseq = 1;
            out.silent_until = Some(cx.now + line.trying_timeout);
            let caller_id = match &out.caller_id {
                Some(c) => c.clone(),
                None => env.outside.caller_id(out.route, attempt.trunk, &out.user),
            };
            let withheld = env.outside.withholds(&out.user) || t.privacy;
            let caller = (caller_id.as_str(), withheld);
            let Some(invite) = trunk_invite(cx, (t.offer, t.port), &attempt, caller) else {
                tracing::warn!(call_id = %a, trunk = %line.name, "no INVITE for this trunk (no codec in common?)");
                continue;
            };
            let idx = t.branches.len();
            let call_id = CallId::from_bytes(invite.call_id().unwrap_or_default());
            let id = cx.send_parsed(invite.clone(), attempt.target);
            tracing::debug!(call_id = %a, trunk = %line.name, to = %attempt.target.addr, number = %attempt.number, "outside call sent");
            self.pending.insert(id, host.pending(a, idx));
            self.legs.insert(call_id.clone(), (a.clone(), Side::B(idx)));
            t.branches.push(Branch {
                id,
                call_id,
                invite,
                remote: attempt.target,
                final_code: None,
                dialog: None,
                ext: None,
            });
            self.arm_outside(cx, host, a);
            return true;
        }
    }

    /// Arms outside call `a`'s timer.
    fn arm_outside(&self, cx: &mut Cx<'_>, host: Host, a: &CallId) {
        match host {
            Host::Bridge => self.arm_bridge(cx, a),
            Host::Origination => self.arm_origin(cx, a),
        }
    }

    /// Ends outside call `a`, which never connected.
    fn outside_failed(&mut self, cx: &mut Cx<'_>, host: Host, a: &CallId, r: Refusal) {
        match host {
            Host::Bridge => self.fail_call(cx, a, r),
            Host::Origination => self.origin_failed(cx, a, r),
        }
    }

    /// An answer on try `idx` of outside call `a`: `true` when handled here
    /// (challenges, failover, PRACK bookkeeping stay out of the call).
    pub(super) fn outbound_response(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        idx: usize,
        code: u16,
        resp: Option<&Message>,
    ) -> bool {
        let Some(t) = tries(&mut self.bridges, &mut self.originations, a) else {
            return !self.bridges.contains_key(a) && !self.originations.contains_key(a);
        };
        let (host, out) = (t.host, t.out);
        if out.current.map(|(_, i)| i) != Some(idx) {
            // An old try (its transaction ended, or it was abandoned as
            // silent and a late 2xx is the orphans' to end): nothing to do.
            return true;
        }
        if out.silent_until.take().is_some() {
            if let Some((trunk, _)) = out.current {
                let line = cx.env.outside.line(trunk);
                line.targets.answered(t.branches[idx].remote);
            }
        }
        match (code, resp) {
            (100, _) => false,
            (101..=199, Some(r)) => {
                out.rang |= code == 180 || code == 183 || !r.body().is_empty();
                prack(cx, out, &t.branches[idx], r);
                false
            }
            (401 | 407, Some(r)) if !out.challenged => {
                out.challenged = true;
                let Some((trunk, _)) = out.current else {
                    return true;
                };
                let line = cx.env.outside.line(trunk);
                let uri = t.branches[idx].invite.request_uri_bytes();
                let Some(auth) = credentials(cx, trunk, r, "INVITE", uri.unwrap_or_default())
                else {
                    tracing::warn!(call_id = %a, trunk = %line.name, "a challenge we cannot answer");
                    return self.trunk_failed(cx, a, code);
                };
                let old = &t.branches[idx].invite;
                let Some(invite) = rechallenged(old, auth) else {
                    return self.trunk_failed(cx, a, code);
                };
                let id = cx.send_parsed(invite.clone(), t.branches[idx].remote);
                self.pending.insert(id, host.pending(a, idx));
                let branch = &mut t.branches[idx];
                branch.id = id;
                branch.invite = invite;
                true
            }
            (200..=299, _) => false,
            _ => self.trunk_failed(cx, a, code),
        }
    }

    /// The current try of outside call `a` failed with `code`: unless the
    /// callee rang, the trunk's next address on 408 or 503 (RFC 3263), the
    /// next trunk when the route says so; else the call fails.
    fn trunk_failed(&mut self, cx: &mut Cx<'_>, a: &CallId, code: u16) -> bool {
        let Some(t) = tries(&mut self.bridges, &mut self.originations, a) else {
            return true;
        };
        let (host, out) = (t.host, t.out);
        let next_address = matches!(code, 408 | 503);
        // The provider refused our credentials: another provider may take them.
        let code = match code {
            401 | 407 => StatusCode::SERVICE_UNAVAILABLE.0,
            c => c,
        };
        let fails_over = out
            .route
            .is_some_and(|r| cx.env.outside.fails_over(r, code));
        let failover = !out.rang && fails_over;
        if let Some((trunk, idx)) = out.current {
            let branch = &mut t.branches[idx];
            branch.final_code = Some(code);
            let line = cx.env.outside.line(trunk);
            tracing::info!(call_id = %a, trunk = %line.name, to = %branch.remote.addr, code, "outside call failed on trunk");
            if next_address {
                line.targets.failed(branch.remote);
            }
            // The trunk's other addresses: tried on 408/503 only; other
            // trunks: tried when the route fails over.
            let left = out.left_on(trunk);
            if !next_address {
                out.next += left;
            }
            if !failover {
                out.attempts
                    .truncate(out.next + if next_address { left } else { 0 });
            }
        }
        let go_on = failover || (next_address && !out.rang);
        if go_on && self.try_next_trunk(cx, a) {
            return true;
        }
        let r = if failover {
            no_trunk()
        } else {
            passed_on(code)
        };
        self.outside_failed(cx, host, a, r);
        true
    }

    /// The provider of outside call `a`'s current try sent nothing in time:
    /// the try is abandoned (a late 2xx is acknowledged and ended) and the
    /// next trunk tried.
    pub(super) fn outbound_silent(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let Some(t) = tries(&mut self.bridges, &mut self.originations, a) else {
            return;
        };
        let Some((_, idx)) = t.out.current else {
            return;
        };
        let branch = &t.branches[idx];
        self.pending.remove(&branch.id);
        self.orphans
            .insert(branch.id, (branch.invite.clone(), branch.remote));
        self.trunk_failed(cx, a, StatusCode::REQUEST_TIMEOUT.0);
    }

    /// Try `idx` of outside call `a` answered and made its dialog: its
    /// requests go above the early dialog's PRACKs.
    pub(super) fn outbound_answered(&mut self, a: &CallId, idx: usize) {
        let Some(t) = tries(&mut self.bridges, &mut self.originations, a) else {
            return;
        };
        if let Some(d) = t.branches.get_mut(idx).and_then(|b| b.dialog.as_mut()) {
            d.cseq = d.cseq.max(t.out.cseq);
        }
    }
}

/// The Authorization (401) or Proxy-Authorization (407) answering a
/// provider's `challenge` to our `method` request to `uri`, with trunk `t`'s
/// credentials.
pub(super) fn credentials(
    cx: &Cx<'_>,
    t: TrunkId,
    challenge: &Message,
    method: &str,
    uri: &[u8],
) -> Option<(&'static str, String)> {
    let line = cx.env.outside.line(t);
    let creds = (line.auth_username.as_str(), line.password.as_str());
    crate::sip::auth::authorization(challenge, method, &lossy(uri), creds, &random_tag())
}

/// Our BYE to a provider was challenged: sent once more with the trunk's
/// credentials (its answer changes nothing).
pub(super) fn bye_again(cx: &mut Cx<'_>, t: TrunkId, dialog: &mut Dialog, challenge: &Message) {
    let Some((name, value)) = credentials(cx, t, challenge, "BYE", &dialog.target) else {
        return;
    };
    dialog.cseq += 1;
    let hostport = cx.hostport(dialog.remote);
    let bytes = dialog.request_with(
        &Method::Bye,
        dialog.cseq,
        &hostport,
        &[(name, &value)],
        None,
    );
    cx.send(bytes, dialog.remote);
}

/// No trunk could take the call (all busy, failed or silent).
fn no_trunk() -> Refusal {
    Refusal::failed(StatusCode::SERVICE_UNAVAILABLE)
}

/// The callee's final answer, passed on to the caller.
fn passed_on(code: u16) -> Refusal {
    use super::cdr::{Disposition, HangupBy};
    let disposition = match code {
        486 | 600 => Disposition::Busy,
        487 => Disposition::Cancelled,
        408 | 480 => Disposition::NoAnswer,
        _ => Disposition::Failed,
    };
    let status = StatusCode(code);
    Refusal {
        code,
        reason: match status.reason() {
            "" => "Call Failed",
            r => r,
        },
        disposition,
        by: HangupBy::Callee,
    }
}

/// The INVITE of one try: the number at the provider's domain, our caller ID
/// (withheld: an anonymous From and `Privacy: id`, the identity only in
/// P-Asserted-Identity for the provider, RFC 3323/3325), the caller's offer
/// pointed at the relay (with the trunk's codecs only).
fn trunk_invite(
    cx: &mut Cx<'_>,
    (offer, port): (&[u8], u16),
    attempt: &Attempt,
    (caller_id, withheld): (&str, bool),
) -> Option<Message> {
    let line = cx.env.outside.line(attempt.trunk);
    let target = attempt.target;
    let parsed = sdp::parse(offer).ok()?;
    let ports = super::bridge::relay_ports(&parsed, port);
    let body = sdp::rewrite(offer, cx.media_ip(target), &ports).ok()?;
    let body = match line.codecs.is_empty() {
        true => body,
        false => sdp::keep_codecs(&body, &line.codecs)?,
    };
    let (number, domain) = (&attempt.number, &line.domain);
    let call_id = cx.new_call_id();
    let hostport = cx.hostport(target);
    let mut b = Builder::request(&Method::Invite, format!("sip:{number}@{domain}").as_bytes());
    b.header("Via", cx.via(target))
        .header("Max-Forwards", "70")
        .header(
            "From",
            match withheld {
                true => format!(
                    "\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag={}",
                    random_tag()
                ),
                false => format!("<sip:{caller_id}@{domain}>;tag={}", random_tag()),
            },
        )
        .header("To", format!("<sip:{number}@{domain}>"))
        .header("Call-ID", &call_id)
        .header("CSeq", "1 INVITE")
        .header(
            "Contact",
            format!(
                "<sip:{}@{hostport};transport=udp>",
                contact_user(line, caller_id)
            ),
        )
        .header("Allow", super::ALLOW)
        .header("Supported", "100rel")
        .header("User-Agent", crate::sip::message::build::PRODUCT);
    if line.send_pai {
        b.header("P-Asserted-Identity", format!("<sip:{caller_id}@{domain}>"));
    }
    if withheld {
        b.header("Privacy", "id");
    }
    parse(
        b.finish_with_body(Some("application/sdp"), &body),
        &Default::default(),
    )
    .ok()
}

/// Our Contact's user toward a trunk: the account's (where the provider
/// routes calls by it), else the caller ID.
fn contact_user<'a>(line: &'a crate::outside::Line, caller_id: &'a str) -> &'a str {
    match line.username.as_str() {
        "" => caller_id,
        u => u,
    }
}

/// `old` again with the next CSeq and `auth` (same Call-ID, From tag, body).
fn rechallenged(old: &Message, (name, value): (&str, String)) -> Option<Message> {
    let uri = old.request_uri_bytes()?;
    let seq = old.cseq().map_or(1, |c| c.seq) + 1;
    let mut b = Builder::request(&Method::Invite, uri);
    // A new transaction: a fresh branch on the same sent-by.
    let via = lossy(old.value(HeaderName::Via)?);
    let via = match via.split_once(";branch=") {
        Some((sent_by, rest)) => {
            let after = rest
                .split_once(';')
                .map_or(String::new(), |(_, p)| format!(";{p}"));
            format!("{sent_by};branch=z9hG4bK{}{after}", random_tag())
        }
        None => via,
    };
    b.header("Via", via);
    for (header, text) in [
        (HeaderName::From, "From"),
        (HeaderName::To, "To"),
        (HeaderName::CallId, "Call-ID"),
        (HeaderName::Contact, "Contact"),
    ] {
        b.header(text, old.value(header)?);
    }
    b.header("CSeq", format!("{seq} INVITE"))
        .header("Max-Forwards", "70")
        .header("Allow", super::ALLOW)
        .header("Supported", "100rel")
        .header("User-Agent", crate::sip::message::build::PRODUCT);
    for name in ["P-Asserted-Identity", "Privacy"] {
        for v in old.other_values(name) {
            b.header(name, v);
        }
    }
    b.header(name, value);
    parse(
        b.finish_with_body(Some("application/sdp"), old.body()),
        &Default::default(),
    )
    .ok()
}

/// RFC 3262: a provisional answer with `Require: 100rel` and a new RSeq is
/// acknowledged with PRACK in its early dialog.
fn prack(cx: &mut Cx<'_>, out: &mut Outbound, branch: &Branch, r: &Message) {
    let reliable = r
        .values(HeaderName::Require)
        .any(|v| v.eq_ignore_ascii_case(b"100rel"));
    let rseq = r
        .other_values("RSeq")
        .next()
        .and_then(crate::sip::message::headers::parse_u32);
    let (true, Some(rseq)) = (reliable, rseq) else {
        return;
    };
    if out.rseq.is_some_and(|last| rseq <= last) {
        return; // a retransmission of one we acknowledged
    }
    let Some(mut early) = Dialog::from_uac(&branch.invite, r, branch.remote) else {
        return;
    };
    let invite_seq = branch.invite.cseq().map_or(1, |c| c.seq);
    early.cseq = out.cseq.max(invite_seq);
    out.rseq = Some(rseq);
    let rack = format!("{rseq} {invite_seq} INVITE");
    early.cseq += 1;
    out.cseq = early.cseq;
    let bytes = early.request_with(
        &Method::Prack,
        early.cseq,
        &cx.hostport(early.remote),
        &[("RAck", &rack)],
        None,
    );
    cx.send(bytes, early.remote);
}
