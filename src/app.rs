//! Wiring and the start-up and shutdown order; the only module that knows every other one.
//!
//! Start: data dir, users (or the generated admin token), store (repair if needed, writer
//! thread), listener, then the ready line and `READY=1`. Shutdown on SIGTERM/SIGINT or a
//! storage error: stop accepting, let open requests finish (bounded), `STOPPING=1`, let the
//! writer commit what is queued, join it; the database closes when the last handle drops.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::api::{self, ApiState, ByteBudget, RenderPool, Renderer};
use crate::config::{Config, StoreBackend, User};
use crate::delivery::Dispatcher;
use crate::delivery::sender::{Sender, SenderConfig};
use crate::sd_notify::notify;
use crate::store::{Storage, Store, StoreLimits};

/// The user created when the config lists none.
pub const ADMIN_USER_ID: &str = "admin";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const STORE_FILE: &str = "hookd.redb";
const ADMIN_TOKEN_CHARS: usize = 40;

/// Runs the daemon until a signal or a storage error. `Err` means exit non-zero. SIGHUP
/// re-reads the users from `config_file` and the environment.
pub async fn run(config: Config, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let signalled = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    run_on(config, config_file, Storage::File, signalled).await
}

/// Like [`run`], with the store on the given storage (a fault-injecting backend in tests), until
/// `stop` resolves (with the reason to log) or a storage error.
pub async fn run_on(
    config: Config,
    config_file: Option<PathBuf>,
    storage: Storage,
    stop: impl Future<Output = &'static str> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    // Installed first: until then SIGHUP would end the process.
    let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let users = users_of(&config)?;
    let store_path = config.data_dir.join(STORE_FILE);
    let store_limits = StoreLimits {
        write_queue_max: config.limits.write_queue_max,
        write_batch_max: config.limits.write_batch_max,
        cache_bytes: config.limits.store_cache_bytes,
        webhook_pending_max: config.limits.webhook_pending_max,
        finished_max_age_ms: config.retention.finished_max_age_ms,
        store_bytes_max: config.retention.store_bytes_max,
    };
    let (store, writer) = match config.store.backend {
        StoreBackend::Redb => Store::open_on(storage, &store_path, store_limits)
            .with_context(|| format!("opening the store {}", store_path.display()))?,
        // The URL is not logged: it may hold a password.
        StoreBackend::Postgres => Store::open_postgres(
            &config.store.postgres_url,
            config.store.postgres_connections_max,
            config.store.lease_ttl_ms,
            store_limits,
        )
        .await
        .context("opening the PostgreSQL store (store.postgres_url)")?,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr().context("reading the listen address")?;

    let sender = Sender::new(SenderConfig {
        timeout_ms: config.delivery.timeout_ms,
        response_body_bytes_max: config.delivery.response_body_bytes_max,
        allow_private_targets: config.delivery.allow_private_targets,
        idle_connections_per_target_max: config.delivery.per_target_inflight_max,
        sign: config.delivery.sign,
    })
    .context("setting up TLS for delivery")?;

    let fatal = store.fatal();
    // One signal stops both the API and the dispatcher.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping_set = stopping.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            r = stop => r.to_string(),
            m = fatal.wait() => format!("storage error: {m}"),
        };
        stopping_set.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(%reason, "shutting down");
        notify("STOPPING=1");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let dispatcher = Dispatcher {
        store: store.clone(),
        sender: Arc::new(sender),
        retry_delays_ms: Arc::new(config.delivery.retry_delays_ms.clone()),
        inflight_max: config.delivery.inflight_max,
        per_target_inflight_max: config.delivery.per_target_inflight_max,
        per_user_inflight_max: config.delivery.per_user_inflight_max,
        shutdown_grace_ms: config.limits.shutdown_grace_ms,
        metrics: store.metrics(),
        failure_log: Arc::default(),
    };
    let delivery = tokio::spawn(dispatcher.run(stopped()));
    tokio::spawn(retention_ticker(store.clone(), stopped()));

    let state = Arc::new(ApiState {
        store: store.clone(),
        users: std::sync::RwLock::new(Arc::new(users)),
        limits: config.limits.clone(),
        renderer: Arc::new(Renderer::new(
            config.limits.template_cache_entries_max,
            config.limits.template_cache_bytes_max,
            config.limits.template_output_bytes_max,
        )),
        render_pool: RenderPool::new(config.limits.render_threads),
        request_bytes: ByteBudget::new(config.limits.request_bytes_inflight_max),
        metrics: store.metrics(),
        metrics_token: config.metrics.token.clone(),
        access_log: config.log.access_log,
        stopping,
        control_token: control_token(&config.data_dir, local)?,
        signing_rotation_overlap_ms: config.delivery.signing_rotation_overlap_ms,
        backup_dir: config.data_dir.join(crate::ops::BACKUP_DIR),
    });
    let (webhooks, active) = store.counts().await.context("counting the stored records")?;
    tokio::spawn(reload_on_sighup(hup, state.clone(), config_file, stopped()));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready listen={local}").context("writing the ready line")?;
        out.flush().context("writing the ready line")?;
    }
    notify("READY=1");
    tracing::info!(
        listen = %local,
        store = %match config.store.backend {
            StoreBackend::Redb => store_path.display().to_string(),
            // The URL may hold a password: never logged.
            StoreBackend::Postgres => "postgres".to_string(),
        },
        webhooks,
        active_dispatches = active,
        "hookd is ready"
    );

    // The API and the dispatcher stop together; in-flight calls are recorded before the writer
    // commits its last batch and closes.
    api::serve(listener, state, stopped()).await;
    if let Err(e) = delivery.await {
        tracing::error!(error = %e, "the dispatcher ended abnormally");
    }
    writer.close().await;
    let fatal = store.fatal();
    if fatal.is_failed() {
        anyhow::bail!("stopped after a storage error: {}", fatal.wait().await);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Tells the store the time once a second, for retention, until `stopped`.
async fn retention_ticker(store: Store, stopped: impl Future<Output = ()>) {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(RETENTION_TICK_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = every.tick() => store.retention_tick(crate::sys::now_ms()),
        }
    }
}

const RETENTION_TICK_MS: u64 = 1000;

/// The users who may call the API: the configured ones, or else `admin` with its token file.
fn users_of(config: &Config) -> anyhow::Result<Vec<User>> {
    if config.users.is_empty() {
        return Ok(vec![admin_user(&config.data_dir)?]);
    }
    let token_file = config.data_dir.join(ADMIN_TOKEN_FILE);
    if token_file.exists() {
        tracing::warn!(
            file = %token_file.display(),
            "users are configured, so the user admin is not created and its token no longer authenticates; delete the file, or list admin among the users"
        );
    }
    Ok(config.users.clone())
}

/// On SIGHUP, reads the config file and the environment again and replaces the users (and
/// their tokens); requests in progress finish with the users they started with. Other
/// settings need a restart. A config that does not load changes nothing.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    state: Arc<ApiState>,
    config_file: Option<PathBuf>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let loaded = (|| {
            let text = match &config_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading config file {}", p.display()))?,
                ),
                None => None,
            };
            let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
            let config = Config::load(text.as_deref(), &env)?;
            users_of(&config)
        })();
        match loaded {
            Ok(users) => {
                let count = users.len();
                let mut current = state.users.write().unwrap_or_else(|p| p.into_inner());
                *current = Arc::new(users);
                tracing::info!(
                    users = count,
                    "SIGHUP: users reloaded (other settings need a restart)"
                );
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: config not reloaded; the users stay as they were")
            }
        }
    }
}

/// A random token of `ADMIN_TOKEN_CHARS` characters.
fn new_token() -> anyhow::Result<String> {
    let mut token = String::new();
    while token.len() < ADMIN_TOKEN_CHARS {
        token.push_str(&crate::sys::new_id().context("reading the random source")?);
    }
    token.truncate(ADMIN_TOKEN_CHARS);
    Ok(token)
}

/// A new control token for `hookd backup`, written to `data_dir/control.token` (0600) with
/// the address the daemon listens on (the config may say port 0).
fn control_token(data_dir: &Path, listen: std::net::SocketAddr) -> anyhow::Result<String> {
    let token = new_token()?;
    let path = data_dir.join(crate::ops::CONTROL_TOKEN_FILE);
    write_private_atomically(&path, &format!("{token}\nlisten={listen}\n"))
        .with_context(|| format!("writing the control token to {}", path.display()))?;
    Ok(token)
}

/// The `admin` user, with its token from `data_dir/admin.token`, created (0600) on first start.
fn admin_user(data_dir: &Path) -> anyhow::Result<User> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => {
            tracing::info!(file = %path.display(), "no users configured: user admin authenticates with the token in the file");
            t.trim().to_string()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token()?;
            write_private_atomically(&path, &format!("{token}\n"))
                .with_context(|| format!("writing the admin token to {}", path.display()))?;
            tracing::info!(file = %path.display(), "no users configured: created user admin; its token is in the file");
            token
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the admin token {}", path.display()));
        }
    };
    anyhow::ensure!(
        !token.is_empty(),
        "the admin token file {} is empty; delete it to have a new token generated at the next start, or write a token into it",
        path.display()
    );
    Ok(User { id: ADMIN_USER_ID.to_string(), token })
}

/// Writes `text` to `path` (mode 0600) so that a failure at any point leaves either no file or
/// the whole file: a temporary file beside it, fsynced, renamed over `path`, then the directory
/// fsynced so the rename itself survives a crash.
pub fn write_private_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_atomic_write_leaves_no_half_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin.token");
        write_private_atomically(&path, "first\n").expect("writes");
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), "first\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The rename fails (the target is a non-empty directory): the write fails, the target
        // is untouched and no temporary file is left behind.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).expect("mkdir");
        std::fs::write(blocked.join("x"), "x").expect("write");
        assert!(write_private_atomically(&blocked, "second\n").is_err());
        assert!(blocked.is_dir());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn an_empty_token_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "").expect("write");
        let e = admin_user(dir.path()).expect_err("empty token");
        let text = format!("{e:#}");
        assert!(text.contains("is empty") && text.contains("delete it"), "{text}");
    }
}
