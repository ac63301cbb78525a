//! Campaigns over HTTP, for supervisors only: create one for a group and a
//! trunk, load customer lists into it (CSV; every row's problem named by line
//! and field), start, pause, resume and stop it, watch its progress and why
//! it waits, see each contact's outcome, and keep the do-not-call list.
//! Agents get 403 on every one of these: no API hands an agent a list, a
//! search or anybody's record (the dialer pushes one record to one agent's
//! own event stream). Every change is on disk before the answer.

use super::api::{ApiError, ApiJson, Caller, ErrorBody};
use super::events::{Audience, Body};
use super::session::Role;
use super::{lock, Desk};
use crate::campaigns::import::{self, RowError};
use crate::campaigns::{
    Action, Campaign, CampaignError, CampaignId, Conditions, Contact, ContactId, ContactStatus,
    Decision, Defaults, Idle, Imported, Outcome, Progress, Settings,
};
use crate::presence::State as Presence;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// The largest customer list one upload may be.
const MAX_LIST: usize = 32 * 1024 * 1024;

/// The longest farewell: a minute of 8 kHz 16-bit mono (and its header).
const MAX_FAREWELL: usize = 60 * 16_000 + 1024;

pub fn routes() -> Router<Arc<Desk>> {
    Router::new()
        .route("/api/v1/campaigns", get(list).post(create))
        .route("/api/v1/campaigns/defaults", get(defaults))
        .route("/api/v1/campaigns/{id}", get(one))
        .route(
            "/api/v1/campaigns/{id}/contacts",
            get(contacts)
                .post(load)
                .layer(DefaultBodyLimit::max(MAX_LIST)),
        )
        .route(
            "/api/v1/campaigns/{id}/farewell",
            get(farewell)
                .put(set_farewell)
                .layer(DefaultBodyLimit::max(MAX_FAREWELL)),
        )
        .route("/api/v1/campaigns/{id}/{action}", post(act))
        .route("/api/v1/do-not-call", post(forbid))
}

impl From<CampaignError> for ApiError {
    fn from(e: CampaignError) -> Self {
        match e {
            CampaignError::NotFound(_) | CampaignError::NoContact(_) => {
                ApiError::NotFound(e.to_string())
            }
            CampaignError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            CampaignError::State { .. } | CampaignError::NotInAttempt(_) => {
                ApiError::Conflict(e.to_string())
            }
        }
    }
}

/// 403 unless a supervisor asks.
fn supervisor(caller: &Caller) -> Result<(), ApiError> {
    match caller.session.role {
        Role::Supervisor => Ok(()),
        Role::Agent => Err(ApiError::Forbidden("campaigns are for supervisors".into())),
    }
}

impl Desk {
    /// Group `group` and trunk `trunk` as the presence map, the queues and
    /// the trunk's registration see them now.
    pub(super) fn conditions(&self, group: &str, trunk: &str) -> Conditions {
        let members = self.members.get(group);
        let states: Vec<Presence> = members
            .into_iter()
            .flatten()
            .filter_map(|m| self.presence.state(m).map(|(s, _)| s))
            .collect();
        let waiting = self
            .queue_stats()
            .into_iter()
            .filter(|q| {
                self.config
                    .queue_groups
                    .iter()
                    .any(|(n, g)| *n == q.number && g == group)
            })
            .map(|q| q.waiting)
            .sum();
        let trunk_up = self.commands.trunks().iter().any(|t| {
            t.name == trunk && !matches!(t.registration, Some(crate::trunk::Status::Down { .. }))
        });
        Conditions {
            available: states.iter().filter(|s| **s == Presence::Available).count(),
            logged_in: states.iter().filter(|s| **s != Presence::Offline).count(),
            inbound_waiting: waiting,
            trunk_up,
        }
    }

    /// Campaign `id` with its progress and what it waits for.
    fn overview(&self, id: CampaignId) -> Result<Overview, ApiError> {
        let now = self.wall(Instant::now());
        let (group, trunk) = lock(&self.campaigns)
            .get(id)
            .map(|c| (c.settings.group.clone(), c.settings.trunk.clone()))
            .ok_or(CampaignError::NotFound(id.0))?;
        // The conditions first: no other lock is taken under this one.
        let view = self.conditions(&group, &trunk);
        let mut c = lock(&self.campaigns);
        let campaign = c.get(id).cloned().ok_or(CampaignError::NotFound(id.0))?;
        let waiting = match c.decide(id, view, now) {
            Decision::Start(_) => None,
            Decision::Idle(why) => Some(why),
        };
        let progress = c.progress(id, now).ok_or(CampaignError::NotFound(id.0))?;
        Ok(Overview {
            campaign,
            progress,
            waiting,
        })
    }

    /// Tells the supervisors where campaign `id` stands now.
    pub(super) fn announce(&self, id: CampaignId) {
        let now = self.wall(Instant::now());
        let progress = lock(&self.campaigns).progress(id, now);
        if let Some(progress) = progress {
            self.publish(Audience::Supervisors, Body::Campaign { progress });
        }
    }

    /// Makes `records` durable; if the store refuses, `undo` takes the
    /// change back out of memory, so memory never holds what disk does not.
    async fn commit<R: crate::store::Record>(
        &self,
        records: Vec<R>,
        undo: impl FnOnce(&mut crate::campaigns::Campaigns),
    ) -> Result<(), ApiError> {
        let writes = records.into_iter().map(crate::store::Write::put).collect();
        if let Err(e) = self.config.writer.commit(writes).await {
            undo(&mut lock(&self.campaigns));
            return Err(e.into());
        }
        Ok(())
    }

    pub(super) async fn next_ids(&self, n: usize) -> Vec<u64> {
        let mut ids = self.record_ids.lock().await;
        let now = self.wall(Instant::now());
        (0..n).map(|_| ids.next_id(now)).collect()
    }
}

/// A campaign, its progress, and why it starts no attempt now (absent while
/// it does).
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub campaign: Campaign,
    pub progress: Progress,
    #[schema(value_type = Option<Object>)]
    pub waiting: Option<Idle>,
}

/// Every campaign's progress.
#[utoipa::path(get, path = "/api/v1/campaigns",
    responses((status = 200, body = Vec<Progress>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
) -> Result<Json<Vec<Progress>>, ApiError> {
    supervisor(&caller)?;
    let now = desk.wall(Instant::now());
    let mut c = lock(&desk.campaigns);
    let ids: Vec<CampaignId> = c.all().map(|k| k.id).collect();
    Ok(Json(
        ids.into_iter()
            .filter_map(|id| c.progress(id, now))
            .collect(),
    ))
}

/// What a new campaign gets for the settings left out (`[campaigns]`).
#[utoipa::path(get, path = "/api/v1/campaigns/defaults",
    responses((status = 200, body = Defaults), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn defaults(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
) -> Result<Json<Defaults>, ApiError> {
    supervisor(&caller)?;
    Ok(Json(desk.config.campaign_defaults.clone()))
}

/// A new campaign (ready; started with `/start`); settings left out are
/// the configuration's defaults.
#[utoipa::path(post, path = "/api/v1/campaigns", request_body = Settings,
    responses((status = 201, body = Campaign), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    ApiJson(given): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<Campaign>), ApiError> {
    supervisor(&caller)?;
    let settings = desk.config.campaign_defaults.settings(given)?;
    if !desk.members.contains_key(&settings.group) {
        return Err(ApiError::BadRequest(format!(
            "no group {:?}",
            settings.group
        )));
    }
    if !desk.config.trunks.iter().any(|(n, _)| *n == settings.trunk) {
        return Err(ApiError::BadRequest(format!(
            "no trunk {:?}",
            settings.trunk
        )));
    }
    let id = CampaignId(desk.next_ids(1).await[0]);
    let now = desk.wall(Instant::now());
    let campaign = lock(&desk.campaigns).create(now, id, settings)?;
    desk.commit(vec![campaign.clone()], |c| c.forget(id))
        .await?;
    tracing::info!(campaign = id.0, by = %caller.session.extension, name = %campaign.settings.name, "campaign created");
    desk.announce(id);
    Ok((StatusCode::CREATED, Json(campaign)))
}

/// A campaign with its progress and why it waits.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<Overview>, ApiError> {
    supervisor(&caller)?;
    desk.overview(CampaignId(id)).map(Json)
}

/// Sets what the campaign's customers hear when their agent's leg ends
/// first: a WAV (8 kHz mono 16-bit PCM, at most a minute) naming the caller
/// and a number to call back. On disk before the answer.
#[utoipa::path(put, path = "/api/v1/campaigns/{id}/farewell", params(("id" = u64, Path)),
    request_body(content = String, content_type = "audio/wav"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn set_farewell(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    supervisor(&caller)?;
    let id = CampaignId(id);
    if lock(&desk.campaigns).get(id).is_none() {
        return Err(CampaignError::NotFound(id.0).into());
    }
    let prompt = crate::media::prompt::Prompt::from_wav(&body)
        .map_err(|e| ApiError::BadRequest(format!("the farewell: {e}")))?;
    let path = super::dialer::farewell_path(&desk.config.voice_dir, id);
    let write =
        tokio::task::spawn_blocking(move || crate::media::recorder::write_durably(&path, &body));
    match write.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ApiError::Unavailable(format!("storing the farewell: {e}"))),
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    }
    tracing::info!(campaign = id.0, by = %caller.session.extension, secs = prompt.duration().as_secs(), "campaign farewell set");
    desk.set_farewell(id, Arc::new(prompt));
    Ok(StatusCode::NO_CONTENT)
}

/// The campaign's farewell as uploaded (404 while it has none: customers
/// hear `[calls] campaign_farewell`).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/farewell", params(("id" = u64, Path)),
    responses((status = 200, content_type = "audio/wav"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn farewell(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    supervisor(&caller)?;
    let path = super::dialer::farewell_path(&desk.config.voice_dir, CampaignId(id));
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(|_| ApiError::NotFound(format!("campaign {id} has no farewell of its own")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "audio/wav")], bytes))
}

/// What one list upload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Loaded {
    #[serde(flatten)]
    pub counts: Imported,
    /// Rows left out (the others were imported; re-running the file adds
    /// only what is new).
    pub errors: Vec<RowError>,
}

/// Loads a customer list (CSV with a header row: `number`, and `name`,
/// `time_zone` and free fields).
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/contacts", params(("id" = u64, Path)),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = Loaded), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn load(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<Json<Loaded>, ApiError> {
    supervisor(&caller)?;
    let id = CampaignId(id);
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::BadRequest(format!("the list is not UTF-8 text: {e}")))?;
    let trunk = lock(&desk.campaigns)
        .get(id)
        .map(|c| c.settings.trunk.clone())
        .ok_or(CampaignError::NotFound(id.0))?;
    let numbering = desk
        .config
        .trunks
        .iter()
        .find(|(n, _)| *n == trunk)
        .map(|(_, numbering)| numbering.clone())
        .unwrap_or_default();
    let (rows, errors) = import::read(text, &numbering).map_err(ApiError::BadRequest)?;
    let mut ids = desk.next_ids(rows.len()).await.into_iter();
    let (added, counts) =
        lock(&desk.campaigns).import(id, rows, || ContactId(ids.next().unwrap_or_default()))?;
    desk.commit(added.clone(), |c| c.unload(id, &added)).await?;
    tracing::info!(campaign = id.0, by = %caller.session.extension, imported = counts.imported, duplicates = counts.duplicates, do_not_call = counts.do_not_call, errors = errors.len(), "customer list loaded");
    desk.announce(id);
    Ok(Json(Loaded { counts, errors }))
}

/// A contact as supervisors see it: where it stands, not its record.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactOutcome {
    pub id: ContactId,
    pub line: u64,
    pub number: String,
    pub status: ContactStatus,
    pub tries: u32,
    #[schema(value_type = Option<Object>)]
    pub last: Option<(Outcome, u64)>,
}

impl From<&Contact> for ContactOutcome {
    fn from(c: &Contact) -> Self {
        ContactOutcome {
            id: c.id,
            line: c.line,
            number: c.number.clone(),
            status: c.status.clone(),
            tries: c.tries,
            last: c.last,
        }
    }
}

/// A page of contacts.
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Each contact's outcome, in list order (`offset`, `limit`: a page of them).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/contacts",
    params(("id" = u64, Path), ("offset" = Option<usize>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Vec<ContactOutcome>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn contacts(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Result<Json<Vec<ContactOutcome>>, ApiError> {
    supervisor(&caller)?;
    let c = lock(&desk.campaigns);
    let list = c
        .contacts(CampaignId(id))
        .ok_or(CampaignError::NotFound(id))?;
    let page = list
        .skip(page.offset)
        .take(page.limit.unwrap_or(usize::MAX));
    Ok(Json(page.map(ContactOutcome::from).collect()))
}

/// `start`, `pause`, `resume` or `stop` a campaign.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/{action}",
    params(("id" = u64, Path), ("action" = String, Path, description = "start, pause, resume or stop")),
    responses((status = 200, body = Campaign), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn act(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path((id, action)): Path<(u64, String)>,
) -> Result<Json<Campaign>, ApiError> {
    supervisor(&caller)?;
    let action = match action.as_str() {
        "start" => Action::Start,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "stop" => Action::Stop,
        other => return Err(ApiError::NotFound(format!("no campaign action {other:?}"))),
    };
    let id = CampaignId(id);
    let (before, after) = {
        let mut c = lock(&desk.campaigns);
        let before = c
            .get(id)
            .map(|k| k.state)
            .ok_or(CampaignError::NotFound(id.0))?;
        (before, c.act(id, action)?)
    };
    desk.commit(vec![after.clone()], |c| c.set_state(id, before))
        .await?;
    tracing::info!(campaign = id.0, by = %caller.session.extension, state = ?after.state, "campaign {}", match action {
        Action::Start => "started",
        Action::Pause => "paused",
        Action::Resume => "resumed",
        Action::Stop => "stopped",
    });
    desk.announce(id);
    Ok(Json(after))
}

/// Numbers to put on the do-not-call list (as written; each is read like
/// the trunk's numbers, into E.164).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Forbid {
    pub numbers: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Forbidden {
    /// Numbers new on the list.
    pub added: usize,
}

/// Puts numbers on the do-not-call list: never imported, never dialled.
#[utoipa::path(post, path = "/api/v1/do-not-call", request_body = Forbid,
    responses((status = 200, body = Forbidden), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn forbid(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    ApiJson(body): ApiJson<Forbid>,
) -> Result<Json<Forbidden>, ApiError> {
    supervisor(&caller)?;
    let numbering = desk
        .config
        .trunks
        .first()
        .map(|(_, n)| n.clone())
        .unwrap_or_default();
    let mut numbers = Vec::new();
    for raw in &body.numbers {
        let n = numbering
            .to_e164(raw)
            .ok_or_else(|| ApiError::BadRequest(format!("{raw:?} is no phone number")))?;
        numbers.push(n);
    }
    let now = desk.wall(Instant::now());
    let added = lock(&desk.campaigns).forbid(now, numbers);
    desk.commit(added.clone(), |c| c.allow(&added)).await?;
    tracing::info!(by = %caller.session.extension, added = added.len(), "do-not-call list extended");
    Ok(Json(Forbidden { added: added.len() }))
}
