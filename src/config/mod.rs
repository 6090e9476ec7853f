//! Configuration: TOML file, then `HOOKD_*` environment overrides, validated into typed values.
//! Pure: [`Config::load`] takes the file text and the environment as arguments.
//! Every bound in the process lives in [`Limits`].

mod store;

pub use store::{Backend as StoreBackend, StoreConfig};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A configuration error, naming the key (or environment variable) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

/// One API user and the bearer token that authenticates as it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: String,
    pub token: String,
}

impl fmt::Debug for User {
    // Tokens never reach logs, not even through Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("id", &self.id).field("token", &"<redacted>").finish()
    }
}

/// How webhooks are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// One call's deadline: connect, TLS, send and response.
    pub timeout_ms: u64,
    /// Waits before each retry; the number of entries is the number of retries.
    pub retry_delays_ms: Vec<u64>,
    /// Allow targets on loopback, private and other non-global addresses (tests, development).
    pub allow_private_targets: bool,
    /// Calls in flight at once, over all targets.
    pub inflight_max: usize,
    /// HTTP exchanges at once with one target (scheme, host and port), so that one slow or
    /// dead target cannot take every slot. (A call frees its slot when the exchange ends, not
    /// when its outcome is committed.)
    pub per_target_inflight_max: usize,
    /// Bytes of a target's response body that are read and kept in the dispatch's `calls`.
    pub response_body_bytes_max: usize,
    /// Calls in flight at once for one user's dispatches, over all their targets, so that one
    /// user's slow or hanging targets leave the other users `inflight_max - this` slots.
    pub per_user_inflight_max: usize,
    /// Sign every call with the webhook's key (Standard Webhooks `webhook-*` headers).
    pub sign: bool,
    /// After a key rotation, the previous key keeps signing beside the new one this long.
    pub signing_rotation_overlap_ms: u64,
}

/// Every bound in the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open HTTP connections at once; further connections wait in the kernel's backlog.
    pub connections_max: usize,
    /// Request body size after decoding (Apify's limit is 9 MiB).
    pub body_bytes_max: usize,
    /// Time a client has to send the request head; also closes idle keep-alive connections.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send the request body.
    pub body_read_timeout_ms: u64,
    /// Write operations waiting for the writer thread; when full, writes answer 503.
    pub write_queue_max: usize,
    /// Write operations committed together in one transaction (one fsync).
    pub write_batch_max: usize,
    /// Bytes of the store's own page cache (the OS caches the file as well).
    pub store_cache_bytes: usize,
    /// New dispatches whose per-webhook stats and list entries wait (on disk, in a small
    /// append-only table, and in memory) before one commit folds them in; see ARCHITECTURE.md.
    pub webhook_pending_max: usize,
    /// Bytes of one rendered payload or headers template.
    pub template_output_bytes_max: usize,
    /// Parsed templates kept in memory (one entry per distinct template text).
    pub template_cache_entries_max: usize,
    /// Bytes of template text behind the parsed templates kept in memory (a parsed template
    /// takes about three times its text).
    pub template_cache_bytes_max: usize,
    /// Open HTTP connections from one peer address; more are closed at once, so one
    /// client (a slowloris) cannot take every connection slot. Behind a reverse proxy every
    /// client has the proxy's address: raise it to `connections_max` there.
    pub connections_per_peer_max: usize,
    /// Bytes of request bodies and of their rendered dispatches held at once, over all
    /// requests; a request that would go past it is answered 503 (retry later).
    pub request_bytes_inflight_max: usize,
    /// Webhooks one user may have; a create past it is refused (`too-many-webhooks`).
    pub webhooks_per_user_max: usize,
    /// Bytes of one payload or headers template, checked at create and update.
    pub template_bytes_max: usize,
    /// `{{variables}}` in one template (raw ones, and those in strings when interpolated).
    pub template_variables_max: usize,
    /// Dispatches one ingest request (or job report) may create; more refuses it whole.
    pub dispatches_per_request_max: usize,
    /// Bytes of rendered payloads and headers one ingest request may produce.
    pub rendered_bytes_per_request_max: usize,
    /// Threads that render large requests off the async workers (small ones render inline).
    pub render_threads: usize,
    /// Time open requests get to finish after SIGTERM before connections are dropped.
    pub shutdown_grace_ms: u64,
}

/// How long finished records are kept, and how large the store file may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// SUCCEEDED and FAILED dispatches older than this (by the time they ended) are deleted,
    /// with their calls and list entries, then the events none of whose dispatches is left
    /// (and their idempotency answers). 0 keeps them forever.
    pub finished_max_age_ms: u64,
    /// While the store file is larger than this, retention deletes the oldest finished
    /// records whatever their age, so the file stops growing. 0: no bound.
    pub store_bytes_max: u64,
}

/// How the process logs (to stderr; journald keeps it under systemd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// `text` (one line per record) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `hookd=debug,warn`... `RUST_LOG`, when set, wins.
    pub level: String,
    /// A line per HTTP request at info (target `hookd::access`).
    pub access_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `GET /metrics`.
#[derive(Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// When not empty, a scrape must send it as a bearer token (users' tokens are refused).
    pub token: String,
}

impl fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.token.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("MetricsConfig").field("token", &shown).finish()
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub users: Vec<User>,
    pub delivery: Delivery,
    pub limits: Limits,
    pub retention: Retention,
    pub store: StoreConfig,
    pub log: Log,
    pub metrics: MetricsConfig,
}

/// Apify's schedule: 60 s doubling, 11 retries.
fn apify_retry_delays_ms() -> Vec<u64> {
    (0..11).map(|i| 60_000u64 << i).collect()
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            users: Vec::new(),
            delivery: Delivery {
                timeout_ms: 120_000,
                retry_delays_ms: apify_retry_delays_ms(),
                allow_private_targets: false,
                inflight_max: 256,
                per_target_inflight_max: 16,
                response_body_bytes_max: 2048,
                per_user_inflight_max: 64,
                sign: true,
                signing_rotation_overlap_ms: 24 * 3600 * 1000,
            },
            limits: Limits {
                connections_max: 1024,
                body_bytes_max: 9 * 1024 * 1024,
                header_read_timeout_ms: 10_000,
                body_read_timeout_ms: 30_000,
                write_queue_max: 8192,
                write_batch_max: 1000,
                store_cache_bytes: 16 * 1024 * 1024,
                webhook_pending_max: 32 * 1024,
                template_output_bytes_max: 4 * 1024 * 1024,
                template_cache_entries_max: 10_000,
                template_cache_bytes_max: 16 * 1024 * 1024,
                connections_per_peer_max: 256,
                request_bytes_inflight_max: 256 * 1024 * 1024,
                webhooks_per_user_max: 1000,
                template_bytes_max: 64 * 1024,
                template_variables_max: 1000,
                dispatches_per_request_max: 10_000,
                rendered_bytes_per_request_max: 64 * 1024 * 1024,
                render_threads: 1,
                shutdown_grace_ms: 10_000,
            },
            retention: Retention { finished_max_age_ms: 30 * 24 * 3600 * 1000, store_bytes_max: 0 },
            store: StoreConfig::default(),
            log: Log { format: LogFormat::Text, level: "info".into(), access_log: true },
            metrics: MetricsConfig { token: String::new() },
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<String>,
    users: Option<Vec<User>>,
    delivery: Option<RawDelivery>,
    limits: Option<RawLimits>,
    retention: Option<RawRetention>,
    store: Option<store::RawStore>,
    log: Option<RawLog>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    access_log: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    token: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    finished_max_age_ms: Option<u64>,
    store_bytes_max: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    timeout_ms: Option<u64>,
    retry_delays_ms: Option<Vec<u64>>,
    allow_private_targets: Option<bool>,
    inflight_max: Option<u64>,
    per_target_inflight_max: Option<u64>,
    response_body_bytes_max: Option<u64>,
    per_user_inflight_max: Option<u64>,
    sign: Option<bool>,
    signing_rotation_overlap_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections_max: Option<u64>,
    body_bytes_max: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    write_queue_max: Option<u64>,
    write_batch_max: Option<u64>,
    store_cache_bytes: Option<u64>,
    webhook_pending_max: Option<u64>,
    template_output_bytes_max: Option<u64>,
    template_cache_entries_max: Option<u64>,
    template_cache_bytes_max: Option<u64>,
    connections_per_peer_max: Option<u64>,
    request_bytes_inflight_max: Option<u64>,
    webhooks_per_user_max: Option<u64>,
    template_bytes_max: Option<u64>,
    template_variables_max: Option<u64>,
    dispatches_per_request_max: Option<u64>,
    rendered_bytes_per_request_max: Option<u64>,
    render_threads: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

const ENV_PREFIX: &str = "HOOKD_";
/// A delay longer than this is surely a typo (30 days).
const RETRY_DELAY_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
const RETRIES_MAX: usize = 100;

impl Config {
    /// Reads the configuration from a TOML text (or none) and the `HOOKD_*` variables of `env`.
    pub fn load(
        file_text: Option<&str>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = match file_text {
            Some(text) => toml::from_str(text).map_err(|e| err("file", e.to_string()))?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err("file", e.to_string()))?;
        // A bad value is named by where it came from: the variable, if one set it.
        Config::from_raw(raw).map_err(|mut e| {
            let var = Config::env_name(e.key.split('[').next().unwrap_or(&e.key));
            if env.contains_key(&var) {
                e.key = format!("{var} (for {})", e.key);
            }
            e
        })
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let listen = match raw.listen {
            Some(s) => s.parse().map_err(|_| {
                err(
                    "listen",
                    format!(
                        "{s:?} is not an IP address and port such as 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (host names such as localhost are not accepted)"
                    ),
                )
            })?,
            None => d.listen,
        };
        let data_dir = match raw.data_dir {
            Some(s) if s.is_empty() => return Err(err("data_dir", "must not be empty")),
            Some(s) => PathBuf::from(s),
            None => d.data_dir,
        };
        let users = raw.users.unwrap_or_default();
        check_users(&users)?;
        let size = |key: &str, v: Option<u64>, def: usize| -> Result<usize, ConfigError> {
            let v = positive(key, v, def as u64)?;
            usize::try_from(v).map_err(|_| err(key, "is too large"))
        };
        let rd = raw.delivery.unwrap_or_default();
        let dd = &d.delivery;
        let delivery = Delivery {
            timeout_ms: positive("delivery.timeout_ms", rd.timeout_ms, d.delivery.timeout_ms)?,
            retry_delays_ms: rd.retry_delays_ms.unwrap_or_else(|| dd.retry_delays_ms.clone()),
            allow_private_targets: rd.allow_private_targets.unwrap_or(dd.allow_private_targets),
            inflight_max: size("delivery.inflight_max", rd.inflight_max, dd.inflight_max)?,
            per_target_inflight_max: size(
                "delivery.per_target_inflight_max",
                rd.per_target_inflight_max,
                dd.per_target_inflight_max,
            )?,
            response_body_bytes_max: size(
                "delivery.response_body_bytes_max",
                rd.response_body_bytes_max,
                dd.response_body_bytes_max,
            )?,
            per_user_inflight_max: size(
                "delivery.per_user_inflight_max",
                rd.per_user_inflight_max,
                dd.per_user_inflight_max,
            )?,
            sign: rd.sign.unwrap_or(dd.sign),
            signing_rotation_overlap_ms: rd
                .signing_rotation_overlap_ms
                .unwrap_or(dd.signing_rotation_overlap_ms),
        };
        if delivery.retry_delays_ms.len() > RETRIES_MAX {
            return Err(err(
                "delivery.retry_delays_ms",
                format!("has more than {RETRIES_MAX} entries"),
            ));
        }
        if let Some(bad) = delivery.retry_delays_ms.iter().find(|&&ms| ms > RETRY_DELAY_MS_MAX) {
            return Err(err(
                "delivery.retry_delays_ms",
                format!("{bad} is longer than {RETRY_DELAY_MS_MAX} ms (30 days)"),
            ));
        }
        let rl = raw.limits.unwrap_or_default();
        let dl = &d.limits;
        let limits = Limits {
            connections_max: size(
                "limits.connections_max",
                rl.connections_max,
                dl.connections_max,
            )?,
            body_bytes_max: size("limits.body_bytes_max", rl.body_bytes_max, dl.body_bytes_max)?,
            header_read_timeout_ms: positive(
                "limits.header_read_timeout_ms",
                rl.header_read_timeout_ms,
                dl.header_read_timeout_ms,
            )?,
            body_read_timeout_ms: positive(
                "limits.body_read_timeout_ms",
                rl.body_read_timeout_ms,
                dl.body_read_timeout_ms,
            )?,
            write_queue_max: size(
                "limits.write_queue_max",
                rl.write_queue_max,
                dl.write_queue_max,
            )?,
            write_batch_max: size(
                "limits.write_batch_max",
                rl.write_batch_max,
                dl.write_batch_max,
            )?,
            store_cache_bytes: size(
                "limits.store_cache_bytes",
                rl.store_cache_bytes,
                dl.store_cache_bytes,
            )?,
            webhook_pending_max: size(
                "limits.webhook_pending_max",
                rl.webhook_pending_max,
                dl.webhook_pending_max,
            )?,
            template_output_bytes_max: size(
                "limits.template_output_bytes_max",
                rl.template_output_bytes_max,
                dl.template_output_bytes_max,
            )?,
            template_cache_entries_max: size(
                "limits.template_cache_entries_max",
                rl.template_cache_entries_max,
                dl.template_cache_entries_max,
            )?,
            template_cache_bytes_max: size(
                "limits.template_cache_bytes_max",
                rl.template_cache_bytes_max,
                dl.template_cache_bytes_max,
            )?,
            connections_per_peer_max: size(
                "limits.connections_per_peer_max",
                rl.connections_per_peer_max,
                dl.connections_per_peer_max,
            )?,
            request_bytes_inflight_max: size(
                "limits.request_bytes_inflight_max",
                rl.request_bytes_inflight_max,
                dl.request_bytes_inflight_max,
            )?,
            webhooks_per_user_max: size(
                "limits.webhooks_per_user_max",
                rl.webhooks_per_user_max,
                dl.webhooks_per_user_max,
            )?,
            template_bytes_max: size(
                "limits.template_bytes_max",
                rl.template_bytes_max,
                dl.template_bytes_max,
            )?,
            template_variables_max: size(
                "limits.template_variables_max",
                rl.template_variables_max,
                dl.template_variables_max,
            )?,
            dispatches_per_request_max: size(
                "limits.dispatches_per_request_max",
                rl.dispatches_per_request_max,
                dl.dispatches_per_request_max,
            )?,
            rendered_bytes_per_request_max: size(
                "limits.rendered_bytes_per_request_max",
                rl.rendered_bytes_per_request_max,
                dl.rendered_bytes_per_request_max,
            )?,
            render_threads: size("limits.render_threads", rl.render_threads, dl.render_threads)?,
            shutdown_grace_ms: positive(
                "limits.shutdown_grace_ms",
                rl.shutdown_grace_ms,
                dl.shutdown_grace_ms,
            )?,
        };
        let rr = raw.retention.unwrap_or_default();
        let retention = Retention {
            finished_max_age_ms: rr.finished_max_age_ms.unwrap_or(d.retention.finished_max_age_ms),
            store_bytes_max: rr.store_bytes_max.unwrap_or(d.retention.store_bytes_max),
        };
        let rlog = raw.log.unwrap_or_default();
        let log = Log {
            format: match rlog.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(err(
                        "log.format",
                        format!("{other:?} is not \"text\" or \"json\""),
                    ));
                }
            },
            level: match rlog.level {
                Some(l) if l.trim().is_empty() => {
                    return Err(err("log.level", "must not be empty"));
                }
                Some(l) => l,
                None => d.log.level.clone(),
            },
            access_log: rlog.access_log.unwrap_or(d.log.access_log),
        };
        let token = raw.metrics.and_then(|m| m.token).unwrap_or_default();
        if token.len() > 512 || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(err(
                "metrics.token",
                "must be at most 512 printable ASCII characters without spaces",
            ));
        }
        let metrics = MetricsConfig { token };
        let store = StoreConfig::from_raw(raw.store)?;
        Ok(Config { listen, data_dir, users, delivery, limits, retention, store, log, metrics })
    }

    fn to_raw(&self) -> RawConfig {
        let l = &self.limits;
        RawConfig {
            listen: Some(self.listen.to_string()),
            data_dir: Some(self.data_dir.to_string_lossy().into_owned()),
            users: Some(self.users.clone()),
            delivery: Some(RawDelivery {
                timeout_ms: Some(self.delivery.timeout_ms),
                retry_delays_ms: Some(self.delivery.retry_delays_ms.clone()),
                allow_private_targets: Some(self.delivery.allow_private_targets),
                inflight_max: Some(self.delivery.inflight_max as u64),
                per_target_inflight_max: Some(self.delivery.per_target_inflight_max as u64),
                response_body_bytes_max: Some(self.delivery.response_body_bytes_max as u64),
                per_user_inflight_max: Some(self.delivery.per_user_inflight_max as u64),
                sign: Some(self.delivery.sign),
                signing_rotation_overlap_ms: Some(self.delivery.signing_rotation_overlap_ms),
            }),
            limits: Some(RawLimits {
                connections_max: Some(l.connections_max as u64),
                body_bytes_max: Some(l.body_bytes_max as u64),
                header_read_timeout_ms: Some(l.header_read_timeout_ms),
                body_read_timeout_ms: Some(l.body_read_timeout_ms),
                write_queue_max: Some(l.write_queue_max as u64),
                write_batch_max: Some(l.write_batch_max as u64),
                store_cache_bytes: Some(l.store_cache_bytes as u64),
                webhook_pending_max: Some(l.webhook_pending_max as u64),
                template_output_bytes_max: Some(l.template_output_bytes_max as u64),
                template_cache_entries_max: Some(l.template_cache_entries_max as u64),
                template_cache_bytes_max: Some(l.template_cache_bytes_max as u64),
                connections_per_peer_max: Some(l.connections_per_peer_max as u64),
                request_bytes_inflight_max: Some(l.request_bytes_inflight_max as u64),
                webhooks_per_user_max: Some(l.webhooks_per_user_max as u64),
                template_bytes_max: Some(l.template_bytes_max as u64),
                template_variables_max: Some(l.template_variables_max as u64),
                dispatches_per_request_max: Some(l.dispatches_per_request_max as u64),
                rendered_bytes_per_request_max: Some(l.rendered_bytes_per_request_max as u64),
                render_threads: Some(l.render_threads as u64),
                shutdown_grace_ms: Some(l.shutdown_grace_ms),
            }),
            retention: Some(RawRetention {
                finished_max_age_ms: Some(self.retention.finished_max_age_ms),
                store_bytes_max: Some(self.retention.store_bytes_max),
            }),
            store: Some(self.store.to_raw()),
            log: Some(RawLog {
                format: Some(
                    match self.log.format {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    }
                    .into(),
                ),
                level: Some(self.log.level.clone()),
                access_log: Some(self.log.access_log),
            }),
            metrics: Some(RawMetrics { token: Some(self.metrics.token.clone()) }),
        }
    }

    /// Every key as a dotted path with its default value, in file order.
    pub fn known_keys() -> Vec<(String, toml::Value)> {
        let mut out = Vec::new();
        let Ok(toml::Value::Table(t)) = toml::Value::try_from(Config::default().to_raw()) else {
            return out;
        };
        for (k, v) in t {
            match v {
                toml::Value::Table(section) => {
                    for (sk, sv) in section {
                        out.push((format!("{k}.{sk}"), sv));
                    }
                }
                other => out.push((k, other)),
            }
        }
        out
    }

    /// The environment variable that overrides a dotted key.
    pub fn env_name(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
    }
}

/// Levenshtein distance, for suggesting the setting a misspelt variable meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn positive(key: &str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match v {
        Some(0) => Err(err(key, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn check_users(users: &[User]) -> Result<(), ConfigError> {
    for (i, u) in users.iter().enumerate() {
        let ok_id = !u.id.is_empty()
            && u.id.len() <= 64
            && u.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_id {
            return Err(err(
                format!("users[{i}].id"),
                "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -",
            ));
        }
        if u.token.is_empty()
            || u.token.len() > 512
            || u.token.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(err(
                format!("users[{i}].token"),
                "must be 1 to 512 printable ASCII characters without spaces",
            ));
        }
        if users[..i].iter().any(|o| o.id == u.id) {
            return Err(err(format!("users[{i}].id"), format!("{:?} is listed twice", u.id)));
        }
        if users[..i].iter().any(|o| o.token == u.token) {
            return Err(err(format!("users[{i}].token"), "is the same as another user's token"));
        }
    }
    Ok(())
}

/// Puts every `HOOKD_*` variable that names a setting into `table` under its key. One that
/// looks like a setting but is none (`HOOKD_<SECTION>_...` of a known section, or a near miss
/// of a setting's name) is an error with the nearest name; any other is not hookd's and is left
/// alone (`HOOKD_LOG=debug` is not a setting: `HOOKD_LOG_LEVEL` is).
fn apply_env(table: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let known = Config::known_keys();
    for (name, text) in env.iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)) {
        let Some((key, default)) = known.iter().find(|(k, _)| &Config::env_name(k) == name) else {
            let in_section = known.iter().filter_map(|(k, _)| k.split_once('.')).any(|(s, _)| {
                name.starts_with(&format!("{ENV_PREFIX}{}_", s.to_ascii_uppercase()))
            });
            let nearest = known
                .iter()
                .map(|(k, _)| Config::env_name(k))
                .min_by_key(|candidate| edit_distance(candidate, name));
            let distance = nearest.as_ref().map_or(usize::MAX, |n| edit_distance(n, name));
            if !in_section && distance > 2 {
                continue;
            }
            let hint = match nearest {
                Some(n) if distance <= name.len() / 3 => format!("; did you mean {n}?"),
                _ => String::new(),
            };
            return Err(err(name.clone(), format!("is not a hookd setting{hint}")));
        };
        let value = if default.is_str() {
            toml::Value::String(text.clone())
        } else {
            let doc: toml::Table = toml::from_str(&format!("v = {text}"))
                .map_err(|_| err(name.clone(), format!("{text:?} is not a TOML value")))?;
            doc.get("v").cloned().ok_or_else(|| err(name.clone(), "has no value"))?
        };
        // A value of the wrong type is named here, by its variable, not later as the file's.
        if std::mem::discriminant(&value) != std::mem::discriminant(default) {
            return Err(err(
                name.clone(),
                format!("{text:?} is not {} (like the default, {default})", default.type_str()),
            ));
        }
        match key.split_once('.') {
            None => {
                table.insert(key.clone(), value);
            }
            Some((section, sub)) => {
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(t) = entry else {
                    return Err(err(section, "must be a table"));
                };
                t.insert(sub.to_string(), value);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(Some(text), &env)
    }

    #[test]
    fn example_file_lists_every_key_and_equals_the_defaults() {
        let text = include_str!("../../config.example.toml");
        assert_eq!(load(text, &[]), Ok(Config::default()));
        for (key, _) in Config::known_keys() {
            let leaf = key.rsplit('.').next().unwrap_or(&key);
            assert!(text.contains(&format!("{leaf} =")), "config.example.toml lacks {key}");
        }
    }

    /// Every commented example in config.example.toml (a `# key = value` or `# [section]`
    /// line) is valid when uncommented.
    #[test]
    fn example_file_with_its_examples_uncommented_loads() {
        let text = include_str!("../../config.example.toml");
        let mut uncommented = String::new();
        let mut examples = 0;
        for line in text.lines() {
            let example = line.strip_prefix("# ").filter(|rest| {
                rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
            });
            match example {
                Some(rest) => {
                    examples += 1;
                    uncommented.push_str(rest);
                }
                None => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        assert!(examples >= 3, "the example user is there to uncomment");
        let c = load(&uncommented, &[]).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(
            c.users,
            vec![User { id: "alice".into(), token: "a-long-random-secret".into() }]
        );
    }

    #[test]
    fn no_file_gives_the_spec_defaults() {
        let c = Config::load(None, &BTreeMap::new()).expect("defaults load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.delivery.timeout_ms, 120_000);
        assert_eq!(c.delivery.retry_delays_ms.len(), 11);
        assert_eq!(c.delivery.retry_delays_ms[10], 61_440_000);
        assert!(!c.delivery.allow_private_targets);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load("lisen = \"x\"", &[]).expect_err("typo");
        assert!(e.message.contains("lisen"), "{e}");
        let e = load("[delivery]\ntimeout = 5", &[]).expect_err("typo");
        assert!(e.message.contains("timeout"), "{e}");
        let e = load("", &[("HOOKD_DELIVERY_TIMEOUT", "5")]).expect_err("typo");
        assert_eq!(e.key, "HOOKD_DELIVERY_TIMEOUT");
        assert!(e.message.contains("did you mean HOOKD_DELIVERY_TIMEOUT_MS?"), "{e}");
        let e = load("", &[("HOOKD_LISTN", "127.0.0.1:1")]).expect_err("near miss");
        assert!(e.message.contains("did you mean HOOKD_LISTEN?"), "{e}");
        let e = load("", &[("HOOKD_RETENTION_MAX_AGE_MS", "5")]).expect_err("in a section");
        assert_eq!(e.key, "HOOKD_RETENTION_MAX_AGE_MS");
        // Not shaped like a setting: not hookd's business.
        load("", &[("HOOKD_LOG", "debug"), ("HOOKD_HOME", "/x"), ("HOOKD_URL", "http://h")])
            .expect("variables that are no setting's are left alone");
        let c = load("", &[("HOOKD_LOG_LEVEL", "debug"), ("HOOKD_LOG_FORMAT", "json")]).unwrap();
        assert_eq!((c.log.level.as_str(), c.log.format), ("debug", LogFormat::Json));
        let e = load("", &[("HOOKD_LOG_FORMAT", "xml")]).expect_err("bad format");
        assert_eq!(e.key, "HOOKD_LOG_FORMAT (for log.format)");
        let e = load("[log]\nformat = \"xml\"", &[]).expect_err("bad format");
        assert_eq!(e.key, "log.format");
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&str, &str)] = &[
            ("listen = \"nope\"", "listen"),
            ("[delivery]\ntimeout_ms = 0", "delivery.timeout_ms"),
            ("[limits]\nbody_bytes_max = 0", "limits.body_bytes_max"),
            ("[[users]]\nid = \"a b\"\ntoken = \"t\"", "users[0].id"),
            (
                "[[users]]\nid = \"a\"\ntoken = \"t\"\n[[users]]\nid = \"b\"\ntoken = \"t\"",
                "users[1].token",
            ),
            ("[delivery]\nretry_delays_ms = [99999999999999]", "delivery.retry_delays_ms"),
        ];
        for (text, key) in cases {
            let e = load(text, &[]).expect_err(text);
            assert_eq!(&e.key, key, "{text}: {e}");
        }
        let e = load("[delivery]\ntimeout_ms = \"x\"", &[]).expect_err("type");
        assert!(e.message.contains("timeout_ms"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load(
            "listen = \"127.0.0.1:1\"\n[delivery]\ntimeout_ms = 5",
            &[
                ("HOOKD_LISTEN", "127.0.0.1:0"),
                ("HOOKD_DATA_DIR", "/tmp/x"),
                ("HOOKD_DELIVERY_TIMEOUT_MS", "7"),
                ("HOOKD_DELIVERY_RETRY_DELAYS_MS", "[1, 2]"),
                ("HOOKD_DELIVERY_ALLOW_PRIVATE_TARGETS", "true"),
                ("HOOKD_USERS", "[{id = \"u\", token = \"tok\"}]"),
                ("HOOKD_LIMITS_WRITE_BATCH_MAX", "10"),
                ("PATH", "/bin"),
            ],
        )
        .expect("loads");
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.delivery.timeout_ms, 7);
        assert_eq!(c.delivery.retry_delays_ms, vec![1, 2]);
        assert!(c.delivery.allow_private_targets);
        assert_eq!(c.users, vec![User { id: "u".into(), token: "tok".into() }]);
        assert_eq!(c.limits.write_batch_max, 10);
        let e = load("", &[("HOOKD_DELIVERY_TIMEOUT_MS", "soon")]).expect_err("bad");
        assert_eq!(e.key, "HOOKD_DELIVERY_TIMEOUT_MS");
        for (name, text) in [
            ("HOOKD_DELIVERY_TIMEOUT_MS", "true"),
            ("HOOKD_DELIVERY_ALLOW_PRIVATE_TARGETS", "1"),
            ("HOOKD_DELIVERY_RETRY_DELAYS_MS", "5"),
        ] {
            let e = load("", &[(name, text)]).expect_err(name);
            assert_eq!(e.key, name, "{e}");
        }
        let e = load("listen = \"localhost:8080\"", &[]).expect_err("host name");
        assert!(e.message.contains("host names such as localhost are not accepted"), "{e}");
    }

    #[test]
    fn tokens_are_not_printed_by_debug() {
        let u = User { id: "u".into(), token: "secret-token".into() };
        assert!(!format!("{u:?}").contains("secret"));
    }
}
