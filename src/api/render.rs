//! Turning a matched webhook and an event into a dispatch: templates parsed once per distinct
//! template text (a bounded cache, so the many webhooks on the default template share one
//! entry), rendered per event; a template that cannot render makes the
//! dispatch FAILED at once, with the reason as its one call's error.
//!
//! `RenderPool` runs costly renders on a few blocking threads, so a request whose templates
//! produce megabytes never holds an async worker (and with it other users' requests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::model::{Call, Dispatch, DispatchStatus, EventType, Webhook};
use crate::template::{Context, RawJson, Template, TemplateError};

/// How many times its text a parsed tree takes (see `budget::TREE_BYTES_PER_JSON_BYTE`).
const TREE_FACTOR: usize = super::budget::TREE_BYTES_PER_JSON_BYTE;

type TemplateKey = (String, Option<String>, bool);
type CacheMap = HashMap<u64, (TemplateKey, Arc<Compiled>)>;

/// A webhook's templates, parsed (shared by every webhook with the same texts).
pub struct Compiled {
    payload: Template,
    headers: Option<Template>,
}

pub struct Renderer {
    /// Hash of (payload template, headers template, shouldInterpolateStrings) -> the parsed
    /// templates with their texts (compared on a hit, so a hash collision is only a miss),
    /// and the bytes of template text behind all entries.
    cache: Mutex<(CacheMap, usize)>,
    cache_entries_max: usize,
    cache_bytes_max: usize,
    output_bytes_max: usize,
}

/// What a dispatch is made from, besides the webhook: built once per event and shared by
/// all its dispatches.
pub struct EventParts {
    user_id: String,
    event_type: EventType,
    /// `eventData` as stored in each dispatch (none for TEST).
    event_data_json: Option<String>,
    context: Context,
}

impl EventParts {
    pub fn new(
        user_id: &str,
        created_ms: u64,
        event_type: EventType,
        event_data: Value,
        resource: RawJson,
    ) -> EventParts {
        let created_iso = crate::model::format_timestamp_ms(created_ms);
        let event_data_json = (!event_data.is_null()).then(|| event_data.to_string());
        let context = Context::new(
            user_id,
            created_ms,
            &created_iso,
            event_type.as_str(),
            event_data,
            resource,
        );
        EventParts { user_id: user_id.to_string(), event_type, event_data_json, context }
    }
}

/// Runs renders off the async workers: at most `threads` at once, the others wait their turn
/// (each waiting request is one connection, so `limits.connections_max` bounds the queue).
pub struct RenderPool {
    permits: Arc<Semaphore>,
}

impl RenderPool {
    pub fn new(threads: usize) -> RenderPool {
        RenderPool { permits: Arc::new(Semaphore::new(threads.max(1))) }
    }

    /// Runs `job` on a blocking thread once one of the pool's permits is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let handle = tokio::task::spawn_blocking(move || {
            let out = job();
            drop(permit);
            out
        });
        handle.await.map_err(|e| e.to_string())
    }
}

impl Renderer {
    pub fn new(
        cache_entries_max: usize,
        cache_bytes_max: usize,
        output_bytes_max: usize,
    ) -> Renderer {
        Renderer {
            cache: Mutex::new((HashMap::new(), 0)),
            cache_entries_max,
            cache_bytes_max,
            output_bytes_max,
        }
    }

    /// `w`'s templates, parsed once per distinct text.
    pub fn compiled(&self, w: &Webhook) -> Result<Arc<Compiled>, TemplateError> {
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&w.payload_template, &w.headers_template, w.should_interpolate_strings).hash(&mut h);
            h.finish()
        };
        if let Ok(cache) = self.cache.lock()
            && let Some(((payload, headers, interpolate), c)) = cache.0.get(&hash)
            && *payload == w.payload_template
            && *headers == w.headers_template
            && *interpolate == w.should_interpolate_strings
        {
            return Ok(c.clone());
        }
        let c = Arc::new(Compiled {
            payload: Template::parse(&w.payload_template, w.should_interpolate_strings)?,
            headers: w
                .headers_template
                .as_deref()
                .map(|t| Template::parse_headers(t, w.should_interpolate_strings))
                .transpose()?,
        });
        if let Ok(mut guard) = self.cache.lock() {
            let (cache, bytes) = &mut *guard;
            let text_bytes =
                w.payload_template.len() + w.headers_template.as_ref().map_or(0, String::len);
            // Crude but bounded: start over when full; the hot set refills at once.
            if cache.len() >= self.cache_entries_max || *bytes + text_bytes > self.cache_bytes_max {
                cache.clear();
                *bytes = 0;
            }
            let key = (
                w.payload_template.clone(),
                w.headers_template.clone(),
                w.should_interpolate_strings,
            );
            if cache.insert(hash, (key, c.clone())).is_none() {
                *bytes += text_bytes;
            }
        }
        Ok(c)
    }

    /// An upper bound of the bytes `w`'s templates take to render when each variable stands
    /// for at most `value_bytes` bytes: the output, times the tree factor for a template that
    /// renders through a parsed tree. What deciding where to render needs (0 if they do not
    /// parse).
    pub fn cost_bytes(
        compiled: &Result<Arc<Compiled>, TemplateError>,
        w: &Webhook,
        value_bytes: usize,
    ) -> usize {
        let Ok(c) = compiled else { return 0 };
        let output = |t: &Template, text: &str, direct: bool| {
            let bytes = text.len().saturating_add(t.variable_count().saturating_mul(value_bytes));
            if direct { bytes } else { bytes.saturating_mul(TREE_FACTOR) }
        };
        // Headers always render through a tree (each value is checked).
        let headers = match (&c.headers, &w.headers_template) {
            (Some(h), Some(text)) => output(h, text, false),
            _ => 0,
        };
        output(&c.payload, &w.payload_template, c.payload.renders_directly())
            .saturating_add(headers)
    }

    /// The dispatch of `event` to `w`, due at once (or FAILED if it cannot be rendered).
    pub fn dispatch(&self, id: String, w: &Webhook, event: &EventParts, now_ms: u64) -> Dispatch {
        let compiled = self.compiled(w);
        self.dispatch_with(id, w, &compiled, event, now_ms)
    }

    /// Like [`Renderer::dispatch`], with `w`'s templates already looked up.
    pub fn dispatch_with(
        &self,
        id: String,
        w: &Webhook,
        compiled: &Result<Arc<Compiled>, TemplateError>,
        event: &EventParts,
        now_ms: u64,
    ) -> Dispatch {
        let ctx = &event.context;
        let rendered = compiled.as_ref().map_err(Clone::clone).and_then(|c| {
            let body = c.payload.render_to_string(ctx, self.output_bytes_max)?;
            let headers = match &c.headers {
                Some(h) => h.render_headers(ctx, self.output_bytes_max)?,
                None => Vec::new(),
            };
            Ok((body, headers))
        });
        let mut d = Dispatch {
            id,
            user_id: event.user_id.clone(),
            webhook_id: w.id.clone(),
            created_ms: now_ms,
            status: DispatchStatus::Active,
            event_type: event.event_type,
            event_data_json: event.event_data_json.clone(),
            condition: w.condition.clone(),
            request_url: w.request_url.clone(),
            is_ad_hoc: w.is_ad_hoc,
            ignore_ssl_errors: w.ignore_ssl_errors,
            do_not_retry: w.do_not_retry,
            body: String::new(),
            headers: Vec::new(),
            calls: Vec::new(),
            next_due_ms: Some(now_ms),
            finished_ms: None,
            calls_before_redelivery: 0,
        };
        match rendered {
            Ok((body, headers)) => {
                d.body = body;
                d.headers = headers;
            }
            Err(e) => {
                d.status = DispatchStatus::Failed;
                d.next_due_ms = None;
                d.finished_ms = Some(now_ms);
                d.calls.push(Call {
                    started_ms: now_ms,
                    finished_ms: now_ms,
                    error_message: Some(format!(
                        "The webhook's templates could not be rendered: {e}"
                    )),
                    response_status: None,
                    response_body: None,
                });
            }
        }
        d
    }
}
