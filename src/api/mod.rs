//! The HTTP API: an HTTP/1.1 accept loop (bounded connections, header and body timeouts,
//! graceful shutdown) and the dispatch of each request to its route.

mod body;
mod budget;
mod console;
mod cors;
mod dispatches;
mod error;
mod event_input;
mod events;
mod redelivery;
mod render;
mod routes;
mod signing;
mod webhooks;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Limits, User};
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::store::{DispatchScope, Store, WebhookScope};
use body::json_response;
pub use budget::ByteBudget;
use budget::TREE_BYTES_PER_JSON_BYTE;
pub use error::ApiError;
pub use render::{RenderPool, Renderer};
use routes::Route;
pub use routes::{Query, authenticate};

/// Apify's page size maximum.
pub const LIST_LIMIT_MAX: u64 = 1000;
/// Bytes hyper buffers for one request head.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Header lines per request.
const HEADERS_MAX: usize = 100;

/// What every request handler can reach.
pub struct ApiState {
    pub store: Store,
    /// Replaced whole on SIGHUP (`app.rs`); a request authenticates against the list it read.
    pub users: std::sync::RwLock<Arc<Vec<User>>>,
    pub limits: Limits,
    pub renderer: Arc<Renderer>,
    pub render_pool: RenderPool,
    /// Bytes held by requests in progress (`limits.request_bytes_inflight_max`).
    pub request_bytes: Arc<ByteBudget>,
    pub metrics: Arc<Metrics>,
    /// `metrics.token`: empty means `/metrics` needs no token.
    pub metrics_token: String,
    /// Log a line per request (`log.access_log`).
    pub access_log: bool,
    /// Set once shutdown has begun: `/readyz` answers 503 from then on.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The token of `hookd backup` (in `data_dir/control.token`), and where backups go.
    pub control_token: String,
    /// `delivery.signing_rotation_overlap_ms`.
    pub signing_rotation_overlap_ms: u64,
    pub backup_dir: std::path::PathBuf,
}

/// Serves `listener` until `shutdown` resolves, then lets open requests finish for up to
/// `limits.shutdown_grace_ms`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(state.limits.connections_max));
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(state.limits.header_read_timeout_ms))
        .max_buf_size(HEAD_BYTES_MAX)
        .max_headers(HEADERS_MAX)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    // Runs until shutdown: each pass takes a connection permit, then accepts.
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning or exiting.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(peer_slot) =
            PeerSlot::take(&peers, peer.ip(), state.limits.connections_per_peer_max)
        else {
            // Over its share: closed at once, so one peer cannot hold every connection slot.
            tracing::debug!(%peer, "connection refused: too many open from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(peer_slot);
            drop(permit);
        });
    }
    drop(listener);
    let grace = Duration::from_millis(state.limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("open connections did not finish within the shutdown grace period");
    }
}

/// Reads the request body, every byte charged to `charge`.
async fn read_bytes(
    state: &ApiState,
    headers: &http::HeaderMap,
    body: Incoming,
    charge: &mut budget::Charge,
) -> Result<Vec<u8>, ApiError> {
    body::read_body(
        headers,
        body,
        state.limits.body_bytes_max,
        Duration::from_millis(state.limits.body_read_timeout_ms),
        charge,
    )
    .await
}

/// One open connection counted against its peer address; the count drops with it.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, unless it already has `max` open connections. The map holds one entry
    /// per address with an open connection: at most `limits.connections_max`.
    fn take(
        peers: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<PeerSlot> {
        let mut map = peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = map.entry(ip).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(PeerSlot { peers: peers.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = map.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Answers one request; errors become Apify error bodies. Counts it in the metrics and, with
/// `log.access_log`, logs it (the path without its query, which may hold a token).
pub async fn handle(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = state.access_log.then(|| req.uri().path().to_string());
    let mut route_name = "unmatched";
    let mut response = match route(state, req, &mut route_name).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    cors::allow_any_origin(&mut response);
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let code = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let m = &state.metrics;
    m.http_requests.get_or_create(&HttpLabels { route: route_name, code }).inc();
    m.http_request_seconds.get_or_create(&RouteLabels { route: route_name }).observe(seconds);
    if let Some(path) = path {
        tracing::info!(
            target: "hookd::access",
            %method,
            path,
            route = route_name,
            status,
            duration_ms = (seconds * 1000.0 * 1000.0).round() / 1000.0,
            "request"
        );
    }
    response
}

async fn route(
    state: &ApiState,
    req: Request<Incoming>,
    route_name: &mut &'static str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let Some(route) = Route::parse(parts.uri.path()) else {
        return Err(ApiError::NotFound("There is no API endpoint at this URL".into()));
    };
    *route_name = route.name();
    if parts.method == Method::OPTIONS {
        return Ok(cors::preflight(&route, &parts.headers));
    }
    let method = cors::effective_method(&parts.method, &query)?;
    if !route.allowed().contains(&method) {
        return Err(ApiError::MethodNotAllowed(route.allowed_text()));
    }
    // Probes answer without a token: a load balancer or systemd has none.
    match route {
        Route::Health => return Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Ready => return ready(state),
        Route::Metrics => return metrics(state, &parts.headers, &query).await,
        Route::AdminBackup => return backup(state, &parts.headers).await,
        Route::Console => return console::serve(parts.uri.path()),
        _ => {}
    }
    let users = state.users.read().map(|u| u.clone()).unwrap_or_else(|p| p.into_inner().clone());
    let user = routes::authenticate(&users, &parts.headers, &query)?;
    // Everything this request holds (body, rendered dispatches) is charged here until it is
    // answered.
    let mut charge = state.request_bytes.charge();
    let headers = &parts.headers;
    let mut read_bytes = async |body: Incoming| read_bytes(state, headers, body, &mut charge).await;
    let mut read_json = async |body: Incoming| {
        let bytes = read_bytes(body).await?;
        // The tree a JSON body parses into is charged too (a body of tiny values takes many
        // times its bytes): webhook bodies are small, so the budget fits thousands of them.
        let tree_bytes = bytes.len() * TREE_BYTES_PER_JSON_BYTE;
        let budget_max = state.request_bytes.max();
        if tree_bytes > budget_max {
            return Err(ApiError::TooLarge(budget_max / TREE_BYTES_PER_JSON_BYTE));
        }
        let mut tree_charge = state.request_bytes.charge();
        if !tree_charge.grow(tree_bytes) {
            return Err(body::budget_spent(budget_max));
        }
        Ok((body::json_object(&bytes)?, tree_charge))
    };
    match (route, &method) {
        (Route::Webhooks, &Method::GET) => {
            webhooks::list(state, user, WebhookScope::All, &query).await
        }
        (Route::Webhooks, _) => webhooks::create(state, user, read_json(body).await?.0, None).await,
        (Route::ScopedWebhooks(kind, id), &Method::GET) => {
            webhooks::list(state, user, WebhookScope::Condition(kind, id), &query).await
        }
        (Route::ScopedWebhooks(kind, id), _) => {
            webhooks::create(state, user, read_json(body).await?.0, Some((kind, id))).await
        }
        (Route::Webhook(id), &Method::GET) => webhooks::get(state, user, id).await,
        (Route::Webhook(id), &Method::PUT) => {
            webhooks::update(state, user, id, read_json(body).await?.0).await
        }
        (Route::Webhook(id), _) => webhooks::delete(state, user, id).await,
        (Route::WebhookTest(id), _) => dispatches::test(state, user, id).await,
        (Route::WebhookSigningSecret(id), _) => signing::get(state, user, id).await,
        (Route::WebhookSigningSecretRotate(id), _) => {
            signing::rotate(state, user, id, &read_bytes(body).await?).await
        }
        (Route::WebhookDispatches(id), _) => {
            dispatches::list(state, user, DispatchScope::Webhook(id), &query).await
        }
        (Route::Dispatches, _) => dispatches::list(state, user, DispatchScope::User, &query).await,
        (Route::Dispatch(id), _) => dispatches::get(state, user, id).await,
        (Route::DispatchRedeliver(id), _) => dispatches::redeliver(state, user, id).await,
        (Route::WebhookRedeliver(id), _) => {
            redelivery::redeliver_all(state, user, id, &read_bytes(body).await?).await
        }
        (Route::Events, _) => {
            let bytes = read_bytes(body).await?;
            events::ingest(state, user, bytes, state.request_bytes.charge()).await
        }
        (Route::Status, _) => Ok(console::status(state)),
        (Route::Job(kind, id), &Method::GET) => events::get_job(state, user, kind, id).await,
        (Route::Job(kind, id), _) => {
            events::put_job(state, user, kind, id, read_bytes(body).await?).await
        }
        (
            Route::Health | Route::Ready | Route::Metrics | Route::AdminBackup | Route::Console,
            _,
        ) => Err(ApiError::Internal("probe routed late".into())),
    }
}

/// `/readyz`: 200 while the store takes writes; 503 once a storage error has stopped it (the
/// process is then shutting down).
fn ready(state: &ApiState) -> Result<Response<Full<Bytes>>, ApiError> {
    let fatal = state.store.fatal();
    if fatal.is_failed() {
        return Err(ApiError::Unavailable(format!(
            "The store stopped after a storage error: {}",
            fatal.message()
        )));
    }
    if state.stopping.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::Unavailable("hookd is shutting down".into()));
    }
    Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
}

/// `/admin/backup`: writes a snapshot of the store into `backup_dir` and names the file.
async fn backup(
    state: &ApiState,
    headers: &http::HeaderMap,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let operator = [User { id: "operator".into(), token: state.control_token.clone() }];
    routes::authenticate(&operator, headers, &Query::default())?;
    let internal = |e: String| ApiError::Internal(format!("backup: {e}"));
    create_private_dir(&state.backup_dir).map_err(|e| internal(e.to_string()))?;
    let name = format!(
        "hookd-{}.redb",
        crate::sys::new_time_id(crate::sys::now_ms()).map_err(|e| internal(e.to_string()))?
    );
    let file = state.backup_dir.join(name);
    let started = std::time::Instant::now();
    let entries = state.store.backup(file.clone()).await.map_err(|e| internal(e.to_string()))?;
    tracing::info!(
        file = %file.display(),
        entries,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup written"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"data": {"file": file.to_string_lossy(), "entries": entries}}),
    ))
}

/// Creates `dir` (mode 0700) unless it exists.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// `/metrics`: every metric, with the store's gauges refreshed. When `metrics.token` is set,
/// it is the only token accepted (a user's token is not: metrics span every user).
async fn metrics(
    state: &ApiState,
    headers: &http::HeaderMap,
    query: &Query,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !state.metrics_token.is_empty() {
        let scraper = [User { id: "metrics".into(), token: state.metrics_token.clone() }];
        routes::authenticate(&scraper, headers, query)?;
    }
    state
        .store
        .refresh_gauges(crate::sys::now_ms())
        .await
        .map_err(|e| ApiError::Internal(format!("metrics: {e}")))?;
    let text = state.metrics.encode().map_err(|e| ApiError::Internal(format!("metrics: {e}")))?;
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
        .body(Full::new(Bytes::from(text)))
        .map_err(|e| ApiError::Internal(format!("metrics: {e}")))
}
