//! Call recordings over HTTP: start and stop recording one of my calls,
//! list a customer's recordings and play one. A recording is heard by the
//! agent who made it and by supervisors, nobody else; only a supervisor
//! deletes one (its record durably, then its WAV). The agent's stream
//! says when a recording started (also from the phone's feature code), was
//! saved — once its record is durable — or failed.

use super::api::{ApiError, Caller, ErrorBody};
use super::events::{Audience, Body};
use super::Desk;
use crate::recordings::{CallRecording, Progress, Report};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<Desk>> {
    Router::new()
        .route(
            "/api/v1/me/calls/{call_id}/recording",
            post(start).delete(stop),
        )
        .route("/api/v1/customers/{number}/recordings", get(list))
        .route(
            "/api/v1/customers/{number}/recordings/{id}/audio",
            get(audio),
        )
        .route(
            "/api/v1/customers/{number}/recordings/{id}",
            axum::routing::delete(remove),
        )
}

/// A recording of one of my calls.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Started {
    /// The recording's id (its audio, once saved, is under the customer).
    pub id: u64,
}

impl From<crate::calls::RecordError> for ApiError {
    fn from(e: crate::calls::RecordError) -> Self {
        use crate::calls::RecordError as E;
        match e {
            E::NoCall(_) => ApiError::NotFound(e.to_string()),
            E::NotYours(_) => ApiError::Forbidden(e.to_string()),
            E::NotConnected(_) | E::Already(_) | E::NotRecording(_) => {
                ApiError::Conflict(e.to_string())
            }
            E::Stopped => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// Starts (`on`) or stops recording my call `call_id`.
async fn command(desk: &Desk, caller: &Caller, call_id: String, on: bool) -> Result<u64, ApiError> {
    let me = &caller.session.extension;
    if !desk
        .presence
        .dialogs(me)
        .iter()
        .any(|d| d.call_id == call_id)
    {
        return Err(ApiError::NotFound(format!("you have no call {call_id}")));
    }
    let leg = crate::sip::CallId::from(call_id);
    Ok(desk.commands.record(me, &leg, on).await?)
}

/// Starts recording one of my connected calls (both parties, mixed); it
/// ends when I stop it or the call ends.
#[utoipa::path(post, path = "/api/v1/me/calls/{call_id}/recording",
    params(("call_id" = String, Path, description = "my call's Call-ID")),
    responses((status = 201, body = Started, description = "recording"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "I have no such call"),
        (status = 409, body = ErrorBody, description = "not connected, or already being recorded")))]
pub(super) async fn start(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(call_id): Path<String>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    let id = command(&desk, &caller, call_id, true).await?;
    Ok((StatusCode::CREATED, Json(Started { id })))
}

/// Stops recording one of my calls: it is saved (my stream says when).
#[utoipa::path(delete, path = "/api/v1/me/calls/{call_id}/recording",
    params(("call_id" = String, Path, description = "my call's Call-ID")),
    responses((status = 200, body = Started, description = "stopped; being saved"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not being recorded")))]
pub(super) async fn stop(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(call_id): Path<String>,
) -> Result<Json<Started>, ApiError> {
    let id = command(&desk, &caller, call_id, false).await?;
    Ok(Json(Started { id }))
}

/// The recordings of `number` that the caller may hear.
fn visible(desk: &Desk, caller: &Caller, number: &str) -> Result<Vec<CallRecording>, ApiError> {
    let all = crate::recordings::of_customer(&desk.store, number)?;
    Ok(all
        .into_iter()
        .filter(|r| caller.may_act_for(&r.agent).is_ok())
        .collect())
}

/// A customer's call recordings that I may hear (mine; a supervisor's:
/// all), oldest first.
#[utoipa::path(get, path = "/api/v1/customers/{number}/recordings",
    params(("number" = String, Path, description = "the customer's number")),
    responses((status = 200, body = Vec<CallRecording>), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(number): Path<String>,
) -> Result<Json<Vec<CallRecording>>, ApiError> {
    Ok(Json(visible(&desk, &caller, &number)?))
}

/// One of a customer's call recordings (WAV, 8 kHz mono).
#[utoipa::path(get, path = "/api/v1/customers/{number}/recordings/{id}/audio",
    params(("number" = String, Path), ("id" = u64, Path)),
    responses((status = 200, content_type = "audio/wav", description = "the recording"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such recording, or not one I may hear")))]
pub(super) async fn audio(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path((number, id)): Path<(String, u64)>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    if !visible(&desk, &caller, &number)?.iter().any(|r| r.id == id) {
        return Err(ApiError::NotFound(format!(
            "no recording {id} of customer {number} that you may hear"
        )));
    }
    super::callbacks::wav(&desk, id).await
}

/// Deletes one of a customer's call recordings: its record is gone from
/// disk before the answer, then its WAV. Supervisors only.
#[utoipa::path(delete, path = "/api/v1/customers/{number}/recordings/{id}",
    params(("number" = String, Path), ("id" = u64, Path)),
    responses((status = 204, description = "deleted, on disk"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "not a supervisor"),
        (status = 404, body = ErrorBody, description = "no such recording")))]
pub(super) async fn remove(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path((number, id)): Path<(String, u64)>,
) -> Result<StatusCode, ApiError> {
    if caller.session.role != super::session::Role::Supervisor {
        return Err(ApiError::Forbidden(
            "only a supervisor deletes call recordings".into(),
        ));
    }
    let recording = crate::recordings::of_customer(&desk.store, &number)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no recording {id} of customer {number}")))?;
    let w = crate::store::Write::remove(&recording);
    desk.config.writer.commit(vec![w]).await?;
    super::voicemail::forget_recording(&desk, id).await;
    tracing::info!(supervisor = %caller.session.extension, customer = %number, id, "call recording deleted");
    Ok(StatusCode::NO_CONTENT)
}

impl Desk {
    /// Tells agents what became of the recordings they started; a saved
    /// one only once its record is durable.
    pub async fn follow_recordings(
        self: Arc<Self>,
        mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    ) {
        while let Some(r) = reports.recv().await {
            if let Progress::Saved { .. } = r.progress {
                // The shard's write went to the writer before this report:
                // an empty commit returns once it is durable.
                if let Err(e) = self.config.writer.commit(Vec::new()).await {
                    tracing::error!(id = r.id, "call recording not stored: {e}");
                    continue;
                }
            }
            let body = Body::Recording {
                call_id: r.call_id,
                id: r.id,
                progress: r.progress,
            };
            self.publish(Audience::Agent(r.agent), body);
        }
    }
}
