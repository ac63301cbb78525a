//! The dialer, agent first: the desk's side of attempts, for campaigns and
//! for queues whose call-backs are served automatically.
//!
//! - It looks at every running campaign on each presence change and each
//!   second; when `Campaigns::decide` says so, it takes one due contact per
//!   idle agent of the campaign's group (on disk before the agent's phone
//!   rings) and asks the PBX to place the attempt, which reserves the agent.
//! - For an automatic queue it claims the oldest open call-back of the queue
//!   for a free agent of its group (durably, as an agent's claim would be),
//!   unless a caller who came earlier still waits in the queue, and places
//!   the attempt the same way. Reached: the call-back is closed as succeeded;
//!   busy, no answer, failed: tried again after 5 minutes, closed as failed
//!   after the third try; skipped: left in the box for a person.
//! - The attempt's call reports its steps back. When the agent answers, the
//!   customer's record goes to that agent's own event stream and nowhere
//!   else, after its push is in the audit log on disk; the agent confirms or
//!   skips over `/api/v1/attempt/{confirm,skip}`.
//! - When the attempt ends, the event that carried the record is erased from
//!   the log, the desktop is told to erase it, the push's audit entry gets
//!   its end, and the outcome is written (with its retry).
//!
//! What it owns: the attempts in progress (whose agent, which contact,
//! which call, what was pushed), the automatic call-backs' tries (in
//! memory: they start over after a restart) and the audit log of campaign
//! pushes, which supervisors export per campaign.

use super::api::{ApiError, Caller, ErrorBody};
use super::events::{Audience, Body, Seq};
use super::session::Role;
use super::{lock, Desk};
use crate::callbacks::CallbackId;
use crate::calls::AttemptCall;
use crate::campaigns::{
    AttemptKey, CampaignId, ContactId, Decision, Outcome, Report, Settings, State, Step,
};
use crate::media::prompt::Prompt;
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

/// A queue whose call-backs the dialer serves: its group's agents call
/// through `trunk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoCallbacks {
    pub queue: String,
    pub group: String,
    pub trunk: String,
}

/// An automatic call-back not reached is tried again this much later…
const CALLBACK_RETRY: Duration = Duration::from_secs(300);
/// …and closed as failed after this many tries.
const CALLBACK_TRIES: u32 = 3;
/// The agent's time to confirm a call-back, and the customer's to answer.
const CALLBACK_CONFIRM_SECS: u32 = 30;
const CALLBACK_RING: Duration = Duration::from_secs(30);

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
    /// What the agent is shown it is ("Campaign spring").
    title: String,
    customer: Customer,
    confirm_secs: u32,
    call: Option<CallId>,
    /// The record's event (and a campaign's audit entry), once pushed.
    pushed: Option<(Seq, Option<Audit>)>,
}

/// Where an automatic call-back stands: its tries, and when it may be
/// tried again (never: left to people).
#[derive(Debug, Clone, Copy)]
struct Tried {
    count: u32,
    again: Option<Instant>,
}

/// The attempts in progress, when each agent was last given one, the
/// automatic call-backs' tries, and the campaigns' farewells as read.
#[derive(Debug, Default)]
pub struct Dialer {
    live: HashMap<AttemptKey, Live>,
    offered: HashMap<String, Instant>,
    callbacks: HashMap<CallbackId, Tried>,
    farewells: HashMap<CampaignId, Option<Arc<Prompt>>>,
}

/// Where campaign `id`'s farewell is kept under `dir`.
pub fn farewell_path(dir: &std::path::Path, id: CampaignId) -> std::path::PathBuf {
    dir.join(format!("farewell-{}.wav", id.0))
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
        for q in &self.config.auto_callbacks {
            while self.serve_callback(q).await {}
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
        let call = AttemptCall {
            key: AttemptKey::Contact {
                campaign: id,
                contact: contact.id,
            },
            agent,
            shown: settings.name.clone(),
            number: contact.number.clone(),
            trunk,
            caller_id: settings.caller_id.clone(),
            confirm: Duration::from_secs(settings.confirm_secs.into()),
            dial_on_timeout: settings.on_confirm_timeout == crate::campaigns::OnTimeout::Dial,
            ring: Duration::from_secs(settings.ring_secs.into()),
            farewell: self.farewell(id),
        };
        let customer = Customer {
            name: contact.name,
            number: contact.number,
            time_zone: contact.time_zone,
            fields: contact.fields,
        };
        let title = format!("Campaign {}", settings.name);
        self.place(call, title, customer, settings.confirm_secs)
            .await
    }

    /// Campaign `id`'s own farewell, if it has one (read once).
    fn farewell(&self, id: CampaignId) -> Option<Arc<Prompt>> {
        if let Some(known) = lock(&self.dialer).farewells.get(&id) {
            return known.clone();
        }
        let path = farewell_path(&self.config.voice_dir, id);
        let read = match std::fs::read(&path) {
            Ok(bytes) => Prompt::from_wav(&bytes)
                .inspect_err(|e| tracing::error!("{}: {e}", path.display()))
                .ok()
                .map(Arc::new),
            Err(_) => None,
        };
        lock(&self.dialer).farewells.insert(id, read.clone());
        read
    }

    /// Campaign `id`'s farewell is now `prompt`.
    pub(super) fn set_farewell(&self, id: CampaignId, prompt: Arc<Prompt>) {
        lock(&self.dialer).farewells.insert(id, Some(prompt));
    }

    /// Asks the PBX to place attempt `call` for `customer`; `false` when it
    /// could not (the contact or call-back goes back at once).
    async fn place(
        &self,
        call: AttemptCall,
        title: String,
        customer: Customer,
        confirm_secs: u32,
    ) -> bool {
        let (key, agent) = (call.key, call.agent.clone());
        {
            let mut dialer = lock(&self.dialer);
            dialer.offered.insert(agent.clone(), Instant::now());
            let live = Live {
                agent: agent.clone(),
                title,
                customer,
                confirm_secs,
                call: None,
                pushed: None,
            };
            dialer.live.insert(key, live);
        }
        match self.commands.attempt(call).await {
            Ok(call) => {
                if let Some(l) = lock(&self.dialer).live.get_mut(&key) {
                    l.call = Some(call);
                }
                true
            }
            Err(e) => {
                // A number nobody may dial is done with; otherwise the agent
                // was taken meanwhile (or is gone): the contact or call-back
                // goes back at once, no try counted.
                tracing::info!(attempt = ?key, %agent, "attempt not placed: {e}");
                lock(&self.dialer).live.remove(&key);
                let outcome = match e {
                    crate::calls::OriginateError::Blocked(_) => Outcome::DoNotCall,
                    _ => Outcome::AgentTimeout,
                };
                self.record_outcome(key, &agent, outcome).await;
                false
            }
        }
    }

    /// Claims queue `q`'s next call-back for a free agent and places the
    /// attempt; `false` when nothing (more) starts now.
    async fn serve_callback(&self, q: &AutoCallbacks) -> bool {
        let Some(trunk) = self.commands.trunk(&q.trunk) else {
            return false;
        };
        if !self.conditions(&q.group, &q.trunk).trunk_up {
            return false;
        }
        let Some(agent) = self.idle_agents(&q.group, 1).pop() else {
            return false;
        };
        let Some(id) = self.next_callback(q) else {
            return false;
        };
        let now = self.wall(Instant::now());
        let claimed = lock(&self.callbacks).claim(now, id, &agent);
        let Ok(c) = claimed else { return false };
        if let Err(e) = self.store_callback(&c).await {
            tracing::error!(
                id = id.0,
                "an automatic call-back could not be claimed (store): {e}"
            );
            let _ = lock(&self.callbacks).release(id, &agent, true);
            return false;
        }
        tracing::info!(id = id.0, %agent, queue = %q.queue, "call-back claimed for an automatic call");
        let call = AttemptCall {
            key: AttemptKey::Callback(id),
            agent,
            shown: format!("call-back {}", q.queue),
            number: c.customer.clone(),
            trunk,
            caller_id: String::new(),
            confirm: Duration::from_secs(CALLBACK_CONFIRM_SECS.into()),
            dial_on_timeout: false,
            ring: CALLBACK_RING,
            farewell: None,
        };
        let customer = Customer {
            name: c.name,
            number: c.customer,
            time_zone: None,
            fields: BTreeMap::from([("message".to_string(), c.message)]),
        };
        let title = format!("Call-back from queue {}", q.queue);
        self.place(call, title, customer, CALLBACK_CONFIRM_SECS)
            .await
    }

    /// Queue `q`'s oldest open call-back that may be tried now, if no caller
    /// who came before it still waits in the queue. Only numbers a trunk
    /// can dial (E.164) are served: others stay in the box for people.
    fn next_callback(&self, q: &AutoCallbacks) -> Option<CallbackId> {
        let now = Instant::now();
        let wall = self.wall(now).0;
        let earliest_caller = self
            .queue_stats()
            .into_iter()
            .find(|s| s.number == q.queue && s.waiting > 0)
            .map(|s| wall.saturating_sub(s.longest_wait_ms));
        let dialer = lock(&self.dialer);
        let next = lock(&self.callbacks)
            .open()
            .filter(|c| c.queue.as_deref() == Some(q.queue.as_str()))
            .filter(|c| c.status == crate::callbacks::Status::Open && c.customer.starts_with('+'))
            .filter(|c| !dialer.live.contains_key(&AttemptKey::Callback(c.id)))
            .find(|c| match dialer.callbacks.get(&c.id) {
                Some(Tried { again: None, .. }) => false,
                Some(Tried {
                    again: Some(at), ..
                }) => *at <= now,
                None => true,
            })
            .map(|c| (c.id, c.created_ms));
        let (id, created_ms) = next?;
        // In turn with live callers, by arrival time.
        match earliest_caller {
            Some(arrived) if arrived < created_ms => None,
            _ => Some(id),
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
        if r.step == Step::Abandoned {
            // Reported after the attempt ended: counted, nothing to show.
            if let AttemptKey::Contact { campaign, .. } = r.key {
                lock(&self.campaigns).abandoned(campaign);
                self.announce(campaign);
            }
            return;
        }
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
            Step::Abandoned => {}
            Step::Ended(outcome) => self.attempt_ended(r.key, call_id, outcome).await,
        }
    }

    /// The agent of attempt `key` answered: a campaign's push goes into the
    /// audit log (on disk), then the record to the agent's stream. If the
    /// log cannot be written, the record is not shown and the attempt skipped.
    async fn push_record(&self, key: AttemptKey, call: &CallId) {
        let audit = match key {
            AttemptKey::Contact { campaign, contact } => {
                let id = self.next_ids(1).await[0];
                let now = self.wall(Instant::now());
                let Some(audit) = lock(&self.dialer).live.get(&key).map(|l| Audit {
                    id,
                    campaign,
                    contact,
                    number: l.customer.number.clone(),
                    agent: l.agent.clone(),
                    shown_ms: now.0,
                    erased_ms: None,
                    outcome: None,
                }) else {
                    return;
                };
                let write = vec![crate::store::Write::put(audit.clone())];
                if let Err(e) = self.config.writer.commit(write).await {
                    tracing::error!(
                        campaign = campaign.0,
                        "the push could not be audit-logged: {e}; skipped"
                    );
                    self.commands.confirm(call, false).await;
                    return;
                }
                Some(audit)
            }
            AttemptKey::Callback(_) => None,
        };
        let mut dialer = lock(&self.dialer);
        let Some(l) = dialer.live.get_mut(&key) else {
            return; // ended meanwhile: nothing is shown
        };
        let body = Body::Attempt {
            call_id: call.to_string(),
            title: l.title.clone(),
            customer: l.customer.clone(),
            confirm_secs: l.confirm_secs,
        };
        let seq = self.publish(Audience::Agent(l.agent.clone()), body);
        l.pushed = Some((seq, audit));
        tracing::info!(attempt = ?key, agent = %l.agent, "record shown to the agent");
    }

    /// Attempt `key` is over: the record erased (log and desktop), the
    /// audit entry closed, the outcome written.
    async fn attempt_ended(&self, key: AttemptKey, call_id: String, outcome: Outcome) {
        let Some(l) = lock(&self.dialer).live.remove(&key) else {
            return;
        };
        let erased = Body::AttemptErased { call_id, outcome };
        if let Some((seq, audit)) = l.pushed {
            lock(&self.log).redact(seq, erased.clone());
            self.publish(Audience::Agent(l.agent.clone()), erased);
            if let Some(mut audit) = audit {
                audit.erased_ms = Some(self.wall(Instant::now()).0);
                audit.outcome = Some(outcome);
                let write = vec![crate::store::Write::put(audit)];
                if let Err(e) = self.config.writer.commit(write).await {
                    tracing::error!(attempt = ?key, "the audit log's erase could not be stored: {e}");
                }
            }
        }
        self.record_outcome(key, &l.agent, outcome).await;
    }

    /// Writes attempt `key`'s outcome: a campaign contact's (with its retry,
    /// supervisors told), or what becomes of `agent`'s call-back.
    async fn record_outcome(&self, key: AttemptKey, agent: &str, outcome: Outcome) {
        let now = self.wall(Instant::now());
        match key {
            AttemptKey::Contact { campaign, contact } => {
                let finished = lock(&self.campaigns).finish(now, campaign, contact, outcome);
                match finished {
                    Ok(contact) => {
                        let write = vec![crate::store::Write::put(contact)];
                        if let Err(e) = self.config.writer.commit(write).await {
                            tracing::error!(
                                campaign = campaign.0,
                                "an outcome could not be stored: {e}"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(campaign = campaign.0, "outcome not recorded: {e}"),
                }
                self.announce(campaign);
            }
            AttemptKey::Callback(id) => self.callback_outcome(id, agent, outcome).await,
        }
        self.dial_now.notify_one();
    }

    /// An automatic call-back's attempt ended with `outcome`: closed,
    /// released for another try, or left to people.
    async fn callback_outcome(&self, id: CallbackId, agent: &str, outcome: Outcome) {
        use crate::callbacks::Outcome::{Failed, Succeeded};
        let now = self.wall(Instant::now());
        let tried = {
            let mut dialer = lock(&self.dialer);
            let t = dialer.callbacks.entry(id).or_insert(Tried {
                count: 0,
                again: None,
            });
            match outcome {
                Outcome::Busy | Outcome::NoAnswer | Outcome::Failed | Outcome::Interrupted => {
                    t.count += 1;
                    t.again = Some(Instant::now() + CALLBACK_RETRY);
                }
                Outcome::Skipped | Outcome::DoNotCall => t.again = None,
                Outcome::AgentTimeout => t.again = Some(Instant::now()),
                Outcome::Connected | Outcome::AgentDropped => {}
            }
            *t
        };
        let changed = {
            let mut b = lock(&self.callbacks);
            match outcome {
                Outcome::Connected | Outcome::AgentDropped => {
                    b.close(now, id, agent, Succeeded, "called back automatically")
                }
                _ if tried.count >= CALLBACK_TRIES => b.close(
                    now,
                    id,
                    agent,
                    Failed,
                    "not reached in three automatic tries",
                ),
                _ => b.release(id, agent, true),
            }
        };
        match changed {
            Ok(c) => {
                tracing::info!(id = id.0, %agent, ?outcome, status = ?c.status, "automatic call-back attempt over");
                if let Err(e) = self.store_callback(&c).await {
                    tracing::error!(id = id.0, "storing call-back: {e}");
                }
            }
            Err(e) => tracing::warn!(id = id.0, "automatic call-back not updated: {e}"),
        }
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
