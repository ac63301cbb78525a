//! The HTTP surface of the desk: routes, the caller extractor that authorises
//! every request, the JSON error body, and the event stream's WebSocket loop.
//! Handlers are thin: they check who asks, then read shared state or send a
//! command, and never hold a lock across an `.await`.

use super::events::{Body, Replay, Seq};
use super::session::{Admit, Role, Session, Token};
use super::{lock, Desk};
use crate::calls::OriginateError;
use crate::presence::{PresenceError, State};
use crate::sip::auth::Ha1;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{AUTHORIZATION, COOKIE, RETRY_AFTER, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use utoipa::{OpenApi, ToSchema};

/// The cookie that carries a browser's session token.
pub const COOKIE_NAME: &str = "sipdesk_session";
/// Request bodies above this are refused (413).
const MAX_BODY: usize = 64 * 1024;
/// A stream client that cannot take a message for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Events sent per look at the log (a reconnecting client catches up in steps).
const BATCH: usize = 256;

/// Every route of the desk.
pub fn router(desk: Arc<Desk>) -> Router {
    Router::new()
        .route("/api/v1/session", post(login).delete(logout))
        .route("/api/v1/session/renew", post(renew))
        .route("/api/v1/me", get(me))
        .route("/api/v1/board", get(board))
        .route("/api/v1/agents/{extension}/state", put(set_state))
        .route("/api/v1/calls", post(click_to_call))
        .route("/api/v1/me/calls", get(my_calls))
        .route("/api/v1/me/calls/{call_id}/transfer", post(transfer_call))
        .route("/api/v1/dispositions", get(dispositions))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/trunks", get(trunks))
        .route("/api/v1/customers", get(search_customers))
        .route("/api/v1/customers/{number}/history", get(history))
        .route("/api/v1/customers/{number}/records", post(create_record))
        .route("/api/v1/customers/{number}/records/{id}", put(edit_record))
        .route("/api/v1/exports/cdrs", get(export_cdrs))
        .route("/api/v1/exports/records", get(export_records))
        .route("/api/v1/events", get(events))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .merge(super::callbacks::routes())
        .merge(super::forwarding::routes())
        .merge(super::voicemail::routes())
        .merge(super::recordings::routes())
        .merge(super::campaigns::routes())
        .merge(super::dialer::routes())
        .merge(super::assets::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(desk)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sipdesk desk API",
        description = "The agent desktop's API: sessions, the presence board, agent state, click-to-call, customers' history and response records, and the numbered event stream."
    ),
    paths(
        login,
        logout,
        renew,
        me,
        board,
        set_state,
        click_to_call,
        my_calls,
        transfer_call,
        queues,
        dispositions,
        search_customers,
        history,
        edit_record,
        create_record,
        export_cdrs,
        export_records,
        metrics,
        trunks,
        super::forwarding::read,
        super::forwarding::set,
        super::voicemail::list,
        super::voicemail::audio,
        super::voicemail::heard,
        super::voicemail::remove,
        super::voicemail::greeting,
        super::voicemail::set_greeting,
        super::voicemail::remove_greeting,
        super::recordings::start,
        super::recordings::stop,
        super::recordings::list,
        super::recordings::audio,
        super::recordings::remove,
        super::callbacks::list,
        super::callbacks::create,
        super::callbacks::one,
        super::callbacks::voice,
        super::callbacks::claim,
        super::callbacks::release,
        super::callbacks::close,
        super::callbacks::reopen,
        super::campaigns::list,
        super::campaigns::create,
        super::campaigns::defaults,
        super::campaigns::set_farewell,
        super::campaigns::farewell,
        super::campaigns::one,
        super::campaigns::load,
        super::campaigns::contacts,
        super::campaigns::act,
        super::campaigns::forbid,
        super::dialer::confirm,
        super::dialer::skip,
        super::dialer::audit,
        events
    ),
    components(schemas(
        Login,
        SessionInfo,
        Me,
        Board,
        BoardGroup,
        Agent,
        SetState,
        Dial,
        Dialled,
        MyCall,
        Transfer,
        RecordEdit,
        RecordNew,
        super::TrunkLine,
        super::forwarding::Forwarding,
        super::voicemail::Mailbox,
        crate::voicemail::VoiceMessage,
        crate::voicemail::Greeting,
        super::recordings::Started,
        crate::recordings::CallRecording,
        crate::recordings::Progress,
        super::callbacks::Write,
        super::callbacks::Close,
        crate::callbacks::Callback,
        crate::callbacks::Voice,
        crate::campaigns::Settings,
        crate::campaigns::Defaults,
        crate::campaigns::Campaign,
        crate::campaigns::Progress,
        super::campaigns::Overview,
        super::campaigns::Loaded,
        super::campaigns::ContactOutcome,
        super::campaigns::Forbid,
        super::campaigns::Forbidden,
        super::dialer::Customer,
        super::dialer::AttemptPhase,
        super::dialer::Audit,
        crate::history::Customer,
        super::export::Format,
        crate::routing::stats::QueueStats,
        ErrorBody,
        Body,
        Role,
        State
    ))
)]
struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

// ---- errors -------------------------------------------------------------

/// What every failed request gets back: a status and this body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `forbidden`, `not_found`, `bad_request`,
    /// `too_many_requests`, `conflict`, `payload_too_large`, `unavailable`,
    /// `storage`.
    pub error: &'static str,
    /// What was wrong, for a person.
    pub message: String,
}

/// The desk's errors (one per way a request can fail).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many failed logins; try again in {0} s")]
    TooManyRequests(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {MAX_BODY} bytes")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::store::StoreError),
}

impl ApiError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.status();
        let body = ErrorBody {
            error,
            message: self.to_string(),
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests(secs) = self {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

impl From<OriginateError> for ApiError {
    fn from(e: OriginateError) -> Self {
        match e {
            OriginateError::UnknownExtension(_) => ApiError::NotFound(e.to_string()),
            OriginateError::Blocked(_) => ApiError::Forbidden(e.to_string()),
            OriginateError::NotRegistered(_) | OriginateError::NotAvailable(_) => {
                ApiError::Conflict(e.to_string())
            }
            OriginateError::NoMedia | OriginateError::Stopped => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        match e {
            PresenceError::Unknown(_) => ApiError::NotFound(e.to_string()),
            PresenceError::NotChoosable(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// A JSON body whose rejection is an [`ApiError`]: malformed JSON is a 400
/// naming the field (serde's message), an oversized body a 413.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "send the body as JSON (Content-Type: application/json)".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A query string whose rejection is an [`ApiError`] (a 400 naming the field).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

// ---- who is asking ------------------------------------------------------

/// The authorised caller of a request: from the session cookie or an
/// `Authorization: Bearer` token. Any other request is 401.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session: Session,
    pub token: Token,
}

impl Caller {
    /// An agent may act only as themself; a supervisor for anyone.
    pub(super) fn may_act_for(&self, extension: &str) -> Result<(), ApiError> {
        if self.session.role == Role::Supervisor || self.session.extension == extension {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{} may not act for {extension}",
                self.session.extension
            )))
        }
    }
}

/// The `Authorization: Bearer` credential, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn token_of(headers: &HeaderMap) -> Option<Token> {
    let cookie = || {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
    };
    bearer(headers)
        .or_else(cookie)
        .and_then(|t| Token::parse(t.trim()))
}

impl FromRequestParts<Arc<Desk>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, desk: &Arc<Desk>) -> Result<Self, ApiError> {
        let token = token_of(&parts.headers).ok_or(ApiError::Unauthorized("log in first"))?;
        let session =
            lock(&desk.sessions)
                .check(Instant::now(), &token)
                .ok_or(ApiError::Unauthorized(
                    "the session has expired or is unknown",
                ))?;
        Ok(Caller { session, token })
    }
}

// ---- sessions -----------------------------------------------------------

/// Extension and password, as configured for the phone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub extension: String,
    pub password: String,
}

/// A new or renewed session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// For tools: send as `Authorization: Bearer <token>` (browsers get a cookie).
    pub token: String,
    pub extension: String,
    pub role: Role,
    pub expires_at_ms: u64,
}

fn password_matches(stored: &Ha1, given: &Ha1) -> bool {
    let eq = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => bool::from(a.as_bytes().ct_eq(b.as_bytes())),
        _ => false,
    };
    eq(&stored.md5, &given.md5) || eq(&stored.sha256, &given.sha256)
}

fn session_cookie(token: &Token, max_age: Duration) -> HeaderValue {
    let v = format!(
        "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        token.as_str(),
        max_age.as_secs()
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Log in with extension and password.
#[utoipa::path(post, path = "/api/v1/session", request_body = Login,
    responses((status = 200, body = SessionInfo, description = "logged in; also sets the session cookie"),
        (status = 401, body = ErrorBody, description = "wrong extension or password (the same answer for both)"),
        (status = 429, body = ErrorBody, description = "too many failures from this source or for this extension")))]
async fn login(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let now = Instant::now();
    let admit = lock(&desk.guard).admit(now, source.ip(), &body.extension);
    match admit {
        Admit::Blocked(d) => return Err(ApiError::TooManyRequests(d.as_secs())),
        Admit::After(d) => tokio::time::sleep(d).await,
        Admit::Now => {}
    }
    let given = Ha1::from_password(&body.extension, &desk.config.realm, &body.password);
    // An unknown extension costs the same hashing and gets the same answer.
    let known = desk.users.ha1(&body.extension);
    let ok = known.as_ref().is_some_and(|h| password_matches(h, &given));
    let now = Instant::now();
    if !ok {
        if lock(&desk.guard).failed(now, source.ip(), &body.extension) {
            tracing::warn!(%source, extension = %body.extension, "desk login blocked after repeated failures");
        } else {
            tracing::info!(%source, extension = %body.extension, "desk login failed");
        }
        return Err(ApiError::Unauthorized("wrong extension or password"));
    }
    lock(&desk.guard).succeeded(source.ip(), &body.extension);
    let role = desk.role(&body.extension);
    let (token, session) = lock(&desk.sessions).open(now, &body.extension, role);
    tracing::info!(%source, extension = %body.extension, ?role, "desk login");
    let info = SessionInfo {
        token: token.as_str().to_string(),
        extension: session.extension,
        role,
        expires_at_ms: desk.wall(session.expires).0,
    };
    let ttl = lock(&desk.sessions).ttl();
    Ok(([(SET_COOKIE, session_cookie(&token, ttl))], Json(info)).into_response())
}

/// Extend the session by its full lifetime (the same token; streams stay open).
#[utoipa::path(post, path = "/api/v1/session/renew",
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
async fn renew(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let (session, ttl) = {
        let mut sessions = lock(&desk.sessions);
        let s = sessions.renew(Instant::now(), &caller.token);
        (s, sessions.ttl())
    };
    let session = session.ok_or(ApiError::Unauthorized("the session has expired"))?;
    let info = SessionInfo {
        token: caller.token.as_str().to_string(),
        extension: session.extension,
        role: session.role,
        expires_at_ms: desk.wall(session.expires).0,
    };
    Ok((
        [(SET_COOKIE, session_cookie(&caller.token, ttl))],
        Json(info),
    )
        .into_response())
}

/// Log out (the token stops working at once).
#[utoipa::path(delete, path = "/api/v1/session",
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn logout(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
) -> Response {
    lock(&desk.sessions).close(&caller.token);
    let expired =
        HeaderValue::from_static("sipdesk_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (StatusCode::NO_CONTENT, [(SET_COOKIE, expired)]).into_response()
}

// ---- the board and my state ---------------------------------------------

/// One agent on the board.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    pub extension: String,
    pub name: Option<String>,
    pub state: State,
    /// When the state began (ms since the UNIX epoch).
    pub since_ms: u64,
    /// Why, when the agent said (away: "break", "meeting").
    pub reason: Option<String>,
}

fn agent(desk: &Desk, extension: &str) -> Option<Agent> {
    let (state, since, reason) = desk.presence.shown(extension)?;
    Some(Agent {
        extension: extension.to_string(),
        name: desk.name(extension),
        state,
        since_ms: since.0,
        reason: reason.map(|r| r.to_string()),
    })
}

/// Who I am on the desk.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub agent: Agent,
    pub role: Role,
    pub expires_at_ms: u64,
}

/// Me: extension, name, role, state.
#[utoipa::path(get, path = "/api/v1/me", responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
) -> Result<Json<Me>, ApiError> {
    let s = &caller.session;
    let agent = agent(&desk, &s.extension)
        .ok_or_else(|| ApiError::NotFound(format!("no extension {}", s.extension)))?;
    Ok(Json(Me {
        agent,
        role: s.role,
        expires_at_ms: desk.wall(s.expires).0,
    }))
}

/// One group on the board, members in priority order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoardGroup {
    pub name: String,
    pub agents: Vec<Agent>,
}

/// Every agent by group, and the extensions in no group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Board {
    /// The event number this board is as of: stream from here
    /// (`/api/v1/events?since=seq`) to miss nothing.
    pub seq: Seq,
    pub groups: Vec<BoardGroup>,
    pub ungrouped: Vec<Agent>,
}

/// The presence board.
#[utoipa::path(get, path = "/api/v1/board", responses((status = 200, body = Board), (status = 401, body = ErrorBody)))]
async fn board(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    _caller: Caller,
) -> Json<Board> {
    // The number first: an event racing this read is sent again, never lost.
    let seq = desk.latest();
    let groups: Vec<BoardGroup> = desk
        .config
        .groups
        .iter()
        .map(|(name, members)| BoardGroup {
            name: name.clone(),
            agents: members.iter().filter_map(|m| agent(&desk, m)).collect(),
        })
        .collect();
    let grouped: std::collections::HashSet<&str> = desk
        .config
        .groups
        .iter()
        .flat_map(|(_, m)| m.iter().map(String::as_str))
        .collect();
    let ungrouped = desk
        .users
        .extensions()
        .iter()
        .filter(|e| !grouped.contains(e.as_str()))
        .filter_map(|e| agent(&desk, e))
        .collect();
    Json(Board {
        seq,
        groups,
        ungrouped,
    })
}

/// A state the agent chooses.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetState {
    /// `available`, `away` or `busy`.
    pub state: State,
    /// Why (shown next to the state): "break", "meeting"…; at most 64 characters.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Set an agent's own state (a supervisor may set anyone's).
#[utoipa::path(put, path = "/api/v1/agents/{extension}/state", request_body = SetState,
    params(("extension" = String, Path, description = "the agent")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "another agent's state"),
        (status = 404, body = ErrorBody)))]
async fn set_state(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    Path(extension): Path<String>,
    ApiJson(body): ApiJson<SetState>,
) -> Result<StatusCode, ApiError> {
    caller.may_act_for(&extension)?;
    let reason = body.reason.as_deref().map(str::trim);
    if reason.is_some_and(|r| r.chars().count() > 64 || r.chars().any(char::is_control)) {
        return Err(ApiError::BadRequest(
            "reason: at most 64 characters, no control characters".into(),
        ));
    }
    let now = desk.wall(Instant::now());
    desk.presence
        .choose_for(&extension, body.state, reason, now)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- calls --------------------------------------------------------------

/// A number to call from my phone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dial {
    pub to: String,
}

/// The call placed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dialled {
    /// The Call-ID of the leg to my phone.
    pub call_id: String,
}

/// Click-to-call: my phone rings first; when I answer, the number is called.
#[utoipa::path(post, path = "/api/v1/calls", request_body = Dial,
    responses((status = 202, body = Dialled), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the number goes nowhere"),
        (status = 409, body = ErrorBody, description = "my phone is not registered")))]
async fn click_to_call(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    ApiJson(body): ApiJson<Dial>,
) -> Result<(StatusCode, Json<Dialled>), ApiError> {
    let to = body.to.trim();
    if !is_number(to) {
        return Err(ApiError::BadRequest(format!("to: `{to}` is not a number")));
    }
    if !desk.commands.routable(to) {
        return Err(ApiError::NotFound(format!(
            "{to} is not a number this PBX can call"
        )));
    }
    let call_id = desk
        .commands
        .originate(&caller.session.extension, to)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Dialled { call_id })))
}

/// One of my calls now.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyCall {
    pub call_id: String,
    pub direction: crate::presence::Direction,
    pub state: crate::presence::DialogState,
    /// The other party (the caller's number when I am called).
    pub peer: String,
}

/// My current calls (ringing and talking).
#[utoipa::path(get, path = "/api/v1/me/calls",
    responses((status = 200, body = Vec<MyCall>), (status = 401, body = ErrorBody)))]
async fn my_calls(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
) -> Json<Vec<MyCall>> {
    let calls = desk
        .presence
        .dialogs(&caller.session.extension)
        .iter()
        .map(|d| MyCall {
            call_id: d.call_id.clone(),
            direction: d.direction,
            state: d.state,
            peer: d.peer.clone(),
        })
        .collect();
    Json(calls)
}

/// Where to transfer one of my calls: a number (blind), or the other party
/// of another of my calls (attended: the two are connected and I leave both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// An extension, a ring group, a queue or an outside number.
    pub to: Option<String>,
    /// The Call-ID of my other call (from `/api/v1/me/calls`).
    pub consultation: Option<String>,
}

impl From<crate::calls::TransferError> for ApiError {
    fn from(e: crate::calls::TransferError) -> Self {
        use crate::calls::TransferError as E;
        match e {
            E::NoCall(_) | E::Unknown(_) => ApiError::NotFound(e.to_string()),
            E::NotYours(_) | E::Refused(_) => ApiError::Forbidden(e.to_string()),
            E::NotNow(_) => ApiError::Conflict(e.to_string()),
            E::Stopped => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// Transfers one of my connected calls (by the Call-ID `/api/v1/me/calls`
/// lists): its other party is put through to the number, or to the party of
/// my other call; my phone is released when the target answers.
#[utoipa::path(post, path = "/api/v1/me/calls/{call_id}/transfer", request_body = Transfer,
    params(("call_id" = String, Path, description = "my call's Call-ID")),
    responses((status = 202, description = "the transfer is under way"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "not my call, or a number I may not reach"),
        (status = 404, body = ErrorBody, description = "no such call, or the number goes nowhere"),
        (status = 409, body = ErrorBody, description = "the call is not connected or already being transferred")))]
async fn transfer_call(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    Path(call_id): Path<String>,
    ApiJson(body): ApiJson<Transfer>,
) -> Result<StatusCode, ApiError> {
    let me = &caller.session.extension;
    let mine = desk
        .presence
        .dialogs(me)
        .iter()
        .any(|d| d.call_id == call_id);
    if !mine {
        return Err(ApiError::NotFound(format!("you have no call {call_id}")));
    }
    let to = match (body.to.as_deref().map(str::trim), body.consultation) {
        (Some(n), None) if is_number(n) => crate::calls::TransferTo::Number(n.to_string()),
        (Some(n), None) => return Err(ApiError::BadRequest(format!("to: `{n}` is not a number"))),
        (None, Some(c))
            if desk
                .presence
                .dialogs(me)
                .iter()
                .any(|d| d.call_id == c && c != call_id) =>
        {
            crate::calls::TransferTo::Consultation(crate::sip::CallId::from(c))
        }
        (None, Some(c)) => return Err(ApiError::NotFound(format!("you have no other call {c}"))),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `to` (a number) and `consultation` (your other call)".into(),
            ))
        }
    };
    let leg = crate::sip::CallId::from(call_id);
    desk.commands.transfer(me, &leg, to).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Whether `n` reads as a number to dial (digits, letters, `*#+-_.`).
fn is_number(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"*#+-_.".contains(&c))
}

/// Every queue now: waiting callers, the longest wait, and today's answered
/// and abandoned calls, service level, average wait and talk time.
#[utoipa::path(get, path = "/api/v1/queues",
    responses((status = 200, body = Vec<crate::routing::stats::QueueStats>), (status = 401, body = ErrorBody)))]
async fn queues(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    _caller: Caller,
) -> Json<Vec<crate::routing::stats::QueueStats>> {
    Json(desk.queue_stats())
}

/// Every trunk: transport, registration status, channels in use (supervisors).
#[utoipa::path(get, path = "/api/v1/trunks",
    responses((status = 200, body = Vec<super::TrunkLine>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn trunks(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
) -> Result<Json<Vec<super::TrunkLine>>, ApiError> {
    if caller.session.role != Role::Supervisor {
        return Err(ApiError::Forbidden("trunks: for supervisors".into()));
    }
    Ok(Json(desk.commands.trunks()))
}

// ---- customers and response records -------------------------------------

/// The outcomes an agent may pick for a conversation.
#[utoipa::path(get, path = "/api/v1/dispositions",
    responses((status = 200, body = Vec<String>), (status = 401, body = ErrorBody)))]
async fn dispositions(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    _caller: Caller,
) -> Json<Vec<String>> {
    Json(desk.config.dispositions.clone())
}

#[derive(Debug, Deserialize)]
struct Search {
    q: Option<String>,
}

/// Customers by name or number: a number (digits, `+`, spaces, dashes) matches
/// the numbers that contain its digits; anything else the names that contain
/// every word of it. Most recent first, at most 50.
#[utoipa::path(get, path = "/api/v1/customers",
    params(("q" = String, Query, description = "part of a name or a number, 2 to 100 characters")),
    responses((status = 200, body = Vec<crate::history::Customer>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn search_customers(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    _caller: Caller,
    ApiQuery(search): ApiQuery<Search>,
) -> Result<Json<Vec<crate::history::Customer>>, ApiError> {
    let q = search.q.unwrap_or_default();
    let q = q.trim();
    if !(2..=100).contains(&q.chars().count()) {
        return Err(ApiError::BadRequest(
            "q: give 2 to 100 characters of a name or a number".into(),
        ));
    }
    Ok(Json(desk.history.search(q)))
}

/// A customer's history: every response record, oldest first.
#[utoipa::path(get, path = "/api/v1/customers/{number}/history",
    params(("number" = String, Path, description = "the customer's number, as the PBX saw it")),
    responses((status = 200, body = Vec<crate::history::ResponseRecord>), (status = 401, body = ErrorBody)))]
async fn history(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    _caller: Caller,
    Path(number): Path<String>,
) -> Result<Json<Vec<crate::history::ResponseRecord>>, ApiError> {
    Ok(Json(crate::history::responses(&desk.store, &number)?))
}

/// What an agent writes on a response record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordEdit {
    /// What was said and done; at most 4000 characters.
    pub notes: String,
    /// One of `/api/v1/dispositions`.
    pub outcome: String,
    /// The customer's name, if the agent learned it; at most 100 characters.
    #[serde(default)]
    pub name: Option<String>,
}

/// Checks an agent's edit and writes it on `record`.
fn apply(
    desk: &Desk,
    edit: RecordEdit,
    record: &mut crate::history::ResponseRecord,
) -> Result<(), ApiError> {
    if !desk.config.dispositions.contains(&edit.outcome) {
        return Err(ApiError::BadRequest(format!(
            "outcome: `{}` is not one of {:?}",
            edit.outcome, desk.config.dispositions
        )));
    }
    if edit.notes.chars().count() > 4000 {
        return Err(ApiError::BadRequest(
            "notes: at most 4000 characters".into(),
        ));
    }
    let name = edit.name.map(|n| n.trim().to_string());
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 100 || n.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "name: at most 100 characters, no control characters".into(),
        ));
    }
    record.notes = edit.notes;
    record.outcome = edit.outcome;
    if let Some(name) = name {
        record.name = name;
    }
    Ok(())
}

/// Writes a record durably, then tells the customer list and the agent's
/// streams (`opened`: it is a new record).
async fn save(
    desk: &Desk,
    caller: &Caller,
    record: &crate::history::ResponseRecord,
    opened: bool,
) -> Result<(), ApiError> {
    desk.config
        .writer
        .commit(vec![crate::store::Write::put(record.clone())])
        .await?;
    match opened {
        true => desk.history.opened(record),
        false => desk.history.named(&record.caller, &record.name),
    }
    tracing::info!(agent = %caller.session.extension, customer = %record.caller, id = record.id, opened, "response record saved");
    desk.publish(
        super::events::Audience::Agent(record.agent.clone()),
        Body::RecordSaved {
            record: record.clone(),
        },
    );
    Ok(())
}

/// Writes today's record of a conversation: notes, outcome, the customer's
/// name. Answered once it is on disk.
#[utoipa::path(put, path = "/api/v1/customers/{number}/records/{id}", request_body = RecordEdit,
    params(("number" = String, Path), ("id" = u64, Path)),
    responses((status = 200, body = crate::history::ResponseRecord, description = "saved durably"),
        (status = 400, body = ErrorBody, description = "an unknown outcome, or too long"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "another agent's record"),
        (status = 404, body = ErrorBody)))]
async fn edit_record(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    Path((number, id)): Path<(String, u64)>,
    ApiJson(edit): ApiJson<RecordEdit>,
) -> Result<Json<crate::history::ResponseRecord>, ApiError> {
    let mut record = crate::history::responses(&desk.store, &number)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no record {id} of customer {number}")))?;
    caller.may_act_for(&record.agent)?;
    apply(&desk, edit, &mut record)?;
    save(&desk, &caller, &record, false).await?;
    Ok(Json(record))
}

/// A customer's number as given in `field`, trimmed: not anonymous, at most
/// 64 characters of digits, letters and `*#+-_.`.
pub fn customer_number<'a>(number: &'a str, field: &str) -> Result<&'a str, ApiError> {
    let number = number.trim();
    if crate::history::is_anonymous(number)
        || number.len() > 64
        || !number
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"*#+-_.".contains(&c))
    {
        return Err(ApiError::BadRequest(format!(
            "{field}: `{number}` is not a customer's number"
        )));
    }
    Ok(number)
}

/// A record an agent opens for a conversation the PBX opened none for (a
/// call straight to the agent's extension, one the agent placed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordNew {
    /// The conversation's Call-ID, when there was a call: a second create for
    /// the same call and agent edits the first record instead.
    #[serde(default)]
    pub call_id: Option<String>,
    pub notes: String,
    pub outcome: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// Opens my record of a conversation with a customer (201), or, when I have
/// one for this call already, writes it (200). Answered once it is on disk.
#[utoipa::path(post, path = "/api/v1/customers/{number}/records", request_body = RecordNew,
    params(("number" = String, Path, description = "the customer's number")),
    responses((status = 201, body = crate::history::ResponseRecord, description = "opened, durably"),
        (status = 200, body = crate::history::ResponseRecord, description = "my record of this call, written"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_record(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    Path(number): Path<String>,
    ApiJson(new): ApiJson<RecordNew>,
) -> Result<(StatusCode, Json<crate::history::ResponseRecord>), ApiError> {
    let number = customer_number(&number, "number")?;
    let call_id = new.call_id.unwrap_or_default();
    if call_id.len() > 256 || call_id.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "call_id: at most 256 characters, no control characters".into(),
        ));
    }
    let me = &caller.session.extension;
    let edit = RecordEdit {
        notes: new.notes,
        outcome: new.outcome,
        name: new.name,
    };
    let mut ids = desk.record_ids.lock().await;
    let earlier = match call_id.is_empty() {
        true => None,
        false => crate::history::responses(&desk.store, number)?
            .into_iter()
            .find(|r| r.call_id == call_id && &r.agent == me),
    };
    let opened = earlier.is_none();
    let mut record = earlier.unwrap_or_else(|| {
        let now = desk.wall(Instant::now());
        crate::history::ResponseRecord {
            id: ids.next_id(now),
            caller: number.to_string(),
            time_ms: now.0,
            agent: me.clone(),
            call_id,
            notes: String::new(),
            outcome: String::new(),
            name: String::new(),
        }
    });
    apply(&desk, edit, &mut record)?;
    save(&desk, &caller, &record, opened).await?;
    drop(ids);
    let status = if opened {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

// ---- exports ------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ExportQuery {
    #[serde(default)]
    format: super::export::Format,
    from: Option<u64>,
    to: Option<u64>,
}

/// Streams one kind of record as a file download (`name`.csv or .json).
fn export<R: super::export::Exported + 'static>(
    desk: &Desk,
    caller: &Caller,
    q: ExportQuery,
    name: &str,
) -> Result<Response, ApiError> {
    let (from_ms, to_ms) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest("from: must be before to".into()));
    }
    let owner = (caller.session.role != Role::Supervisor).then(|| caller.session.extension.clone());
    let filter = super::export::Filter {
        from_ms,
        to_ms,
        owner,
    };
    let body = super::export::stream::<R>(desk.store.clone(), q.format, filter);
    let disposition = format!(
        "attachment; filename=\"sipdesk-{name}.{}\"",
        q.format.extension()
    );
    let headers = [
        (
            axum::http::header::CONTENT_TYPE,
            q.format.content_type().to_string(),
        ),
        (axum::http::header::CONTENT_DISPOSITION, disposition),
        (axum::http::header::CACHE_CONTROL, "no-store".to_string()),
    ];
    Ok((headers, body).into_response())
}

/// The CDRs of calls started in `[from, to)` (Unix ms), as CSV (default) or
/// JSON, streamed while the PBX runs: a supervisor's export has every call, an
/// agent's the calls they made or answered.
#[utoipa::path(get, path = "/api/v1/exports/cdrs",
    params(("format" = Option<super::export::Format>, Query), ("from" = Option<u64>, Query), ("to" = Option<u64>, Query)),
    responses((status = 200, description = "CSV or JSON file", content_type = "text/csv"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn export_cdrs(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    export::<crate::calls::cdr::Cdr>(&desk, &caller, q, "cdrs")
}

/// The response records opened in `[from, to)` (Unix ms), as CSV (default) or
/// JSON: a supervisor's export has everyone's, an agent's their own.
#[utoipa::path(get, path = "/api/v1/exports/records",
    params(("format" = Option<super::export::Format>, Query), ("from" = Option<u64>, Query), ("to" = Option<u64>, Query)),
    responses((status = 200, description = "CSV or JSON file", content_type = "text/csv"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn export_records(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    export::<crate::history::ResponseRecord>(&desk, &caller, q, "records")
}

// ---- metrics ------------------------------------------------------------

/// The PBX's figures in the Prometheus text format (OpenMetrics): for a
/// supervisor's session or the configured `http.metrics_token`.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn metrics(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
) -> Result<Response, ApiError> {
    let by_token = match (&desk.config.metrics_token, bearer(&headers)) {
        (Some(want), Some(given)) => bool::from(want.as_bytes().ct_eq(given.trim().as_bytes())),
        _ => false,
    };
    if !by_token && caller?.session.role != Role::Supervisor {
        return Err(ApiError::Forbidden("metrics are for supervisors".into()));
    }
    let text = super::metrics::encode(desk.scrape())
        .map_err(|_| ApiError::Unavailable("the metrics could not be written".into()))?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

// ---- the event stream ---------------------------------------------------

#[derive(Debug, Deserialize)]
struct Since {
    since: Option<Seq>,
}

/// The event stream (WebSocket). Every message is one JSON event with its
/// `seq`; reconnect with `?since=<last seq seen>` to get what was missed, or a
/// `resync` event when that is no longer kept (then fetch the board).
#[utoipa::path(get, path = "/api/v1/events",
    params(("since" = Option<u64>, Query, description = "the last event number seen")),
    responses((status = 101, description = "WebSocket: JSON events", body = Body), (status = 401, body = ErrorBody)))]
async fn events(
    axum::extract::State(desk): axum::extract::State<Arc<Desk>>,
    caller: Caller,
    ApiQuery(since): ApiQuery<Since>,
    ws: WebSocketUpgrade,
) -> Response {
    let from = since.since.unwrap_or_else(|| desk.latest());
    // Clients send only pings and the close: a small read buffer (the
    // default 128 KiB is zeroed again on every read, and a stream is read
    // each time an event wakes it).
    ws.max_message_size(4096)
        .read_buffer_size(4096)
        .on_upgrade(move |socket| stream(desk, caller, from, socket))
}

/// Sends these events' texts in one write; `false` when the client did not
/// take them within [`SEND_TIMEOUT`] (or is gone).
async fn send_all(socket: &mut WebSocket, texts: impl Iterator<Item = Utf8Bytes>) -> bool {
    let send = async {
        for text in texts {
            socket.feed(Message::Text(text)).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(())))
}

/// One client's stream: reads the log from its position, waits for more, and
/// ends when the client goes, stops draining, or its session ends.
/// Counts a stream client while it is connected.
struct Connected<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn stream(desk: Arc<Desk>, caller: Caller, mut pos: Seq, mut socket: WebSocket) {
    desk.stream_clients
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _connected = Connected(&desk.stream_clients);
    let mut latest = desk.latest.subscribe();
    loop {
        let alive = lock(&desk.sessions).check(Instant::now(), &caller.token);
        let Some(session) = alive else {
            let close = CloseFrame {
                code: 4001,
                reason: "session expired".into(),
            };
            let _ = socket.send(Message::Close(Some(close))).await;
            return;
        };
        let replay = lock(&desk.log).after(pos, BATCH);
        match replay {
            Replay::Resync { latest } => {
                pos = latest;
                let resync = super::events::wire(latest, &Body::Resync);
                if !send_all(&mut socket, std::iter::once(resync)).await {
                    return;
                }
                continue;
            }
            Replay::Events(batch) if !batch.is_empty() => {
                pos = batch.last().map_or(pos, |e| e.seq);
                let mine = batch
                    .iter()
                    .filter(|e| e.audience.admits(&session))
                    .map(|e| e.wire.clone());
                if !send_all(&mut socket, mine).await {
                    tracing::debug!(extension = %session.extension, "event stream dropped: not draining");
                    return;
                }
                continue;
            }
            Replay::Events(_) => {}
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by the library; the rest ignored
            },
            // Look at the session now and then even when nothing happens.
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
