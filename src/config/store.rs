//! The `[store]` section: which backend holds the data (one redb file, or a PostgreSQL
//! database shared by several nodes) and how to reach it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ConfigError, err};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `data_dir/hookd.redb`: one node.
    Redb,
    /// The database at `postgres_url`: any number of nodes.
    Postgres,
}

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub backend: Backend,
    /// `postgres://user:password@host:port/database` (libpq's URL form); required with
    /// `backend = "postgres"`.
    pub postgres_url: String,
    /// Connections one node opens to PostgreSQL at most.
    pub postgres_connections_max: usize,
    /// A node's delivery leases lapse this long after its last renewal; its targets then move
    /// to the live nodes.
    pub lease_ttl_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            backend: Backend::Redb,
            postgres_url: String::new(),
            postgres_connections_max: 16,
            lease_ttl_ms: 15_000,
        }
    }
}

impl fmt::Debug for StoreConfig {
    /// The URL may hold a password: shown only as set or not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = if self.postgres_url.is_empty() { "" } else { "<set>" };
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("postgres_url", &url)
            .field("postgres_connections_max", &self.postgres_connections_max)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    backend: Option<String>,
    postgres_url: Option<String>,
    postgres_connections_max: Option<u64>,
    lease_ttl_ms: Option<u64>,
}

/// The shortest lease: renewals run every third of it.
const LEASE_TTL_MS_MIN: u64 = 300;

impl StoreConfig {
    pub(super) fn from_raw(raw: Option<RawStore>) -> Result<StoreConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        let d = StoreConfig::default();
        let backend = match raw.backend.as_deref() {
            None | Some("redb") => Backend::Redb,
            Some("postgres") => Backend::Postgres,
            Some(other) => {
                return Err(err(
                    "store.backend",
                    format!("{other:?} is not \"redb\" or \"postgres\""),
                ));
            }
        };
        let postgres_url = raw.postgres_url.unwrap_or_default();
        if backend == Backend::Postgres && postgres_url.trim().is_empty() {
            return Err(err("store.postgres_url", "is required with store.backend = \"postgres\""));
        }
        let postgres_connections_max = match raw.postgres_connections_max {
            None => d.postgres_connections_max,
            Some(0) => return Err(err("store.postgres_connections_max", "must be at least 1")),
            Some(n) => usize::try_from(n.min(10_000)).unwrap_or(10_000),
        };
        let lease_ttl_ms = raw.lease_ttl_ms.unwrap_or(d.lease_ttl_ms);
        if lease_ttl_ms < LEASE_TTL_MS_MIN {
            return Err(err("store.lease_ttl_ms", format!("must be at least {LEASE_TTL_MS_MIN}")));
        }
        Ok(StoreConfig { backend, postgres_url, postgres_connections_max, lease_ttl_ms })
    }

    pub(super) fn to_raw(&self) -> RawStore {
        RawStore {
            backend: Some(
                match self.backend {
                    Backend::Redb => "redb",
                    Backend::Postgres => "postgres",
                }
                .into(),
            ),
            postgres_url: Some(self.postgres_url.clone()),
            postgres_connections_max: Some(self.postgres_connections_max as u64),
            lease_ttl_ms: Some(self.lease_ttl_ms),
        }
    }
}
