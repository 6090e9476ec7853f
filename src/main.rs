//! The `hookd` binary: command line, configuration, logging, runtime; then `app::run`.

// jemalloc instead of glibc malloc: many small allocations per event cross threads (API task,
// writer thread); measured in BENCHMARKS.md: burst +8 %, batch +45 %, backlog RSS 85 -> 75 MB,
// idle RSS 7.6 -> 8.7 MB (mimalloc was faster still but doubled idle RSS and tripled peaks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hookd::app;
use hookd::config::{Config, Log as LogConfig, LogFormat};

const USAGE: &str = "\
usage: hookd [serve] [--config FILE]     run the daemon (the default)
       hookd backup --to FILE [--config FILE]
                                        copy the running daemon's store to FILE, consistently
       hookd check FILE                 verify a store file offline (exit 1 if damaged)
       hookd --help | --version

Config: the TOML file given by --config (see config.example.toml); without one, built-in
defaults. Every setting can be overridden by an environment variable HOOKD_<SECTION>_<KEY>
(HOOKD_LISTEN, HOOKD_DATA_DIR, HOOKD_USERS, HOOKD_DELIVERY_*, HOOKD_LIMITS_*,
HOOKD_RETENTION_*, HOOKD_LOG_FORMAT, HOOKD_LOG_LEVEL, HOOKD_LOG_ACCESS_LOG, HOOKD_METRICS_TOKEN);
RUST_LOG, when set, overrides log.level.

Data: data_dir (default ./data) holds the store hookd.redb, control.token (for hookd backup)
and backups/. With no [[users]] configured, the user admin is created and its token written
to data_dir/admin.token.

Restore: stop hookd, put the backup file in place of data_dir/hookd.redb, start hookd.";

/// What the command line asks for.
enum Command {
    Serve,
    Backup(PathBuf),
    Check(PathBuf),
}

fn main() -> ExitCode {
    let mut config_path: Option<String> = None;
    let mut command: Option<Command> = None;
    let mut to: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" if command.is_none() => command = Some(Command::Serve),
            "backup" if command.is_none() => command = Some(Command::Backup(PathBuf::new())),
            "check" if command.is_none() => match args.next() {
                Some(f) => command = Some(Command::Check(PathBuf::from(f))),
                None => return usage_error("check needs a FILE"),
            },
            "--to" => match args.next() {
                Some(f) => to = Some(PathBuf::from(f)),
                None => return usage_error("--to needs a FILE"),
            },
            "--config" | "-c" => match args.next() {
                Some(p) => config_path = Some(p),
                None => return usage_error("--config needs a file"),
            },
            s if s.starts_with("--config=") => {
                config_path = Some(s["--config=".len()..].to_string())
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("hookd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let command = match (command.unwrap_or(Command::Serve), to) {
        (Command::Backup(_), Some(to)) => Command::Backup(to),
        (Command::Backup(_), None) => return usage_error("backup needs --to FILE"),
        (_, Some(_)) => return usage_error("--to belongs to backup"),
        (c, None) => c,
    };
    if let Command::Check(file) = &command {
        return match hookd::ops::check(file) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("hookd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }

    let text = match &config_path {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("hookd: cannot read config file {p}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Config::load(text.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Backup(to) = &command {
        return match hookd::ops::backup(&config, to) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hookd: backup failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = init_logging(&config.log) {
        eprintln!("hookd: {e}");
        return ExitCode::FAILURE;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(app::run(config, config_path.map(PathBuf::from)));
    // Dropping the runtime drops every task, and with them the last database handles.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr in `log.format`, filtered by `RUST_LOG` when set, else by `log.level`.
/// Times are ISO-8601 (RFC 3339) in UTC.
fn init_logging(log: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => {
            EnvFilter::try_new(&f).map_err(|e| format!("RUST_LOG {f:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&log.level)
            .map_err(|e| format!("config log.level {:?}: {e}", log.level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
    Ok(())
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("hookd: {msg}\n{USAGE}");
    ExitCode::from(2)
}
