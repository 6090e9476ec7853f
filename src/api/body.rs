//! Request bodies in (bounded read, Content-Encoding decoded with the limit enforced while
//! decoding, JSON parsed) and JSON responses out.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::budget::Charge;
use super::error::ApiError;

pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(JSON_CONTENT_TYPE));
    resp
}

/// A list page in Apify's shape: `{"data": {total, offset, limit, count, desc, items}}`.
pub fn page_response(
    total: u64,
    page: &crate::store::PageRequest,
    items: Vec<Value>,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"data": {
        "total": total,
        "offset": page.offset,
        "limit": page.limit,
        "count": items.len(),
        "desc": page.desc,
        "items": items,
    }});
    json_response(StatusCode::OK, &body)
}

/// A response whose body is JSON text built by hand (a stored object copied as it is).
pub fn json_text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(JSON_CONTENT_TYPE));
    resp
}

pub fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// The answer when the shared budget of request bytes is spent.
pub fn budget_spent(budget_max: usize) -> ApiError {
    ApiError::Unavailable(format!(
        "The server holds its limit of {budget_max} bytes of requests in progress (limits.request_bytes_inflight_max); retry later"
    ))
}

/// Reads the whole body: at most `max` bytes on the wire and `max` bytes after decoding,
/// every byte held charged to `charge` (the budget shared by all requests).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    max: usize,
    timeout: Duration,
    charge: &mut Charge,
) -> Result<Vec<u8>, ApiError> {
    let budget_max = charge.budget_max();
    let encodings = content_encodings(headers)?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared.and_then(|len| len.trim().parse::<u64>().ok()).is_some_and(|n| n > max as u64) {
        return Err(ApiError::TooLarge(max));
    }
    let read = async {
        let mut body = body;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::InvalidRequest(format!("Could not read the request body: {e}"))
            })?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > max {
                return Err(ApiError::TooLarge(max));
            }
            if !charge.grow(data.len()) {
                return Err(budget_spent(budget_max));
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf)
    };
    let mut bytes =
        tokio::time::timeout(timeout, read).await.map_err(|_| ApiError::RequestTimeout)??;
    // Encodings are listed in the order they were applied: undo them from the last. The
    // decoder may write up to `max` bytes: that is charged first, the surplus given back.
    for enc in encodings.iter().rev() {
        if !charge.grow(max) {
            return Err(budget_spent(budget_max));
        }
        let decoded = decode(enc, &bytes, max);
        charge.shrink(max - decoded.as_ref().map_or(0, Vec::len));
        charge.shrink(bytes.len());
        bytes = decoded?;
        tracing::debug!(encoding = enc.name(), decoded_bytes = bytes.len(), "decoded request body");
    }
    Ok(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Brotli,
    Deflate,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Deflate => "deflate",
        }
    }
}

fn content_encodings(headers: &HeaderMap) -> Result<Vec<Encoding>, ApiError> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| {
            ApiError::UnsupportedEncoding(String::from_utf8_lossy(value.as_bytes()).into())
        })?;
        for token in text.split(',').map(|t| t.trim().to_ascii_lowercase()) {
            match token.as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" => out.push(Encoding::Gzip),
                "br" => out.push(Encoding::Brotli),
                "deflate" => out.push(Encoding::Deflate),
                _ => return Err(ApiError::UnsupportedEncoding(token)),
            }
        }
    }
    // Two layers are plenty for any client; more is a decompression bomb in layers.
    if out.len() > 2 {
        return Err(ApiError::UnsupportedEncoding(format!("{} stacked encodings", out.len())));
    }
    Ok(out)
}

/// Decodes at most `max` bytes; one more byte of output means the body is too large.
fn decode(enc: &Encoding, input: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let limit = max as u64 + 1;
    let result = match enc {
        Encoding::Gzip => {
            flate2::read::MultiGzDecoder::new(input).take(limit).read_to_end(&mut out)
        }
        Encoding::Brotli => {
            brotli_decompressor::Decompressor::new(input, 4096).take(limit).read_to_end(&mut out)
        }
        Encoding::Deflate => {
            // HTTP "deflate" is zlib-wrapped (RFC 9110); some clients send raw deflate.
            let zlib = flate2::read::ZlibDecoder::new(input).take(limit).read_to_end(&mut out);
            if zlib.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(input).take(limit).read_to_end(&mut out)
            } else {
                zlib
            }
        }
    };
    result
        .map_err(|e| ApiError::InvalidRequest(format!("Could not decode the request body: {e}")))?;
    if out.len() > max {
        return Err(ApiError::TooLarge(max));
    }
    Ok(out)
}

/// Parses a body that must be one JSON object.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(
            "The request body must be a JSON object, but it is empty".into(),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::InvalidRequest("The request body must be a JSON object".into())),
        Err(e) => Err(ApiError::InvalidRequest(format!("The request body is not valid JSON: {e}"))),
    }
}
