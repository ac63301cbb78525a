//! Voicemail over HTTP: a user's own mailbox, and nobody else's (a
//! supervisor included): list the messages, play one (WAV), mark it heard,
//! delete it; upload, play or remove the greeting callers hear. A change is
//! on disk before the answer, and the user's message lamp follows it.

use super::api::{ApiError, Caller, ErrorBody};
use super::Desk;
use crate::voicemail::{VoiceMessage, VoicemailError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<Desk>> {
    Router::new()
        .route("/api/v1/me/voicemail", get(list))
        .route("/api/v1/me/voicemail/{id}", delete(remove))
        .route("/api/v1/me/voicemail/{id}/audio", get(audio))
        .route("/api/v1/me/voicemail/{id}/heard", post(heard))
        .route(
            "/api/v1/me/voicemail/greeting",
            get(greeting)
                .put(set_greeting)
                .delete(remove_greeting)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_GREETING)),
        )
}

/// The longest greeting: a minute of 8 kHz 16-bit mono (and its header).
const MAX_GREETING: usize = 60 * 16_000 + 1024;

/// My mailbox: its messages, oldest first, and the lamp's counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Mailbox {
    pub messages: Vec<VoiceMessage>,
    /// Messages not heard yet (they light the lamp).
    pub new: u32,
    pub heard: u32,
}

impl From<VoicemailError> for ApiError {
    fn from(e: VoicemailError) -> Self {
        ApiError::NotFound(e.to_string())
    }
}

/// The caller's mailbox, if they have one.
fn mailbox<'a>(desk: &Desk, caller: &'a Caller) -> Result<&'a str, ApiError> {
    let me = caller.session.extension.as_str();
    match desk.config.voicemail.has(me) {
        true => Ok(me),
        false => Err(VoicemailError::NoMailbox(me.to_string()).into()),
    }
}

/// `me`'s own greeting (404 while callers hear the built-in one).
fn own_greeting(desk: &Desk, me: &str) -> Result<crate::voicemail::Greeting, ApiError> {
    desk.config
        .voicemail
        .greeting(me)
        .ok_or_else(|| ApiError::NotFound(format!("{me} has no greeting of their own")))
}

/// Tells the lamps that `me`'s mailbox changed.
fn lamp(desk: &Desk, me: &str) {
    let counts = desk.config.voicemail.counts(me);
    desk.commands.voicemail_waiting(me, counts);
}

/// My voicemail messages.
#[utoipa::path(get, path = "/api/v1/me/voicemail",
    responses((status = 200, body = Mailbox), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "I have no mailbox")))]
pub(super) async fn list(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
) -> Result<Json<Mailbox>, ApiError> {
    let me = mailbox(&desk, &caller)?;
    let (new, heard) = desk.config.voicemail.counts(me);
    let messages = desk.config.voicemail.list(me);
    Ok(Json(Mailbox {
        messages,
        new,
        heard,
    }))
}

/// One of my messages, as a WAV file.
#[utoipa::path(get, path = "/api/v1/me/voicemail/{id}/audio", params(("id" = u64, Path)),
    responses((status = 200, content_type = "audio/wav", description = "8 kHz mono 16-bit PCM"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn audio(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let me = mailbox(&desk, &caller)?;
    let message = desk.config.voicemail.get(me, id)?;
    super::callbacks::wav(&desk, message.id).await
}

/// Marks one of my messages heard (it no longer lights the lamp).
#[utoipa::path(post, path = "/api/v1/me/voicemail/{id}/heard", params(("id" = u64, Path)),
    responses((status = 200, body = VoiceMessage, description = "stored"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn heard(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<Json<VoiceMessage>, ApiError> {
    let me = mailbox(&desk, &caller)?;
    let message = desk.config.voicemail.heard(me, id)?;
    let w = crate::store::Write::put(message.clone());
    desk.config.writer.commit(vec![w]).await?;
    desk.config.voicemail.changed(message.clone());
    lamp(&desk, me);
    Ok(Json(message))
}

/// Deletes one of my messages (its recording too).
#[utoipa::path(delete, path = "/api/v1/me/voicemail/{id}", params(("id" = u64, Path)),
    responses((status = 204, description = "deleted, on disk"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    let me = mailbox(&desk, &caller)?;
    let message = desk.config.voicemail.get(me, id)?;
    let w = crate::store::Write::remove(&message);
    desk.config.writer.commit(vec![w]).await?;
    desk.config.voicemail.removed(me, id);
    lamp(&desk, me);
    forget_recording(&desk, id).await;
    tracing::info!(mailbox = %me, id, "voicemail deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// My own greeting, as a WAV (404 while callers hear the built-in one).
#[utoipa::path(get, path = "/api/v1/me/voicemail/greeting",
    responses((status = 200, content_type = "audio/wav"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn greeting(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let me = mailbox(&desk, &caller)?;
    let g = own_greeting(&desk, me)?;
    super::callbacks::wav(&desk, g.id).await
}

/// Sets my greeting: a WAV (8 kHz mono: 16-bit PCM, A-law or mu-law; at
/// most a minute). On disk before the answer; callers hear it from then on.
#[utoipa::path(put, path = "/api/v1/me/voicemail/greeting",
    request_body(content = String, content_type = "audio/wav"),
    responses((status = 200, body = crate::voicemail::Greeting), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn set_greeting(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<crate::voicemail::Greeting>, ApiError> {
    let me = mailbox(&desk, &caller)?.to_string();
    let prompt = crate::media::prompt::Prompt::from_wav(&body)
        .map_err(|e| ApiError::BadRequest(format!("the greeting: {e}")))?;
    let id = {
        let mut ids = desk.record_ids.lock().await;
        ids.next_id(desk.wall(std::time::Instant::now()))
    };
    let path = crate::media::recorder::path(&desk.config.voice_dir, id);
    let write =
        tokio::task::spawn_blocking(move || crate::media::recorder::write_durably(&path, &body));
    match write.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ApiError::Unavailable(format!("storing the greeting: {e}"))),
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    }
    let greeting = crate::voicemail::Greeting {
        mailbox: me.clone(),
        id,
        ms: prompt.duration().as_millis() as u64,
    };
    let w = crate::store::Write::put(greeting.clone());
    desk.config.writer.commit(vec![w]).await?;
    if let Some(old) = desk.config.voicemail.set_greeting(greeting.clone()) {
        forget_recording(&desk, old.id).await;
    }
    tracing::info!(mailbox = %me, ms = greeting.ms, "voicemail greeting uploaded");
    Ok(Json(greeting))
}

/// Removes my greeting: callers hear the built-in one again.
#[utoipa::path(delete, path = "/api/v1/me/voicemail/greeting",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_greeting(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    let me = mailbox(&desk, &caller)?;
    let g = own_greeting(&desk, me)?;
    desk.config
        .writer
        .commit(vec![crate::store::Write::remove(&g)])
        .await?;
    desk.config.voicemail.remove_greeting(me);
    forget_recording(&desk, g.id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes recording `id` from the voice directory (logged if it cannot).
pub(super) async fn forget_recording(desk: &Desk, id: u64) {
    let path = crate::media::recorder::path(&desk.config.voice_dir, id);
    let gone = tokio::task::spawn_blocking(move || (std::fs::remove_file(&path), path)).await;
    if let Ok((Err(e), path)) = gone {
        tracing::warn!("voice recording {}: {e}", path.display());
    }
}
