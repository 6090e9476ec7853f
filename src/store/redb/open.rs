//! Opening a store file: the storage it lives on, the verification of a file hookd did not
//! leave (lastrun.rs), the schema set-up and migration, and what the writer and the readers
//! load at start; and the offline check of a file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};
use tokio::sync::{Notify, mpsc};

use super::error::{storage, storage as storage_error};
use super::index::MatchIndex;
use super::lastrun::LastRun;
use super::pending::Pending;
use super::retention::{Retention, RetentionSignal};
use super::schema::*;
use super::*;
use crate::metrics::Metrics;
use crate::store::FileIo;

/// The real store file as [`FileIo`]: what a fault-injecting test wraps.
#[derive(Debug)]
pub struct PlainFile(FileBackend);

impl PlainFile {
    /// The file, opened for reading and writing.
    pub fn new(file: std::fs::File) -> Result<PlainFile, StoreError> {
        FileBackend::new(file).map(PlainFile).map_err(storage)
    }
}

impl FileIo for PlainFile {
    fn len_bytes(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
}

/// Any [`FileIo`] as redb's storage (no file locks: only tests use it).
#[derive(Debug)]
struct Adapted(Box<dyn FileIo>);

impl StorageBackend for Adapted {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len_bytes()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

impl RedbStore {
    /// Opens (or creates) the store on `storage`, repairing it after a crash, and starts the
    /// writer. A damaged file is an error, never a panic:
    /// redb may panic on pages that are not what they claim to be, so the open runs under
    /// `catch_unwind`.
    pub fn open_on(
        storage: Storage,
        path: &Path,
        limits: StoreLimits,
    ) -> Result<(RedbStore, WriterHandle), StoreError> {
        without_panics(|| RedbStore::open_unguarded(storage, path, limits))
    }

    fn open_unguarded(
        storage: Storage,
        path: &Path,
        limits: StoreLimits,
    ) -> Result<(RedbStore, WriterHandle), StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(limits.cache_bytes);
        let last_run = match &storage {
            Storage::File => Some(LastRun::beside(path)),
            Storage::Io(_) => None,
        };
        let verify = last_run.as_ref().is_some_and(|l| left_unclean(path) && !l.crashed_in_place());
        builder.set_check_integrity_on_open(verify);
        let announced = AtomicBool::new(false);
        builder.set_repair_callback(move |session| {
            // Called when the last shutdown was unclean (kill -9, crash, power loss) and the
            // saved allocator state cannot be used, or when the file is verified.
            if !announced.swap(true, Ordering::SeqCst) {
                if verify {
                    tracing::warn!(
                        "the store file was not closed cleanly and is not the file hookd last ran on here (a copy, or a restore); verifying every page before using it"
                    );
                } else {
                    tracing::warn!("the store was not closed cleanly; repairing it");
                }
            }
            tracing::debug!(progress = session.progress(), "repair");
        });
        let (db, file) = match storage {
            Storage::File => {
                create_private(path)?;
                let db = builder.create(path).map_err(|e| match verify {
                    false => storage_error(e),
                    true => StoreError::Corrupt(format!(
                        "{e}; the file was not closed cleanly and is not the file hookd last ran on here: a copy made while hookd wrote to it can be torn like this, so restore a copy made by `hookd backup`"
                    )),
                })?;
                if let Some(Err(e)) = last_run.as_ref().map(LastRun::mark_running) {
                    tracing::warn!(error = %e, "cannot record the open beside the store file; the next start after a crash verifies the whole file");
                }
                (db, Some(path.to_path_buf()))
            }
            Storage::Io(io) => {
                (builder.create_with_backend(Adapted(io)).map_err(storage_error)?, None)
            }
        };
        init_schema(&db)?;
        let index = Arc::new(load_index(&db)?);
        let (pending, next_seq) = load_pending(&db)?;
        let sweeps = load_sweeps(&db)?;
        let redeliveries = redelivery::load(&db)?;
        if !redeliveries.is_empty() {
            tracing::info!(
                webhooks = redeliveries.len(),
                "resuming the bulk redeliveries the last run left under way"
            );
        }
        let sweeping = Arc::new(AtomicBool::new(!sweeps.is_empty()));
        let pending = Arc::new(pending);
        let db = Arc::new(db);
        let fatal = Arc::new(Fatal::default());
        let outbox_changed = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(limits.write_queue_max);
        let retention = Arc::new(RetentionSignal::default());
        let metrics = Arc::new(Metrics::default());
        let handle = writer::spawn(
            db.clone(),
            tx.clone(),
            rx,
            limits.write_batch_max,
            fatal.clone(),
            outbox_changed.clone(),
            writer::WriterState {
                index: index.clone(),
                pending: pending.clone(),
                next_seq,
                pending_max: limits.webhook_pending_max.max(1),
                sweeps,
                sweeping: sweeping.clone(),
                user_webhooks: count_user_webhooks(&db)?,
                retention: Retention::new(
                    limits.finished_max_age_ms,
                    retention.clone(),
                    file.clone(),
                    limits.store_bytes_max,
                ),
                metrics: metrics.clone(),
                redeliveries,
                redelivery_replies: HashMap::new(),
            },
        )?;
        let handle = handle.recording_close(last_run);
        let store = RedbStore {
            db,
            writes: tx,
            fatal,
            outbox_changed,
            index,
            pending,
            sweeping,
            retention,
            metrics,
            file,
        };
        Ok((store, handle))
    }
}

/// The dispatches not yet folded, and the next `webhook_pending` key.
fn load_pending(db: &Database) -> Result<(Pending, u64), StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(WEBHOOK_PENDING).map_err(storage)?;
    let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
    let pending = Pending::default();
    let mut next_seq = 0;
    let mut webhooks = std::collections::HashSet::new();
    {
        let mut mirror = pending.write();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (w, d) = v.value();
            let state = states.get(d).map_err(storage)?;
            let (user, key) = match state {
                Some(s) => match records::decode_state_key(s.value())? {
                    Some((status, user, t)) => (user, Some((status_code(status), event_code(t)))),
                    None => (String::new(), None),
                },
                None => (String::new(), None),
            };
            mirror.add(w.to_string(), user, d.to_string(), key);
            next_seq = k.value() + 1;
            webhooks.insert(w.to_string());
        }
        // A deleted webhook's waiting ones are on their user's list only, as before the stop.
        let stats = rtx.open_table(WEBHOOK_STATS).map_err(storage)?;
        for w in webhooks {
            if stats.get(w.as_str()).map_err(storage)?.is_none() {
                mirror.forget_webhook(&w);
            }
        }
    }
    Ok((pending, next_seq))
}

/// Checks the store file at `path` without changing it: a copy is opened (repaired and
/// migrated if it needs to be), redb's checksums verified, every record decoded and the
/// outbox's invariants checked. `Err`: the file cannot be opened at all, and why.
pub fn check_file(path: &Path) -> Result<CheckReport, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Storage(format!("{} is not a file", path.display())));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let copy = dir.join(format!(
        ".{}.check-{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        std::fs::copy(path, &copy).map_err(|e| {
            StoreError::Storage(format!("cannot copy {} to check it: {e}", path.display()))
        })?;
        without_panics(|| {
            let mut db = Database::builder().create(&copy).map_err(storage_error)?;
            if !db.check_integrity().map_err(|e| StoreError::Corrupt(e.to_string()))? {
                return Err(StoreError::Corrupt("redb's integrity check failed".into()));
            }
            init_schema(&db)?;
            backup::verify(&db)
        })
    })();
    let _ = std::fs::remove_file(&copy);
    result
}

/// Runs `f`, turning a panic (redb's, on a damaged file) into an error. The panic message is
/// kept for the error and not printed.
pub(super) fn without_panics<T>(
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let message = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = message.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
        if let Ok(mut m) = seen.lock() {
            *m = format!("{payload}{}", at.unwrap_or_default());
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|_| {
        let m = message.lock().map(|m| m.clone()).unwrap_or_default();
        Err(StoreError::Corrupt(format!("the store file is damaged; redb failed reading it: {m}")))
    })
}

/// Whether the file at `path` exists and was not closed cleanly. Any other failure of the probe
/// (another process has the file open, a damaged header) is left to the open to report.
fn left_unclean(path: &Path) -> bool {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return false;
    }
    // A read-only open refuses, without changing the file, exactly the files that need repair.
    matches!(Database::builder().open_read_only(path), Err(redb::DatabaseError::RepairAborted))
}

/// Creates the store file empty and readable by its owner only (it holds header templates,
/// which carry secrets), unless it exists; redb initialises an empty file.
pub(super) fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Storage(format!("cannot create {}: {e}", path.display()))),
    }
}

/// How many webhooks each user has.
fn count_user_webhooks(db: &Database) -> Result<HashMap<String, usize>, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for entry in table.iter().map_err(storage)? {
        let (k, _) = entry.map_err(storage)?;
        let (user, _, _) = k.value();
        match counts.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                counts.insert(user.to_string(), 1);
            }
        }
    }
    Ok(counts)
}

/// Deleted webhooks whose dispatches are still being ended, oldest first.
fn load_sweeps(db: &Database) -> Result<Vec<(String, u64)>, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(WEBHOOK_SWEEPS).map_err(storage)?;
    let mut sweeps = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        sweeps.push((k.value().to_string(), v.value()));
    }
    Ok(sweeps)
}

/// Every webhook that can still fire, for the match index.
fn load_index(db: &Database) -> Result<MatchIndex, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
    let fired = rtx.open_table(WEBHOOK_FIRED).map_err(storage)?;
    let mut changes = Vec::new();
    for entry in webhooks.iter().map_err(storage)? {
        let (_, v) = entry.map_err(storage)?;
        let w = records::decode_webhook(v.value())?;
        if !w.is_enabled || (w.is_ad_hoc && fired.get(w.id.as_str()).map_err(storage)?.is_some()) {
            continue;
        }
        changes.push(index::IndexChange::Add(Arc::new(w)));
    }
    let index = MatchIndex::default();
    index.apply(changes);
    Ok(index)
}

/// Opens every table, creating those missing.
fn for_each_table(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(WEBHOOKS).map_err(storage)?;
    tx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
    tx.open_table(WEBHOOK_MATCH).map_err(storage)?;
    tx.open_table(WEBHOOK_IDEM).map_err(storage)?;
    tx.open_table(WEBHOOK_STATS).map_err(storage)?;
    tx.open_table(WEBHOOK_FIRED).map_err(storage)?;
    tx.open_table(EVENTS).map_err(storage)?;
    tx.open_table(EVENT_IDEM).map_err(storage)?;
    tx.open_table(DISPATCHES).map_err(storage)?;
    tx.open_table(DISPATCH_STATES).map_err(storage)?;
    tx.open_table(OUTBOX).map_err(storage)?;
    tx.open_table(JOBS).map_err(storage)?;
    tx.open_table(WEBHOOK_SWEEPS).map_err(storage)?;
    tx.open_table(WEBHOOK_PENDING).map_err(storage)?;
    tx.open_table(FINISHED_GROUPS).map_err(storage)?;
    tx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
    tx.open_table(REDELIVERIES).map_err(storage)?;
    tx.open_table(DISPATCHES_BY_USER_STATUS).map_err(storage)?;
    tx.open_table(DISPATCHES_BY_WEBHOOK_STATUS).map_err(storage)?;
    tx.open_table(DISPATCH_COUNTS).map_err(storage)?;
    Ok(())
}

fn init_schema(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(storage)?;
    // Like every writer commit: this one saves the allocator state, so that a kill before
    // the writer's first commit does not leave a full repair (seconds per GiB) for the next
    // start.
    tx.set_quick_repair(true);
    {
        let mut meta = tx.open_table(META).map_err(storage)?;
        let version = meta.get(META_SCHEMA_VERSION).map_err(storage)?.map(|v| v.value());
        match version {
            Some(v) if !(migrate::OLDEST_MIGRATED..=SCHEMA_VERSION).contains(&v) => {
                return Err(StoreError::Corrupt(format!(
                    "the store has schema version {v}; this hookd reads versions {} to {SCHEMA_VERSION}",
                    migrate::OLDEST_MIGRATED
                )));
            }
            Some(v) => {
                if v < SCHEMA_VERSION {
                    // Tables added since are created first (below, as at every open).
                    for_each_table(&tx)?;
                    migrate::migrate(&tx, v)?;
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION).map_err(storage)?;
                }
                // Set by the writer's last commit on a clean stop; cleared for this run.
                let clean = meta.get(META_CLEAN_CLOSE).map_err(storage)?.map(|v| v.value());
                if clean == Some(1) {
                    tracing::info!("the last run closed the store cleanly");
                } else {
                    tracing::warn!(
                        "the last run did not close the store cleanly; every ACTIVE dispatch is due again"
                    );
                }
            }
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION).map_err(storage)?;
            }
        }
        meta.insert(META_CLEAN_CLOSE, 0).map_err(storage)?;
    }
    for_each_table(&tx)?;
    tx.commit().map_err(storage)?;
    Ok(())
}
