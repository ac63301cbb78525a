//! The agent desktop and the wallboard: static files compiled into the binary
//! (nothing is loaded from anywhere else), served with their content types and
//! a strict Content-Security-Policy.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::Embed;
use std::sync::Arc;

#[derive(Embed)]
#[folder = "src/cti/assets/"]
struct Assets;

/// Only our own files: no outside script, style, font or frame.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn routes() -> Router<Arc<super::Desk>> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route("/wallboard", get(|| async { file("wallboard.html") }))
        .route("/campaigns", get(|| async { file("campaigns.html") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    let Some(f) = Assets::get(name) else {
        return super::api::ApiError::NotFound(format!("no asset {name}")).into_response();
    };
    let kind = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        f.data.into_owned(),
    )
        .into_response()
}
