//! Wiring and the start-up and shutdown order; the only module that knows every other one.
//!
//! Start: data dir, users (or the generated admin token), store (repair if needed, writer
//! thread), listener, then the ready line and `READY=1`. Shutdown on SIGTERM/SIGINT or a
//! storage error: stop accepting, let open requests finish (bounded), `STOPPING=1`, let the
//! writer commit what is queued, join it; the database closes when the last handle drops.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::api::{self, ApiState, ByteBudget, RenderPool, Renderer};
use crate::config::{Config, User};
use crate::delivery::Dispatcher;
use crate::delivery::sender::{Sender, SenderConfig};
use crate::sd_notify::notify;
use crate::store::{Storage, Store, StoreLimits};

/// The user created when the config lists none.
pub const ADMIN_USER_ID: &str = "admin";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const STORE_FILE: &str = "hookd.redb";
const ADMIN_TOKEN_CHARS: usize = 40;

/// Runs the daemon until a signal or a storage error. `Err` means exit non-zero.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let signalled = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    run_on(config, Storage::File, signalled).await
}

/// Like [`run`], with the store on the given storage (a fault-injecting backend in tests), until
/// `stop` resolves (with the reason to log) or a storage error.
pub async fn run_on(
    config: Config,
    storage: Storage,
    stop: impl Future<Output = &'static str> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let users = if config.users.is_empty() {
        vec![admin_user(&config.data_dir)?]
    } else {
        let token_file = config.data_dir.join(ADMIN_TOKEN_FILE);
        if token_file.exists() {
            tracing::warn!(
                file = %token_file.display(),
                "users are configured, so the user admin is not created and its token no longer authenticates; delete the file, or list admin among the users"
            );
        }
        config.users.clone()
    };
    let store_path = config.data_dir.join(STORE_FILE);
    let store_limits = StoreLimits {
        write_queue_max: config.limits.write_queue_max,
        write_batch_max: config.limits.write_batch_max,
        cache_bytes: config.limits.store_cache_bytes,
        webhook_pending_max: config.limits.webhook_pending_max,
    };
    let (store, writer) = Store::open_on(storage, &store_path, store_limits)
        .with_context(|| format!("opening the store {}", store_path.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr().context("reading the listen address")?;

    let sender = Sender::new(SenderConfig {
        timeout_ms: config.delivery.timeout_ms,
        response_body_bytes_max: config.delivery.response_body_bytes_max,
        allow_private_targets: config.delivery.allow_private_targets,
        idle_connections_per_target_max: config.delivery.per_target_inflight_max,
    })
    .context("setting up TLS for delivery")?;

    let fatal = store.fatal();
    // One signal stops both the API and the dispatcher.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let reason = tokio::select! {
            r = stop => r.to_string(),
            m = fatal.wait() => format!("storage error: {m}"),
        };
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
    };
    let delivery = tokio::spawn(dispatcher.run(stopped()));

    let state = Arc::new(ApiState {
        store: store.clone(),
        users,
        limits: config.limits.clone(),
        renderer: Arc::new(Renderer::new(
            config.limits.template_cache_entries_max,
            config.limits.template_cache_bytes_max,
            config.limits.template_output_bytes_max,
        )),
        render_pool: RenderPool::new(config.limits.render_threads),
        request_bytes: ByteBudget::new(config.limits.request_bytes_inflight_max),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready listen={local}").context("writing the ready line")?;
        out.flush().context("writing the ready line")?;
    }
    notify("READY=1");
    tracing::info!(listen = %local, store = %store_path.display(), "hookd is ready");

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

/// The `admin` user, with its token from `data_dir/admin.token`, created (0600) on first start.
fn admin_user(data_dir: &Path) -> anyhow::Result<User> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => {
            tracing::info!(file = %path.display(), "no users configured: user admin authenticates with the token in the file");
            t.trim().to_string()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut token = String::new();
            while token.len() < ADMIN_TOKEN_CHARS {
                token.push_str(&crate::sys::new_id().context("reading the random source")?);
            }
            token.truncate(ADMIN_TOKEN_CHARS);
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
