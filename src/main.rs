//! The `hookd` binary: command line, configuration, logging, runtime; then `app::run`.

// jemalloc instead of glibc malloc: many small allocations per event cross threads (API task,
// writer thread); measured in BENCHMARKS.md: burst +8 %, batch +45 %, backlog RSS 85 -> 75 MB,
// idle RSS 7.6 -> 8.7 MB (mimalloc was faster still but doubled idle RSS and tripled peaks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::process::ExitCode;

use hookd::app;
use hookd::config::Config;

const USAGE: &str = "usage: hookd [serve] [--config FILE]\n\nRuns the webhook daemon. With no config file it runs on built-in defaults.\nSettings can be overridden by HOOKD_* environment variables; see config.example.toml.";

fn main() -> ExitCode {
    let mut config_path: Option<String> = None;
    let mut args = std::env::args().skip(1);
    let mut first = true;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" if first => {}
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
        first = false;
    }

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

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

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(app::run(config));
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

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("hookd: {msg}\n{USAGE}");
    ExitCode::from(2)
}
