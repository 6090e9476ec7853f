//! Turning a matched webhook and an event into a dispatch: templates parsed once per distinct
//! template text (a bounded cache, so the many webhooks on the default template share one
//! entry), rendered per event; a template that cannot render makes the
//! dispatch FAILED at once, with the reason as its one call's error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::model::{Call, Dispatch, DispatchStatus, EventType, Webhook};
use crate::template::{Context, Template, TemplateError};

type TemplateKey = (String, Option<String>, bool);

struct Compiled {
    payload: Template,
    headers: Option<Template>,
}

pub struct Renderer {
    /// Hash of (payload template, headers template, shouldInterpolateStrings) -> the parsed
    /// templates with their texts (compared on a hit, so a hash collision is only a miss).
    cache: Mutex<HashMap<u64, (TemplateKey, Arc<Compiled>)>>,
    cache_entries_max: usize,
    output_bytes_max: usize,
}

/// What a dispatch is made from, besides the webhook.
pub struct EventParts<'a> {
    pub user_id: &'a str,
    pub created_ms: u64,
    pub event_type: EventType,
    /// `eventData` (null for TEST).
    pub event_data: &'a Value,
    pub resource: &'a Value,
}

impl Renderer {
    pub fn new(cache_entries_max: usize, output_bytes_max: usize) -> Renderer {
        Renderer { cache: Mutex::new(HashMap::new()), cache_entries_max, output_bytes_max }
    }

    fn compiled(&self, w: &Webhook) -> Result<Arc<Compiled>, TemplateError> {
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&w.payload_template, &w.headers_template, w.should_interpolate_strings).hash(&mut h);
            h.finish()
        };
        if let Ok(cache) = self.cache.lock()
            && let Some(((payload, headers, interpolate), c)) = cache.get(&hash)
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
        if let Ok(mut cache) = self.cache.lock() {
            // Crude but bounded: start over when full; the hot set refills at once.
            if cache.len() >= self.cache_entries_max {
                cache.clear();
            }
            let key = (
                w.payload_template.clone(),
                w.headers_template.clone(),
                w.should_interpolate_strings,
            );
            cache.insert(hash, (key, c.clone()));
        }
        Ok(c)
    }

    /// The dispatch of `event` to `w`, due at once (or FAILED if it cannot be rendered).
    pub fn dispatch(
        &self,
        id: String,
        w: &Webhook,
        event: &EventParts<'_>,
        now_ms: u64,
    ) -> Dispatch {
        let created_iso = crate::model::format_timestamp_ms(event.created_ms);
        let ctx = Context::new(
            event.user_id,
            event.created_ms,
            &created_iso,
            event.event_type.as_str(),
            event.event_data.clone(),
            event.resource.clone(),
        );
        let rendered = self.compiled(w).and_then(|c| {
            let body = c.payload.render_to_string(&ctx, self.output_bytes_max)?;
            let headers = match &c.headers {
                Some(h) => h.render_headers(&ctx, self.output_bytes_max)?,
                None => Vec::new(),
            };
            Ok((body, headers))
        });
        let mut d = Dispatch {
            id,
            user_id: event.user_id.to_string(),
            webhook_id: w.id.clone(),
            created_ms: now_ms,
            status: DispatchStatus::Active,
            event_type: event.event_type,
            event_data_json: (!event.event_data.is_null()).then(|| event.event_data.to_string()),
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
