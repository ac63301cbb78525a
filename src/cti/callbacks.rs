//! The call-back box over HTTP: list what I may see, write one to an agent or
//! a group, claim, release, close and re-open, hear its voice messages. Every
//! change is on disk before the answer and is announced to the item's
//! addressees (the target agent, the members of its groups) and the
//! supervisors. An agent outside an item's groups never sees it: it is a 404
//! to them, and absent from their list and their events. The call-backs the
//! PBX asks for (queue callers) are written here too, added to an open item
//! for the same customer and group when there is one.

use super::api::{customer_number, ApiError, ApiJson, Caller, ErrorBody};
use super::events::{Audience, Body};
use super::session::Role;
use super::{lock, Desk};
use crate::callbacks::{Callback, CallbackError, CallbackId, NewCallback, Outcome, Status, Target};
use crate::clock::UnixMillis;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<Desk>> {
    Router::new()
        .route("/api/v1/callbacks", get(list).post(create))
        .route("/api/v1/callbacks/{id}", get(one))
        .route("/api/v1/callbacks/{id}/voice/{voice}", get(voice))
        .route("/api/v1/callbacks/{id}/claim", post(claim))
        .route("/api/v1/callbacks/{id}/release", post(release))
        .route("/api/v1/callbacks/{id}/close", post(close))
        .route("/api/v1/callbacks/{id}/reopen", post(reopen))
}

impl From<CallbackError> for ApiError {
    fn from(e: CallbackError) -> Self {
        match e {
            CallbackError::NotFound(_) => ApiError::NotFound(e.to_string()),
            CallbackError::NotYours(_) => ApiError::Forbidden(e.to_string()),
            CallbackError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            CallbackError::Held { .. }
            | CallbackError::Done(_)
            | CallbackError::NotInProgress(_)
            | CallbackError::NotFailed(_) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl Desk {
    /// Whether the session may see `c`.
    fn sees(&self, caller: &Caller, c: &Callback) -> bool {
        let me = &caller.session.extension;
        caller.session.role == Role::Supervisor || c.visible_to(me, |g| self.member(g, me))
    }

    /// Whether `extension` is in `group`.
    fn member(&self, group: &str, extension: &str) -> bool {
        self.members
            .get(group)
            .is_some_and(|m| m.contains(extension))
    }

    /// Who hears of `c`: its agent and the members of its groups.
    fn addressees(&self, c: &Callback) -> Vec<String> {
        let mut list: Vec<String> = match &c.target {
            Target::Agent(a) => vec![a.clone()],
            Target::Group(_) => Vec::new(),
        };
        for g in &c.groups {
            list.extend(
                self.members
                    .get(g)
                    .into_iter()
                    .flat_map(|m| m.iter().cloned()),
            );
        }
        list.sort();
        list.dedup();
        list
    }

    /// Sets the message lamps of `extensions` to the items waiting for each.
    pub(super) fn light_lamps(&self, extensions: &[String]) {
        let counts = lock(&self.callbacks).waiting(extensions);
        self.commands.messages_waiting(&counts);
    }

    /// Makes `c` durable, then announces it. A done one joins the customer's
    /// history as a response record (in the same commit).
    pub(super) async fn store_callback(&self, c: &Callback) -> Result<(), ApiError> {
        let mut writes = vec![crate::store::Write::put(c.clone())];
        let record = match &c.status {
            Status::Done {
                outcome,
                by,
                at_ms,
                note,
            } => {
                let id = self.record_ids.lock().await.next_id(UnixMillis(*at_ms));
                let outcome = match outcome {
                    Outcome::Succeeded => "call-back succeeded",
                    Outcome::Failed => "call-back failed",
                };
                let notes = match note.is_empty() {
                    true => format!("Call-back: {}", c.message),
                    false => format!("Call-back: {}\n{note}", c.message),
                };
                let r = crate::history::ResponseRecord {
                    id,
                    caller: c.customer.clone(),
                    time_ms: *at_ms,
                    agent: by.clone(),
                    call_id: format!("callback-{}", c.id.0),
                    notes,
                    outcome: outcome.to_string(),
                    name: c.name.clone(),
                };
                writes.push(crate::store::Write::put(r.clone()));
                Some(r)
            }
            _ => None,
        };
        self.config.writer.commit(writes).await?;
        if let Some(r) = &record {
            self.history.opened(r);
        }
        let addressees = self.addressees(c);
        self.publish(
            Audience::Extensions(addressees.clone().into()),
            Body::Callback {
                callback: c.clone(),
            },
        );
        self.light_lamps(&addressees);
        Ok(())
    }

    /// Escalations and flags that fell due (the desk's tick).
    pub(super) async fn escalate_callbacks(&self) {
        let due = lock(&self.callbacks).tick(self.wall(Instant::now()));
        for c in due {
            tracing::info!(id = c.id.0, flagged = c.flagged_ms.is_some(), groups = ?c.groups, "call-back escalated");
            if let Err(e) = self.store_callback(&c).await {
                tracing::error!("storing call-back {}: {e}", c.id.0);
            }
        }
    }

    /// The call-backs the calls ask for, as they come: written by the PBX, or
    /// added to the open item for the same customer and group.
    pub async fn write_requested(
        self: Arc<Self>,
        mut requests: tokio::sync::mpsc::UnboundedReceiver<crate::callbacks::Request>,
    ) {
        while let Some(r) = requests.recv().await {
            let new = NewCallback {
                name: self.history.name(&r.customer),
                message: r.message(),
                written_by: crate::callbacks::PBX.to_string(),
                target: Target::Group(r.group.clone()),
                request_key: None,
                voice: r.voice,
                customer: r.customer,
                queue: Some(r.queue.clone()),
            };
            let (id, now) = {
                let mut ids = self.record_ids.lock().await;
                let now = self.wall(Instant::now());
                (CallbackId(ids.next_id(now)), now)
            };
            let (c, added) = lock(&self.callbacks).create_or_add(now, id, new);
            let stored = self.store_callback(&c).await;
            match &stored {
                Ok(()) if added => {
                    tracing::info!(id = c.id.0, customer = %c.customer, "queue caller's call-back added to the open one")
                }
                Ok(()) => {
                    tracing::info!(id = c.id.0, customer = %c.customer, group = %r.group, "call-back written for a queue caller")
                }
                Err(e) => tracing::error!("storing call-back {}: {e:?}", c.id.0),
            }
            self.commands.callback_saved(&r.call, stored.is_ok());
        }
    }

    /// An item I may see, open or done.
    fn visible(&self, caller: &Caller, id: CallbackId) -> Result<Callback, ApiError> {
        let open = lock(&self.callbacks).get(id).cloned();
        let c = match open {
            Some(c) => Some(c),
            None => self.stored_callback(id)?,
        };
        c.filter(|c| self.sees(caller, c))
            .ok_or_else(|| CallbackError::NotFound(id.0).into())
    }

    /// A call-back as stored (done ones live only there).
    fn stored_callback(
        &self,
        id: CallbackId,
    ) -> Result<Option<Callback>, crate::store::StoreError> {
        self.store.get::<Callback>(&id.0.to_be_bytes())
    }

    /// An item that is not open: done (409 when I may see it) or unknown.
    fn not_open(&self, caller: &Caller, id: CallbackId) -> ApiError {
        let stored = self.stored_callback(id).ok().flatten();
        match stored {
            Some(c) if c.is_done() && self.sees(caller, &c) => CallbackError::Done(id.0).into(),
            _ => CallbackError::NotFound(id.0).into(),
        }
    }

    /// Runs `op` on an open item I may see, then stores and announces it.
    async fn change(
        &self,
        caller: &Caller,
        id: CallbackId,
        op: impl FnOnce(&mut crate::callbacks::CallbackBox) -> Result<Callback, CallbackError>,
    ) -> Result<Json<Callback>, ApiError> {
        let changed = {
            let mut b = lock(&self.callbacks);
            match b.get(id) {
                Some(c) if self.sees(caller, c) => op(&mut b)?,
                _ => return Err(self.not_open(caller, id)),
            }
        };
        self.store_callback(&changed).await?;
        tracing::info!(id = id.0, by = %caller.session.extension, status = ?changed.status, "call-back changed");
        Ok(Json(changed))
    }
}

/// The open call-backs I may see (mine, my groups'; a supervisor all), in
/// the order they were written.
#[utoipa::path(get, path = "/api/v1/callbacks",
    responses((status = 200, body = Vec<Callback>), (status = 401, body = ErrorBody)))]
pub async fn list(State(desk): State<Arc<Desk>>, caller: Caller) -> Json<Vec<Callback>> {
    let b = lock(&desk.callbacks);
    Json(
        b.open()
            .filter(|c| desk.sees(&caller, c))
            .cloned()
            .collect(),
    )
}

/// One call-back I may see, open or done (a done one from the customer's
/// history, for its voice messages).
#[utoipa::path(get, path = "/api/v1/callbacks/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Callback), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<Callback>, ApiError> {
    desk.visible(&caller, CallbackId(id)).map(Json)
}

/// A voice message of a call-back I may see, as a WAV file.
#[utoipa::path(get, path = "/api/v1/callbacks/{id}/voice/{voice}", params(("id" = u64, Path), ("voice" = u64, Path)),
    responses((status = 200, content_type = "audio/wav", description = "8 kHz mono 16-bit PCM"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn voice(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path((id, voice)): Path<(u64, u64)>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let c = desk.visible(&caller, CallbackId(id))?;
    if !c.voice.iter().any(|v| v.id == voice) {
        return Err(ApiError::NotFound(format!(
            "call-back {id} has no voice message {voice}"
        )));
    }
    wav(&desk, voice).await
}

/// Voice recording `voice` (a call-back's message, a voicemail) as a WAV
/// answer.
pub(super) async fn wav(
    desk: &Desk,
    voice: u64,
) -> Result<impl axum::response::IntoResponse + use<>, ApiError> {
    let path = crate::media::recorder::path(&desk.config.voice_dir, voice);
    let read = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::read(path)
    });
    let bytes = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::error!("voice message {}: {e}", path.display());
            return Err(ApiError::NotFound(format!(
                "voice message {voice} is missing"
            )));
        }
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "audio/wav"),
            (axum::http::header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    ))
}

/// A call-back to write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Write {
    /// Any string of yours (at most 128 characters): a retried create with the
    /// same key returns the first item instead of a second one.
    #[serde(default)]
    pub request_key: Option<String>,
    /// The customer's number.
    pub customer: String,
    #[serde(default)]
    pub name: String,
    /// What to call back about; 1 to 2000 characters.
    pub message: String,
    /// `{"agent": "201"}` or `{"group": "support"}`.
    pub target: Target,
}

/// Writes a call-back (201); a retry with the same request key gets the first
/// one back (200). Durable before the answer.
#[utoipa::path(post, path = "/api/v1/callbacks", request_body = Write,
    responses((status = 201, body = Callback), (status = 200, body = Callback, description = "the item this request key created"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such agent or group")))]
pub async fn create(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    ApiJson(w): ApiJson<Write>,
) -> Result<(StatusCode, Json<Callback>), ApiError> {
    let customer = customer_number(&w.customer, "customer")?.to_string();
    let message = w.message.trim().to_string();
    if message.is_empty() || message.chars().count() > 2000 {
        return Err(ApiError::BadRequest("message: 1 to 2000 characters".into()));
    }
    let name = w.name.trim().to_string();
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name: at most 100 characters, no control characters".into(),
        ));
    }
    if w.request_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 128)
    {
        return Err(ApiError::BadRequest(
            "request_key: 1 to 128 characters".into(),
        ));
    }
    match &w.target {
        Target::Agent(a) if !desk.users.contains(a) => {
            return Err(ApiError::NotFound(format!("target: no agent {a}")))
        }
        Target::Group(g) if !desk.members.contains_key(g) => {
            return Err(ApiError::NotFound(format!("target: no group {g}")))
        }
        _ => {}
    }
    let new = NewCallback {
        customer,
        name,
        message,
        written_by: caller.session.extension.clone(),
        target: w.target,
        request_key: w.request_key,
        voice: None,
        queue: None,
    };
    // Ids come from the desk's lane, taken with the time under its lock (so
    // later ids are never older); the box decides under its own lock, so two
    // retries of one key make one item.
    let (id, now) = {
        let mut ids = desk.record_ids.lock().await;
        let now = desk.wall(Instant::now());
        (CallbackId(ids.next_id(now)), now)
    };
    let created = lock(&desk.callbacks).create(now, id, new);
    match created {
        Ok(c) => {
            desk.store_callback(&c).await?;
            tracing::info!(id = c.id.0, by = %c.written_by, target = ?c.target, "call-back written");
            Ok((StatusCode::CREATED, Json(c)))
        }
        Err(first) => {
            // Flushed first: the first create may still be on its way to disk.
            desk.config.writer.commit(Vec::new()).await?;
            let open = lock(&desk.callbacks).get(first).cloned();
            let c = match open {
                Some(c) => c,
                None => desk
                    .stored_callback(first)?
                    .ok_or_else(|| ApiError::NotFound(format!("no call-back {}", first.0)))?,
            };
            Ok((StatusCode::OK, Json(c)))
        }
    }
}

/// Takes an open call-back: of concurrent claims exactly one wins; the others
/// get 409 naming who holds it.
#[utoipa::path(post, path = "/api/v1/callbacks/{id}/claim", params(("id" = u64, Path)),
    responses((status = 200, body = Callback), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "held by someone, or done")))]
pub async fn claim(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<Callback>, ApiError> {
    let now = desk.wall(Instant::now());
    let me = caller.session.extension.clone();
    desk.change(&caller, CallbackId(id), |b| {
        b.claim(now, CallbackId(id), &me)
    })
    .await
}

/// Gives my claim back (a supervisor may release anyone's).
#[utoipa::path(post, path = "/api/v1/callbacks/{id}/release", params(("id" = u64, Path)),
    responses((status = 200, body = Callback), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn release(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<Callback>, ApiError> {
    let me = caller.session.extension.clone();
    let anyone = caller.session.role == Role::Supervisor;
    desk.change(&caller, CallbackId(id), |b| {
        b.release(CallbackId(id), &me, anyone)
    })
    .await
}

/// How I close a call-back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Close {
    pub outcome: Outcome,
    /// At most 2000 characters.
    #[serde(default)]
    pub note: String,
}

/// Closes the call-back I hold as succeeded or failed; it leaves the open list
/// and joins the customer's history.
#[utoipa::path(post, path = "/api/v1/callbacks/{id}/close", params(("id" = u64, Path)), request_body = Close,
    responses((status = 200, body = Callback), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "someone else holds it"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not claimed")))]
pub async fn close(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
    ApiJson(c): ApiJson<Close>,
) -> Result<Json<Callback>, ApiError> {
    if c.note.chars().count() > 2000 {
        return Err(ApiError::BadRequest("note: at most 2000 characters".into()));
    }
    let now = desk.wall(Instant::now());
    let me = caller.session.extension.clone();
    desk.change(&caller, CallbackId(id), |b| {
        b.close(now, CallbackId(id), &me, c.outcome, c.note.trim())
    })
    .await
}

/// Opens a failed call-back again for another try.
#[utoipa::path(post, path = "/api/v1/callbacks/{id}/reopen", params(("id" = u64, Path)),
    responses((status = 200, body = Callback), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not a failed one")))]
pub async fn reopen(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<Callback>, ApiError> {
    let id = CallbackId(id);
    let stored = desk
        .stored_callback(id)?
        .filter(|c| desk.sees(&caller, c))
        .ok_or_else(|| ApiError::from(CallbackError::NotFound(id.0)))?;
    if !stored.is_done() {
        return Err(CallbackError::NotFailed(id.0).into());
    }
    let opened = lock(&desk.callbacks).reopen(stored)?;
    desk.store_callback(&opened).await?;
    tracing::info!(id = id.0, by = %caller.session.extension, "call-back re-opened");
    Ok(Json(opened))
}
