//! The web console at `/console/`: a page, a script and a style sheet, embedded in the binary
//! and served without a token (the page asks for one and sends it to `/v2` like any client).
//! A strict Content-Security-Policy keeps every fetch, script and style on this origin.
//! `GET /v2/hookd/status` (hookd's, with a token) tells the overview what the lists cannot:
//! the version and the store.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use hyper::Response;

use super::ApiState;
use super::body::json_response;
use super::error::ApiError;

/// Nothing but this origin's own files and API: no inline script or style, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// (name under `/console/`, content type, bytes).
const ASSETS: [(&str, &str, &str); 3] = [
    ("", "text/html; charset=utf-8", include_str!("../../console/index.html")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("../../console/console.js")),
    ("console.css", "text/css; charset=utf-8", include_str!("../../console/console.css")),
];

/// The answer for `/console` and everything under it: an asset, a redirect from `/console` to
/// `/console/`, or 404.
pub fn serve(path: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(name) = path.strip_prefix("/console/") else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/console/"));
        return Ok(r);
    };
    let Some((_, content_type, text)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(ApiError::NotFound("There is no console page at this URL".into()));
    };
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new hookd serves a new console: the browser asks again each time.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// `GET /v2/hookd/status`: this hookd's version, its store's backend and file size (`null`
/// where the store is no file). The same for every user: nothing in it is a user's.
pub fn status(state: &ApiState) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"data": {
            "version": env!("CARGO_PKG_VERSION"),
            "storeBackend": state.store.backend_name(),
            "storeFileBytes": state.store.file_bytes(),
        }}),
    )
}
