//! Call forwarding over HTTP: read and set a user's rules — an agent their
//! own, a supervisor anyone's. A change is checked first (numbers this PBX
//! reaches, outside numbers the user's dialing class allows, a sane wait), is
//! on disk before the answer, and is in effect for the next call.

use super::api::{ApiError, ApiJson, Caller, ErrorBody};
use super::Desk;
use crate::forwarding::{ForwardingError, Rules, StoredRules};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<Desk>> {
    Router::new().route("/api/v1/agents/{extension}/forwarding", get(read).put(set))
}

/// A user's call forwarding; a rule absent, null or "" forwards nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Forwarding {
    /// Every call goes here; no phone of the user rings.
    #[serde(default)]
    pub always: Option<String>,
    /// When the user's phones answer busy or decline, or the user is in do
    /// not disturb (`busy`).
    #[serde(default)]
    pub busy: Option<String>,
    /// When nobody answers within `no_answer_secs`, or no phone is registered.
    #[serde(default)]
    pub no_answer: Option<String>,
    /// 0: 20 s; else 5 to 120.
    #[serde(default)]
    pub no_answer_secs: u32,
}

impl From<Rules> for Forwarding {
    fn from(r: Rules) -> Self {
        Forwarding {
            always: r.always,
            busy: r.busy,
            no_answer: r.no_answer,
            no_answer_secs: r.no_answer_secs,
        }
    }
}

impl Forwarding {
    fn rules(self) -> Rules {
        let to = |n: Option<String>| n.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        Rules {
            always: to(self.always),
            busy: to(self.busy),
            no_answer: to(self.no_answer),
            no_answer_secs: self.no_answer_secs,
        }
    }
}

impl From<ForwardingError> for ApiError {
    fn from(e: ForwardingError) -> Self {
        match e {
            ForwardingError::NotAllowed(_) => ApiError::Forbidden(e.to_string()),
            ForwardingError::NoUser(_) => ApiError::NotFound(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// The user to read or change, if the caller may.
fn user(desk: &Desk, caller: &Caller, extension: &str) -> Result<(), ApiError> {
    caller.may_act_for(extension)?;
    if !desk.users.contains(extension) {
        return Err(ForwardingError::NoUser(extension.to_string()).into());
    }
    Ok(())
}

/// A user's call forwarding.
#[utoipa::path(get, path = "/api/v1/agents/{extension}/forwarding",
    params(("extension" = String, Path, description = "the user")),
    responses((status = 200, body = Forwarding), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "another agent's"),
        (status = 404, body = ErrorBody)))]
pub(super) async fn read(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(extension): Path<String>,
) -> Result<Json<Forwarding>, ApiError> {
    user(&desk, &caller, &extension)?;
    Ok(Json(desk.config.forwarding.rules(&extension).into()))
}

/// Set a user's call forwarding (all three rules at once).
#[utoipa::path(put, path = "/api/v1/agents/{extension}/forwarding", request_body = Forwarding,
    params(("extension" = String, Path, description = "the user")),
    responses((status = 200, body = Forwarding, description = "stored and in effect"),
        (status = 400, body = ErrorBody, description = "a number that leads nowhere, the user's own, or a bad wait"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "another agent's, or an outside number the user's dialing class does not allow"),
        (status = 404, body = ErrorBody)))]
pub(super) async fn set(
    State(desk): State<Arc<Desk>>,
    caller: Caller,
    Path(extension): Path<String>,
    ApiJson(body): ApiJson<Forwarding>,
) -> Result<Json<Forwarding>, ApiError> {
    user(&desk, &caller, &extension)?;
    let rules = body.rules();
    crate::forwarding::check(&extension, &rules, |n| desk.commands.reach(&extension, n))?;
    let record = StoredRules {
        extension: extension.clone(),
        rules: rules.clone(),
    };
    desk.config
        .writer
        .commit(vec![crate::store::Write::put(record)])
        .await?;
    desk.config.forwarding.replace(&extension, rules.clone());
    tracing::info!(
        user = %extension, by = %caller.session.extension,
        always = rules.always.as_deref().unwrap_or("-"),
        busy = rules.busy.as_deref().unwrap_or("-"),
        no_answer = rules.no_answer.as_deref().unwrap_or("-"),
        "forwarding set from the desk"
    );
    Ok(Json(rules.into()))
}
