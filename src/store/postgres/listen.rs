//! Wakes this node's dispatcher when another node commits work for a shard this node holds:
//! a connection of its own LISTENs on `hookd_outbox`, whose payload names the committing node
//! and the shards it added work to. A lost notification only delays: the dispatcher also looks
//! at the outbox on its idle poll, and every (re)connect wakes it once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{PgStore, pg_error};
use crate::store::StoreError;

/// The channel every commit that adds outbox work notifies.
pub(super) const CHANNEL: &str = "hookd_outbox";
/// Wait before connecting again after the listening connection failed.
const RECONNECT_MS: u64 = 1000;
/// Notifications waiting for the wake-up loop; when full, a wake-up is pending anyway.
const NOTIFICATIONS_QUEUED_MAX: usize = 256;
/// How often a listening node looks whether its store was closed.
const CLOSED_CHECK_MS: u64 = 1000;

/// The payload of a notification: `node_id` then the shards, space-separated.
pub(super) fn payload(node_id: &str, shards: &[i16]) -> String {
    let mut text = node_id.to_string();
    for s in shards {
        text.push(' ');
        text.push_str(&s.to_string());
    }
    text
}

impl PgStore {
    /// Listens until the store is closed, reconnecting after a failure.
    pub(super) async fn listen(self, config: tokio_postgres::Config) {
        while !self.inner.closed.load(Ordering::SeqCst) {
            if let Err(e) = self.listen_once(&config).await {
                tracing::warn!(error = %e, "cannot listen for other nodes' work");
            }
            tokio::time::sleep(Duration::from_millis(RECONNECT_MS)).await;
        }
    }

    async fn listen_once(&self, config: &tokio_postgres::Config) -> Result<(), StoreError> {
        let (client, mut connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let (tx, mut rx) = mpsc::channel::<String>(NOTIFICATIONS_QUEUED_MAX);
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.try_send(n.payload().to_string());
                    }
                    Ok(_) => {}
                    Err(e) => return Err(pg_error(e)),
                }
            }
            Ok(())
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(pg_error)?;
        // Work committed while this node was not listening.
        self.work_added(None);
        let mut tick = tokio::time::interval(Duration::from_millis(CLOSED_CHECK_MS));
        loop {
            tokio::select! {
                payload = rx.recv() => match payload {
                    Some(p) => self.wake_if_mine(&p),
                    None => break,
                },
                _ = tick.tick() => {
                    if self.inner.closed.load(Ordering::SeqCst) {
                        driver.abort();
                        return Ok(());
                    }
                }
            }
        }
        match driver.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Storage(format!("listening task: {e}"))),
        }
    }

    /// Marks and wakes for the shards this node holds that a notification names (all when it
    /// names none). Not for another node's shards, nor for this node's own commit, which marks
    /// its shards directly.
    fn wake_if_mine(&self, payload: &str) {
        let mut words = payload.split(' ');
        if words.next() == Some(self.inner.node_id.as_str()) {
            return;
        }
        let named: Vec<i16> = words.filter_map(|w| w.parse::<i16>().ok()).collect();
        if named.is_empty() {
            return self.work_added(None);
        }
        let mine: Vec<i16> = {
            let held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
            named.into_iter().filter(|s| held.epochs.contains_key(s)).collect()
        };
        if !mine.is_empty() {
            self.work_added(Some(&mine));
        }
    }
}
