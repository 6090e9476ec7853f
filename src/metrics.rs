//! The process's metrics, served at `GET /metrics` in the OpenMetrics text format (which
//! Prometheus scrapes). Counters and histograms are updated where things happen (the writer
//! after each commit, the dispatcher per call, the API per request); gauges that the store
//! knows exactly (ACTIVE dispatches, the oldest due one, the file size) are read at scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `2xx`, `3xx`, `4xx`, `5xx` by the response status, or `error` without a response.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `SUCCEEDED` or `FAILED`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's template, e.g. `/v2/webhooks/{webhookId}`, or `unmatched`.
    pub route: &'static str,
    /// `2xx`, `4xx`, `5xx`.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    /// `dispatch` or `event`.
    pub record: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub events_accepted: Counter,
    pub dispatches_created: Counter,
    pub calls: Family<OutcomeLabels, Counter>,
    pub dispatches_ended: Family<StatusLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_seconds: HistogramFamily<RouteLabels>,
    pub group_commit_ops: Histogram,
    pub group_commit_seconds: Histogram,
    pub retention_deleted: Family<RecordLabels, Counter>,
    pub calls_in_flight: Gauge,
    pub dispatches_active: Gauge,
    pub oldest_due_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub store_file_bytes: Gauge,
}

fn request_seconds_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("hookd");
        let m = Metrics {
            events_accepted: Counter::default(),
            dispatches_created: Counter::default(),
            calls: Family::default(),
            dispatches_ended: Family::default(),
            http_requests: Family::default(),
            http_request_seconds: Family::new_with_constructor(request_seconds_histogram),
            group_commit_ops: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            group_commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            retention_deleted: Family::default(),
            calls_in_flight: Gauge::default(),
            dispatches_active: Gauge::default(),
            oldest_due_age_seconds: Gauge::default(),
            store_file_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_accepted",
            "Events stored (idempotent repeats not counted)",
            m.events_accepted.clone(),
        );
        registry.register(
            "dispatches_created",
            "Dispatches stored, one per event and matching webhook",
            m.dispatches_created.clone(),
        );
        registry.register("calls", "Calls to targets by outcome", m.calls.clone());
        registry.register(
            "dispatches_ended",
            "Dispatches that ended, by final status",
            m.dispatches_ended.clone(),
        );
        registry.register(
            "dispatches_active",
            "ACTIVE dispatches (due now or waiting for a retry)",
            m.dispatches_active.clone(),
        );
        registry.register(
            "oldest_due_dispatch_age_seconds",
            "How long the oldest due ACTIVE dispatch has been due (0 if none is late)",
            m.oldest_due_age_seconds.clone(),
        );
        registry.register(
            "calls_in_flight",
            "Calls to targets in progress",
            m.calls_in_flight.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status class",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its answer, by route",
            m.http_request_seconds.clone(),
        );
        registry.register(
            "group_commit_ops",
            "Write operations committed together in one transaction",
            m.group_commit_ops.clone(),
        );
        registry.register(
            "group_commit_duration_seconds",
            "Time of one group commit: applying its operations and the commit (fsync)",
            m.group_commit_seconds.clone(),
        );
        registry.register("store_file_bytes", "Size of the store file", m.store_file_bytes.clone());
        registry.register(
            "retention_deleted",
            "Records deleted by retention, by kind",
            m.retention_deleted.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts a finished call by its response status (`None`: no response).
    pub fn count_call(&self, status: Option<u16>) {
        let outcome = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) | None => "error",
        };
        self.calls.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// The media type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
