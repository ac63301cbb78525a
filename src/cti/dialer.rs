//! The campaign dialer, agent first: the desk's side of attempts.
//!
//! - It looks at every running campaign on each presence change and each
//!   second; when `Campaigns::decide` says so, it takes one due contact per
//!   idle agent of the campaign's group (on disk before the agent's phone
//!   rings) and asks the PBX to place the attempt, which reserves the agent.
//! - The attempt's call reports its steps back. When the agent answers, the
//!   customer's record goes to that agent's own event stream and nowhere
//!   else, after its push is in the audit log on disk; the agent confirms or
//!   skips over `/api/v1/attempt/{confirm,skip}`.
//! - When the attempt ends, the event that carried the record is erased from
//!   the log, the desktop is told to erase it, the push's audit entry gets
//!   its end, and the outcome is written (with its retry).
//!
//! What it owns: the attempts in progress (whose agent, which contact,
//! which call, what was pushed) and the audit log of pushes, which
//! supervisors export per campaign.

use super::api::{ApiError, Caller, ErrorBody};
use super::events::{Audience, Body, Seq};
use super::session::Role;
use super::{lock, Desk};
use crate::calls::AttemptCall;
use crate::campaigns::{
    AttemptKey, CampaignId, Contact, ContactId, Decision, Outcome, Report, Settings, State, Step,
};
use crate::presence::State as Presence;
use crate::sip::CallId;
use crate::store::Record;
use axum::extract::{Path, State as Shared};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<Desk>> {
    Router::new()
        .route("/api/v1/attempt/confirm", post(confirm))
        .route("/api/v1/attempt/skip", post(skip))
        .route("/api/v1/campaigns/{id}/audit", get(audit))
}

/// The customer an agent is shown: one record, on their own stream only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Customer {
    pub name: String,
    pub number: String,
    pub time_zone: Option<String>,
    pub fields: BTreeMap<String, String>,
}

/// Where an attempt whose record an agent holds stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptPhase {
    Dialling,
    Connected,
}

/// One push of a customer's record to an agent, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Audit {
    pub id: u64,
    pub campaign: CampaignId,
    pub contact: ContactId,
    pub number: String,
    pub agent: String,
    /// When the record reached the agent's stream.
    pub shown_ms: u64,
    /// When it was erased (absent: the PBX stopped first).
    pub erased_ms: Option<u64>,
    pub outcome: Option<Outcome>,
}

impl Record for Audit {
    const TREE: &'static str = "campaign_audit.v1";
    /// By campaign, then in the order of the pushes.
    fn key(&self) -> Vec<u8> {
        let mut k = self.campaign.0.to_be_bytes().to_vec();
        k.extend_from_slice(&self.id.to_be_bytes());
        k
    }
}

/// An attempt in progress.
#[derive(Debug)]
struct Live {
    agent: String,
    contact: Contact,
    campaign: String,
    confirm_secs: u32,
    call: Option<CallId>,
    /// The record's event and its audit entry, once pushed.
    pushed: Option<(Seq, Audit)>,
}

/// The attempts in progress, and when each agent was last given one.
#[derive(Debug, Default)]
pub struct Dialer {
    live: HashMap<AttemptKey, Live>,
    offered: HashMap<String, Instant>,
}

impl Dialer {
    fn holds(&self, agent: &str) -> bool {
        self.live.values().any(|l| l.agent == agent)
    }

    /// Agent `agent`'s attempt whose record they hold.
    fn shown_to(&self, agent: &str) -> Option<CallId> {
        self.live
            .values()
            .find(|l| l.agent == agent && l.pushed.is_some())
            .and_then(|l| l.call.clone())
    }
}

impl Desk {
    /// Looks for attempts to start on every presence change and every
    /// second, until the PBX stops.
    pub async fn dialer(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.dial_now.notified() => {}
            }
            self.dial().await;
        }
    }

    /// Starts what every running campaign may start now.
    async fn dial(&self) {
        let running: Vec<(CampaignId, Settings)> = lock(&self.campaigns)
            .all()
            .filter(|c| c.state == State::Running)
            .map(|c| (c.id, c.settings.clone()))
            .collect();
        for (id, settings) in running {
            let view = self.conditions(&settings.group, &settings.trunk);
            let now = self.wall(Instant::now());
            let Decision::Start(n) = lock(&self.campaigns).decide(id, view, now) else {
                continue;
            };
            let Some(trunk) = self.commands.trunk(&settings.trunk) else {
                continue;
            };
            for agent in self.idle_agents(&settings.group, n) {
                if !self.start_attempt(id, &settings, trunk, agent).await {
                    break;
                }
            }
        }
    }

    /// Up to `n` available agents of `group` without an attempt, the one
    /// given an attempt longest ago first.
    fn idle_agents(&self, group: &str, n: usize) -> Vec<String> {
        let dialer = lock(&self.dialer);
        let mut idle: Vec<(Option<Instant>, String)> = self
            .members
            .get(group)
            .into_iter()
            .flatten()
            .filter(|m| matches!(self.presence.state(m), Some((Presence::Available, _))))
            .filter(|m| !dialer.holds(m))
            .map(|m| (dialer.offered.get(m).copied(), m.clone()))
            .collect();
        idle.sort();
        idle.into_iter().take(n).map(|(_, m)| m).collect()
    }

    /// Takes campaign `id`'s next contact for `agent` (durably) and places
    /// the attempt; `false` when nothing more should start now.
    async fn start_attempt(
        &self,
        id: CampaignId,
        settings: &Settings,
        trunk: crate::outside::TrunkId,
        agent: String,
    ) -> bool {
        let now = self.wall(Instant::now());
        let Ok((taken, changed)) = lock(&self.campaigns).take(id, &agent, now) else {
            return false;
        };
        let writes = changed.into_iter().map(crate::store::Write::put).collect();
        let stored = self.config.writer.commit(writes).await;
        let Some(contact) = taken else {
            return false;
        };
        if let Err(e) = stored {
            tracing::error!(campaign = id.0, "a contact could not be taken (store): {e}");
            lock(&self.campaigns).untake(&contact, now);
            return false;
        }
        let key = AttemptKey {
            campaign: id,
            contact: contact.id,
        };
        let call = AttemptCall {
            key,
            agent: agent.clone(),
            shown: settings.name.clone(),
            number: contact.number.clone(),
            trunk,
            caller_id: settings.caller_id.clone(),
            confirm: Duration::from_secs(settings.confirm_secs.into()),
            dial_on_timeout: settings.on_confirm_timeout == crate::campaigns::OnTimeout::Dial,
            ring: Duration::from_secs(settings.ring_secs.into()),
        };
        {
            let mut dialer = lock(&self.dialer);
            dialer.offered.insert(agent.clone(), Instant::now());
            dialer.live.insert(
                key,
                Live {
                    agent: agent.clone(),
                    contact,
                    campaign: settings.name.clone(),
                    confirm_secs: settings.confirm_secs,
                    call: None,
                    pushed: None,
                },
            );
        }
        match self.commands.attempt(call).await {
            Ok(call) => {
                if let Some(l) = lock(&self.dialer).live.get_mut(&key) {
                    l.call = Some(call);
                }
                true
            }
            Err(e) => {
                // The agent was taken meanwhile (or is gone): the contact
                // goes back at once, no try counted.
                tracing::info!(campaign = id.0, %agent, "attempt not placed: {e}");
                lock(&self.dialer).live.remove(&key);
                self.record_outcome(key, Outcome::AgentTimeout).await;
                false
            }
        }
    }

    /// Follows what attempts' calls report, until the PBX stops.
    pub async fn follow_attempts(
        self: Arc<Self>,
        mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    ) {
        while let Some(r) = reports.recv().await {
            self.attempt_step(r).await;
        }
    }

    async fn attempt_step(&self, r: Report) {
        let call_id = r.call.to_string();
        let agent = match lock(&self.dialer).live.get_mut(&r.key) {
            Some(l) => {
                l.call.get_or_insert_with(|| r.call.clone());
                l.agent.clone()
            }
            None => return,
        };
        let progress = |phase| Body::AttemptProgress {
            call_id: call_id.clone(),
            phase,
        };
        match r.step {
            Step::AgentAnswered => self.push_record(r.key, &r.call).await,
            Step::CustomerDialled => {
                self.publish(Audience::Agent(agent), progress(AttemptPhase::Dialling));
            }
            Step::CustomerAnswered => {
                self.publish(Audience::Agent(agent), progress(AttemptPhase::Connected));
            }
            Step::Abandoned => lock(&self.campaigns).abandoned(r.key.campaign),
            Step::Ended(outcome) => self.attempt_ended(r.key, call_id, outcome).await,
        }
    }

    /// The agent of attempt `key` answered: the push goes into the audit
    /// log (on disk), then the record to the agent's stream. If the log
    /// cannot be written, the record is not shown and the attempt skipped.
    async fn push_record(&self, key: AttemptKey, call: &CallId) {
        let id = self.next_ids(1).await[0];
        let now = self.wall(Instant::now());
        let Some((agent, audit)) = lock(&self.dialer).live.get(&key).map(|l| {
            let audit = Audit {
                id,
                campaign: key.campaign,
                contact: key.contact,
                number: l.contact.number.clone(),
                agent: l.agent.clone(),
                shown_ms: now.0,
                erased_ms: None,
                outcome: None,
            };
            (l.agent.clone(), audit)
        }) else {
            return;
        };
        if let Err(e) = self
            .config
            .writer
            .commit(vec![crate::store::Write::put(audit.clone())])
            .await
        {
            tracing::error!(
                campaign = key.campaign.0,
                "the push could not be audit-logged: {e}; skipped"
            );
            self.commands.confirm(call, false).await;
            return;
        }
        let mut dialer = lock(&self.dialer);
        let Some(l) = dialer.live.get_mut(&key) else {
            return; // ended meanwhile: nothing is shown
        };
        let body = Body::Attempt {
            call_id: call.to_string(),
            campaign: l.campaign.clone(),
            customer: Customer {
                name: l.contact.name.clone(),
                number: l.contact.number.clone(),
                time_zone: l.contact.time_zone.clone(),
                fields: l.contact.fields.clone(),
            },
            confirm_secs: l.confirm_secs,
        };
        let seq = self.publish(Audience::Agent(agent.clone()), body);
        l.pushed = Some((seq, audit));
        tracing::info!(campaign = key.campaign.0, contact = key.contact.0, %agent, "record shown to the agent");
    }

    /// Attempt `key` is over: the record erased (log and desktop), the
    /// audit entry closed, the outcome written.
    async fn attempt_ended(&self, key: AttemptKey, call_id: String, outcome: Outcome) {
        let Some(l) = lock(&self.dialer).live.remove(&key) else {
            return;
        };
        let erased = Body::AttemptErased { call_id, outcome };
        if let Some((seq, mut audit)) = l.pushed {
            lock(&self.log).redact(seq, erased.clone());
            self.publish(Audience::Agent(l.agent.clone()), erased);
            audit.erased_ms = Some(self.wall(Instant::now()).0);
            audit.outcome = Some(outcome);
            let write = vec![crate::store::Write::put(audit)];
            if let Err(e) = self.config.writer.commit(write).await {
                tracing::error!(
                    campaign = key.campaign.0,
                    "the audit log's erase could not be stored: {e}"
                );
            }
        }
        self.record_outcome(key, outcome).await;
    }

    /// Writes attempt `key`'s outcome (and its retry) and tells supervisors.
    async fn record_outcome(&self, key: AttemptKey, outcome: Outcome) {
        let now = self.wall(Instant::now());
        let finished = lock(&self.campaigns).finish(now, key.campaign, key.contact, outcome);
        match finished {
            Ok(contact) => {
                let write = vec![crate::store::Write::put(contact)];
                if let Err(e) = self.config.writer.commit(write).await {
                    tracing::error!(
                        campaign = key.campaign.0,
                        "an outcome could not be stored: {e}"
                    );
                }
            }
            Err(e) => tracing::warn!(campaign = key.campaign.0, "outcome not recorded: {e}"),
        }
        self.announce(key.campaign);
        self.dial_now.notify_one();
    }
}

/// The agent confirms the customer on their screen: it is dialled.
#[utoipa::path(post, path = "/api/v1/attempt/confirm",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn confirm(
    Shared(desk): Shared<Arc<Desk>>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    decide(&desk, &caller, true).await
}

/// The agent skips the customer on their screen: it is not dialled.
#[utoipa::path(post, path = "/api/v1/attempt/skip",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn skip(Shared(desk): Shared<Arc<Desk>>, caller: Caller) -> Result<StatusCode, ApiError> {
    decide(&desk, &caller, false).await
}

async fn decide(desk: &Desk, caller: &Caller, dial: bool) -> Result<StatusCode, ApiError> {
    let agent = &caller.session.extension;
    let not_waiting = || ApiError::Conflict("no customer is waiting for your confirmation".into());
    let call = lock(&desk.dialer).shown_to(agent).ok_or_else(not_waiting)?;
    match desk.commands.confirm(&call, dial).await {
        true => {
            tracing::info!(%agent, %call, dial, "campaign attempt decided by the agent");
            Ok(StatusCode::NO_CONTENT)
        }
        false => Err(not_waiting()),
    }
}

/// Every push of campaign `id`'s records: which agent saw which customer,
/// when, and until when (supervisors only).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/audit", params(("id" = u64, Path)),
    responses((status = 200, body = Vec<Audit>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn audit(
    Shared(desk): Shared<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<Vec<Audit>>, ApiError> {
    if caller.session.role != Role::Supervisor {
        return Err(ApiError::Forbidden("campaigns are for supervisors".into()));
    }
    if lock(&desk.campaigns).get(CampaignId(id)).is_none() {
        return Err(ApiError::NotFound(format!("no campaign {id}")));
    }
    let pushes = desk
        .store
        .with_prefix::<Audit>(&id.to_be_bytes())
        .map_err(|e| ApiError::Unavailable(format!("reading the audit log: {e}")))?;
    Ok(Json(pushes))
}
