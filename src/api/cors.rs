//! Browser access as Apify's API allows it: every answer may be read from any origin (the API
//! authenticates by a token the page sends, never by cookies, so no origin gains anything), a
//! preflight `OPTIONS` is answered without a token, and a GET may carry `?method=` for clients
//! that can only send GET.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ALLOW,
    HeaderMap, HeaderValue,
};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::Response;

use super::error::ApiError;
use super::routes::{Query, Route};

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE_S: &str = "86400";
/// Headers a page may send when the preflight does not list its own.
const ALLOW_HEADERS_DEFAULT: &str = "Authorization, Content-Type, Content-Encoding";
/// A preflight's listed headers longer than this are not echoed (the default list is sent).
const REQUEST_HEADERS_BYTES_MAX: usize = 1024;

/// Adds the headers every answer carries.
pub fn allow_any_origin(response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location"));
}

/// The answer to `OPTIONS` on a route: 204 with the route's methods.
pub fn preflight(route: &Route, request: &HeaderMap) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    let methods = route.allowed_text();
    if let Ok(v) = HeaderValue::from_str(&methods) {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        headers.insert(ALLOW, v);
    }
    // Echo what the page asks to send: a token header and a JSON body are all the API reads.
    let asked = request
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= REQUEST_HEADERS_BYTES_MAX)
        .cloned()
        .unwrap_or(HeaderValue::from_static(ALLOW_HEADERS_DEFAULT));
    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked);
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE_S));
    response
}

/// The method a request acts as: a GET's `?method=POST|PUT|DELETE` (any case) stands for that
/// method; any other value is refused, naming it. Other requests act as themselves.
pub fn effective_method(method: &Method, query: &Query) -> Result<Method, ApiError> {
    let Some(asked) = query.get("method").filter(|_| method == Method::GET) else {
        return Ok(method.clone());
    };
    match asked.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "DELETE" => Ok(Method::DELETE),
        _ => Err(ApiError::InvalidRequest(format!(
            "The query parameter method={asked:?} is not one of GET, POST, PUT, DELETE"
        ))),
    }
}
