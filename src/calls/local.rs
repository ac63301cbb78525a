//! Calls the PBX answers itself: the test numbers a load tester dials (echo,
//! hang up after N seconds, busy) and feature codes (a short confirmation, then
//! hang up). Each is a UAS dialog with its own media session; the 200 is
//! retransmitted until the ACK (RFC 3261 §13.3.1.4).

use super::cdr::{Disposition, HangupBy};
use super::{answered_pt, lossy, new_cdr, write_cdr, Calls, Cx, Party, Refusal, Timer, ALLOW};
use crate::media::{prompt::Prompt, MediaSession};
use crate::presence::{DialogState, Direction};
use crate::routing::dialplan::TestNumber;
use crate::sip::message::{build::random_tag, Builder, Message, Method};
use crate::sip::sdp::{self, Origin};
use crate::sip::transaction::{reply_remote, TxId};
use crate::sip::{CallId, Dialog, Remote, StatusCode};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a local call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Test(TestNumber),
    /// A feature code was dialled: a short confirmation, then hang up.
    Confirmation,
}

/// Where a local call is in its life; each phase holds its own deadlines.
#[derive(Debug)]
enum Phase {
    /// 200 sent, waiting for the ACK.
    Answered(super::Answering),
    /// ACK received; hung up at `hang_up` for the kinds that do.
    Confirmed { hang_up: Option<Instant> },
}

/// A call answered by the PBX itself.
#[derive(Debug)]
pub(super) struct LocalCall {
    kind: Kind,
    phase: Phase,
    /// Our tag (the To tag of the dialog).
    local_tag: String,
    dialog: Dialog,
    /// The `o=` of our last SDP answer.
    origin: Origin,
    cdr: super::cdr::Cdr,
    /// The media session; dropping it frees the ports.
    media: Box<dyn MediaSession>,
    /// The caller's dialog in the presence map, if the caller is an extension.
    party: Option<Party>,
}

impl LocalCall {
    fn due(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Answered(ok) => Some(ok.due()),
            Phase::Confirmed { hang_up } => *hang_up,
        }
    }
}

/// The confirmation a feature code plays (synthesised once).
fn confirmation() -> Arc<Prompt> {
    built_in!(Prompt::confirm)
}

impl Calls {
    /// Everything a local call needs before it is answered: its media session
    /// and our SDP answer; or why it is refused.
    fn prepare_local(
        cx: &Cx<'_>,
        req: &Message,
        remote: Remote,
        kind: Kind,
        call_id: &CallId,
        origin: Origin,
    ) -> Result<(Box<dyn MediaSession>, Bytes), Refusal> {
        if kind == Kind::Test(TestNumber::Busy) {
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
            Refusal::failed(StatusCode::NOT_ACCEPTABLE_HERE)
        })?;
        let media = cx.env.media.as_ref().ok_or(Refusal::NO_MEDIA)?;
        let ip = cx.media_ip(remote);
        let session = match kind {
            Kind::Confirmation => {
                let pt = sdp::local_answer(&offer, ip, 0, origin).map_or(0, |a| answered_pt(&a));
                let peer = super::bridge::peer_of(&offer, remote.addr);
                media.player(call_id, confirmation(), pt, peer)
            }
            Kind::Test(_) => media.echo(call_id),
        }
        .map_err(|e| {
            tracing::warn!("no media for a local call: {e}");
            Refusal::NO_MEDIA
        })?;
        let body = sdp::local_answer(&offer, ip, session.port(), origin)
            .ok_or(Refusal::failed(StatusCode::NOT_ACCEPTABLE_HERE))?;
        Ok((session, body))
    }

    /// A new INVITE the PBX answers itself.
    pub(super) fn invite_local(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        call_id: CallId,
        kind: Kind,
    ) {
        let callee = req
            .request_uri()
            .and_then(|u| u.user)
            .map(lossy)
            .unwrap_or_default();
        let mut cdr = new_cdr(
            cx,
            &call_id,
            &super::party_number(req.from_header()),
            &callee,
        );
        let origin = Origin::new(cdr.id);
        let (media, body) = match Self::prepare_local(cx, req, remote, kind, &call_id, origin) {
            Ok(prepared) => prepared,
            Err(r) => return super::refuse(cx, tx, req, remote, None, cdr, r),
        };
        let local_tag = random_tag();
        let mut b = Builder::response(req, remote.addr, 200, "OK", Some(local_tag.as_bytes()));
        b.header("Server", crate::sip::message::build::PRODUCT)
            .header(
                "Contact",
                format!(
                    "<sip:{callee}@{};transport={}>",
                    cx.hostport(remote),
                    remote.transport.as_str().to_ascii_lowercase()
                ),
            )
            .header("Allow", ALLOW)
            .header("Supported", "");
        let ok = b.finish_with_body(Some("application/sdp"), &body);
        let dialog = crate::sip::message::parse(ok.clone(), &Default::default())
            .ok()
            .and_then(|okm| Dialog::from_uas(req, &okm, remote));
        match kind {
            // A feature code's change is on disk before the tone says so.
            Kind::Confirmation => cx.respond_durable(tx, ok.clone()),
            Kind::Test(_) => cx.respond(tx, ok.clone()),
        }
        let Some(dialog) = dialog else { return };
        cdr.answer_ms = Some(cx.wall.0);
        let presence = &cx.env.presence;
        let party = super::start_party(
            presence,
            &cdr.caller,
            &call_id,
            Direction::Initiator,
            &callee,
            cx.wall,
        );
        if let Some((ext, id)) = &party {
            let _ = presence.dialog_state(ext, *id, DialogState::Confirmed, cx.wall);
        }
        let call = LocalCall {
            party,
            kind,
            phase: Phase::Answered(super::Answering::new(cx, ok, reply_remote(req, remote))),
            local_tag,
            dialog,
            origin,
            cdr,
            media,
        };
        Self::started(cx);
        self.arm_local(cx, &call_id, &call);
        self.local.insert(call_id, call);
    }

    fn arm_local(&self, cx: &mut Cx<'_>, call_id: &CallId, call: &LocalCall) {
        if let Some(at) = call.due() {
            cx.timer(at, Timer::Local(call_id.clone()));
        }
    }

    /// A local call's timer: retransmit the 200 (or give up on the ACK), or hang up.
    pub(super) fn local_timer(&mut self, cx: &mut Cx<'_>, call_id: &CallId, at: Instant) {
        let Some(call) = self.local.get_mut(call_id) else {
            return;
        };
        if call.due() != Some(at) {
            return; // re-armed since
        }
        match &mut call.phase {
            Phase::Answered(ok) => {
                if ok.again(cx) {
                    let key = call_id.clone();
                    if let Some(call) = self.local.get(call_id) {
                        self.arm_local(cx, &key, call);
                    }
                    return;
                }
                // No ACK for 64*T1: confirm and end the session (§13.3.1.4).
                tracing::info!(%call_id, "no ACK for our 200; hanging up");
                self.hang_up_local(cx, call_id, HangupBy::System);
            }
            Phase::Confirmed { .. } => self.hang_up_local(cx, call_id, HangupBy::Callee),
        }
    }

    /// The ACK of our 200.
    pub(super) fn local_ack(&mut self, cx: &mut Cx<'_>, call_id: &CallId) {
        let Some(call) = self.local.get_mut(call_id) else {
            return;
        };
        if !matches!(call.phase, Phase::Answered { .. }) {
            return;
        }
        let after = match call.kind {
            Kind::Test(TestNumber::Hangup) => Some(Duration::from_secs(
                cx.env.calls.test_numbers.hangup_after_secs,
            )),
            Kind::Confirmation => Some(confirmation().duration() + Duration::from_millis(300)),
            Kind::Test(_) => None,
        };
        call.phase = Phase::Confirmed {
            hang_up: after.map(|d| cx.now + d),
        };
        if let Some(call) = self.local.get(call_id) {
            self.arm_local(cx, call_id, call);
        }
    }

    /// We end a local call: BYE to the caller, CDR written.
    pub(super) fn hang_up_local(&mut self, cx: &mut Cx<'_>, call_id: &CallId, by: HangupBy) {
        let Some(mut call) = self.take_local(cx, call_id) else {
            return;
        };
        let hostport = cx.hostport(call.dialog.remote);
        let bye = call.dialog.next_request(&Method::Bye, &hostport, None);
        cx.send(bye, call.dialog.remote);
        write_cdr(cx, call.cdr, Disposition::Answered, by);
    }

    /// A request inside a local call's dialog.
    pub(super) fn local_in_dialog(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        call_id: &CallId,
    ) {
        match req.method() {
            Some(Method::Bye) => {
                let Some(call) = self.take_local(cx, call_id) else {
                    return;
                };
                let answer = cx.response(req, remote, StatusCode::OK).finish();
                write_cdr(cx, call.cdr, Disposition::Answered, HangupBy::Caller);
                cx.respond_durable(tx, answer);
            }
            Some(Method::Invite) => {
                // A re-INVITE (hold, resume, refresh): our media again, in the
                // same SDP session with the next version (RFC 3264 §8).
                let Some(call) = self.local.get_mut(call_id) else {
                    return;
                };
                let ip = cx.media_ip(remote);
                let origin = call.origin.next();
                let body = sdp::parse(req.body())
                    .ok()
                    .and_then(|offer| sdp::local_answer(&offer, ip, call.media.port(), origin));
                match body {
                    Some(body) => {
                        call.origin = origin;
                        let mut b = cx.response(req, remote, StatusCode::OK);
                        b.header("Contact", format!("<sip:{}>", cx.hostport(remote)));
                        cx.respond(tx, b.finish_with_body(Some("application/sdp"), &body));
                    }
                    None => cx.reply(tx, req, remote, StatusCode::NOT_ACCEPTABLE_HERE),
                }
            }
            _ => cx.reply(tx, req, remote, StatusCode::OK),
        }
    }

    fn take_local(&mut self, cx: &mut Cx<'_>, call_id: &CallId) -> Option<LocalCall> {
        let mut call = self.local.remove(call_id)?;
        Self::ended(cx);
        if let Some((ext, id)) = call.party.take() {
            let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
        }
        Some(call)
    }

    /// Whether an in-dialog request belongs to a call we answered ourselves.
    pub(super) fn is_local_dialog(&self, call_id: &CallId, req: &Message) -> bool {
        self.local
            .get(call_id)
            .is_some_and(|c| super::to_tag_is(req, &c.local_tag))
    }
}
