//! Request routing: (method, path) to a route, the query string, and authentication.

use std::collections::HashMap;

use http::{HeaderMap, Method, header};

use super::error::ApiError;
use crate::config::User;
use crate::model::{ConditionKind, JobKind};

/// A known path. Ids are opaque (`user~name` stays as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Webhooks,
    Webhook(String),
    /// `/v2/actors/{id}/webhooks`, `/v2/acts/{id}/webhooks`, `/v2/actor-tasks/{id}/webhooks`.
    ScopedWebhooks(ConditionKind, String),
    WebhookTest(String),
    WebhookDispatches(String),
    /// `/v2/webhooks/{id}/signing-secret` (hookd's): the key that signs its deliveries.
    WebhookSigningSecret(String),
    /// `/v2/webhooks/{id}/signing-secret/rotate` (hookd's).
    WebhookSigningSecretRotate(String),
    /// `/v2/webhooks/{id}/redeliver` (hookd's): its ended dispatches again, in bulk.
    WebhookRedeliver(String),
    Dispatches,
    Dispatch(String),
    /// `/v2/webhook-dispatches/{id}/redeliver` (hookd's).
    DispatchRedeliver(String),
    Events,
    /// `/v2/actor-runs/{id}`, `/v2/actor-builds/{id}`.
    Job(JobKind, String),
    /// `/healthz`: the process answers. No token.
    Health,
    /// `/readyz`: the process answers and its store takes writes. No token.
    Ready,
    /// `/metrics`: Prometheus metrics; `metrics.token` if set, not a user's token.
    Metrics,
    /// `/admin/backup`: `hookd backup` asks for a snapshot; only the control token opens it.
    AdminBackup,
    /// `/console` and the files under it: the web console. No token.
    Console,
    /// `/v2/hookd/status` (hookd's): the version and the store, for the console.
    Status,
}

impl Route {
    pub fn parse(path: &str) -> Option<Route> {
        match path {
            "/healthz" => return Some(Route::Health),
            "/readyz" => return Some(Route::Ready),
            "/metrics" => return Some(Route::Metrics),
            crate::ops::BACKUP_ROUTE => return Some(Route::AdminBackup),
            p if p == "/console" || p.starts_with("/console/") => return Some(Route::Console),
            _ => {}
        }
        let rest = path.strip_prefix("/v2/")?;
        let segs: Vec<String> =
            rest.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect::<Option<_>>()?;
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        Some(match segs.as_slice() {
            ["webhooks"] => Route::Webhooks,
            ["webhooks", id] => Route::Webhook(id.to_string()),
            ["actors" | "acts", id, "webhooks"] => {
                Route::ScopedWebhooks(ConditionKind::Actor, id.to_string())
            }
            ["actor-tasks", id, "webhooks"] => {
                Route::ScopedWebhooks(ConditionKind::ActorTask, id.to_string())
            }
            ["webhooks", id, "test"] => Route::WebhookTest(id.to_string()),
            ["webhooks", id, "dispatches"] => Route::WebhookDispatches(id.to_string()),
            ["webhooks", id, "redeliver"] => Route::WebhookRedeliver(id.to_string()),
            ["webhooks", id, "signing-secret"] => Route::WebhookSigningSecret(id.to_string()),
            ["webhooks", id, "signing-secret", "rotate"] => {
                Route::WebhookSigningSecretRotate(id.to_string())
            }
            ["webhook-dispatches"] => Route::Dispatches,
            ["webhook-dispatches", id] => Route::Dispatch(id.to_string()),
            ["webhook-dispatches", id, "redeliver"] => Route::DispatchRedeliver(id.to_string()),
            ["webhook-events"] => Route::Events,
            ["hookd", "status"] => Route::Status,
            ["actor-runs", id] => Route::Job(JobKind::Run, id.to_string()),
            ["actor-builds", id] => Route::Job(JobKind::Build, id.to_string()),
            _ => return None,
        })
    }

    /// The methods this route answers, as listed in a 405 message.
    pub fn allowed(&self) -> &'static [Method] {
        match self {
            Route::Webhooks | Route::ScopedWebhooks(..) => &[Method::GET, Method::POST],
            Route::Webhook(_) => &[Method::GET, Method::PUT, Method::DELETE],
            Route::WebhookTest(_)
            | Route::Events
            | Route::AdminBackup
            | Route::WebhookSigningSecretRotate(_)
            | Route::DispatchRedeliver(_)
            | Route::WebhookRedeliver(_) => &[Method::POST],
            Route::WebhookSigningSecret(_) => &[Method::GET],
            Route::WebhookDispatches(_) | Route::Dispatches | Route::Dispatch(_) => &[Method::GET],
            Route::Health | Route::Ready | Route::Metrics | Route::Console | Route::Status => {
                &[Method::GET, Method::HEAD]
            }
            Route::Job(..) => &[Method::GET, Method::PUT],
        }
    }

    /// The route's template, a metrics label and the access log's: ids are not in it, so
    /// the label's values are few.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Webhooks => "/v2/webhooks",
            Route::Webhook(_) => "/v2/webhooks/{webhookId}",
            Route::ScopedWebhooks(ConditionKind::ActorTask, _) => {
                "/v2/actor-tasks/{actorTaskId}/webhooks"
            }
            Route::ScopedWebhooks(..) => "/v2/actors/{actorId}/webhooks",
            Route::WebhookTest(_) => "/v2/webhooks/{webhookId}/test",
            Route::WebhookDispatches(_) => "/v2/webhooks/{webhookId}/dispatches",
            Route::WebhookSigningSecret(_) => "/v2/webhooks/{webhookId}/signing-secret",
            Route::WebhookRedeliver(_) => "/v2/webhooks/{webhookId}/redeliver",
            Route::WebhookSigningSecretRotate(_) => {
                "/v2/webhooks/{webhookId}/signing-secret/rotate"
            }
            Route::Dispatches => "/v2/webhook-dispatches",
            Route::Dispatch(_) => "/v2/webhook-dispatches/{dispatchId}",
            Route::DispatchRedeliver(_) => "/v2/webhook-dispatches/{dispatchId}/redeliver",
            Route::Events => "/v2/webhook-events",
            Route::Job(JobKind::Run, _) => "/v2/actor-runs/{runId}",
            Route::Job(JobKind::Build, _) => "/v2/actor-builds/{buildId}",
            Route::Health => "/healthz",
            Route::Ready => "/readyz",
            Route::Metrics => "/metrics",
            Route::AdminBackup => crate::ops::BACKUP_ROUTE,
            Route::Console => "/console/",
            Route::Status => "/v2/hookd/status",
        }
    }

    /// As Apify lists them in a 405's message: `OPTIONS` (the preflight) first.
    pub fn allowed_text(&self) -> String {
        std::iter::once("OPTIONS")
            .chain(self.allowed().iter().map(Method::as_str))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `%XX` decoding; `None` if the result is not UTF-8 or an escape is broken.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Query parameters; the first occurrence of a name wins.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut map = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) =
                (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
            else {
                continue;
            };
            map.entry(k).or_insert(v);
        }
        Query(map)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::InvalidInput(format!(
                    "Query parameter \"{name}\" must be a non-negative integer"
                ))
            }),
        }
    }

    /// Pagination as Apify does it: `limit` 0 or absent is the maximum; `desc` is 1/0/true/false.
    pub fn page(&self, limit_max: u64) -> Result<crate::store::PageRequest, ApiError> {
        let offset = self.uint("offset")?.unwrap_or(0);
        let limit = match self.uint("limit")? {
            None | Some(0) => limit_max,
            Some(n) => n.min(limit_max),
        };
        let desc = match self.get("desc") {
            None | Some("") | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(_) => {
                return Err(ApiError::InvalidInput(
                    "Query parameter \"desc\" must be one of true, false, 1, 0".into(),
                ));
            }
        };
        Ok(crate::store::PageRequest { offset, limit, desc })
    }
}

/// Equal-time comparison: the time taken does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The user that the request's token (header, else `?token=`) authenticates as.
pub fn authenticate<'u>(
    users: &'u [User],
    headers: &HeaderMap,
    query: &Query,
) -> Result<&'u User, ApiError> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty());
    let token = from_header.or(query.get("token").filter(|t| !t.is_empty()));
    let Some(token) = token else { return Err(ApiError::TokenNotProvided) };
    // Compare against every user so the time does not tell which one was close.
    let mut found = None;
    for u in users {
        if constant_time_eq(u.token.as_bytes(), token.as_bytes()) {
            found = Some(u);
        }
    }
    found.ok_or(ApiError::InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v2/webhooks"), Some(Route::Webhooks));
        assert_eq!(Route::parse("/v2/webhooks/"), Some(Route::Webhooks));
        assert_eq!(Route::parse("/v2/webhooks/abc"), Some(Route::Webhook("abc".into())));
        assert_eq!(
            Route::parse("/v2/acts/me~x/webhooks"),
            Some(Route::ScopedWebhooks(ConditionKind::Actor, "me~x".into()))
        );
        assert_eq!(
            Route::parse("/v2/actors/me%7Ex/webhooks"),
            Some(Route::ScopedWebhooks(ConditionKind::Actor, "me~x".into()))
        );
        assert_eq!(Route::parse("/v2/nope"), None);
        assert_eq!(Route::parse("/webhooks"), None);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn pages() {
        let p = Query::parse(Some("limit=0&offset=5&desc=1")).page(1000).expect("valid");
        assert_eq!((p.offset, p.limit, p.desc), (5, 1000, true));
        let p = Query::parse(Some("limit=5000&desc=false")).page(1000).expect("valid");
        assert_eq!((p.offset, p.limit, p.desc), (0, 1000, false));
        assert!(Query::parse(Some("limit=-1")).page(1000).is_err());
        assert!(Query::parse(Some("desc=maybe")).page(1000).is_err());
    }
}
