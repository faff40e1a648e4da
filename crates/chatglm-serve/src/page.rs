//! The chat page served at `GET /` and its assets, embedded in the binary (works offline).

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::error::ApiError;

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The page's script (streaming client, markdown renderer).
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The page's style sheet.
pub const APP_CSS: &str = include_str!("../assets/app.css");
/// The OpenAPI description of the routes.
pub const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");

/// `GET /`.
pub(crate) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /assets/{file}`.
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (body, mime) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::not_found(&format!("/assets/{file}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
