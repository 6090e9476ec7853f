//! Operator commands beside `serve`: `hookd backup --to FILE` asks the running daemon for a
//! consistent copy of its store (over its own HTTP listener, authenticated by the control token
//! it writes into its data dir at start, so only someone who can read the data dir can ask),
//! and `hookd check FILE` verifies a store file offline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;

/// The control token file in the data dir (0600, new at every start).
pub const CONTROL_TOKEN_FILE: &str = "control.token";
/// Where the daemon writes backups before `hookd backup` moves them to their place.
pub const BACKUP_DIR: &str = "backups";
/// The route `hookd backup` calls; only the control token opens it.
pub const BACKUP_ROUTE: &str = "/admin/backup";
/// How long `hookd backup` waits for the daemon's answer (a large store takes a while).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// `hookd backup --to FILE`: the running daemon writes a snapshot into its data dir; it is
/// then copied to `to` (through a temporary file, fsynced, renamed) and the daemon's file removed.
pub fn backup(config: &Config, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        bail!("{} exists; a backup never overwrites a file", to.display());
    }
    let token_path = config.data_dir.join(CONTROL_TOKEN_FILE);
    let text = std::fs::read_to_string(&token_path).with_context(|| {
        format!(
            "reading the control token {} (is hookd running with this config, and can you read its data dir?)",
            token_path.display()
        )
    })?;
    let mut lines = text.lines();
    let token = lines.next().unwrap_or_default().trim().to_string();
    // The address the daemon listens on, as it wrote it (the config may say port 0).
    let listen = lines
        .find_map(|l| l.strip_prefix("listen="))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(config.listen);
    let addr = loopback_for(listen);
    let (status, body) = post(addr, BACKUP_ROUTE, &token)
        .with_context(|| format!("asking the daemon at {addr} for a backup"))?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("the daemon answered {status} with no JSON"))?;
    if status != 200 {
        bail!("the daemon refused the backup ({status}): {}", answer["error"]["message"]);
    }
    let made = PathBuf::from(answer["data"]["file"].as_str().unwrap_or_default());
    let entries = answer["data"]["entries"].as_u64().unwrap_or_default();
    let placed = place(&made, to);
    let _ = std::fs::remove_file(&made);
    placed.with_context(|| format!("copying {} to {}", made.display(), to.display()))?;
    println!("backup written to {} ({entries} entries)", to.display());
    Ok(())
}

/// `hookd check FILE`: 0 when the file opens and every record is sound.
pub fn check(file: &Path) -> anyhow::Result<bool> {
    match crate::store::check_file(file) {
        Ok(r) if r.problems.is_empty() => {
            println!(
                "{}: ok: {} webhooks, {} dispatches ({} ACTIVE), {} events",
                file.display(),
                r.webhooks,
                r.dispatches,
                r.active,
                r.events
            );
            Ok(true)
        }
        Ok(r) => {
            println!("{}: {} problems:", file.display(), r.problems.len());
            for p in r.problems.iter().take(100) {
                println!("  {p}");
            }
            Ok(false)
        }
        Err(e) => {
            println!("{}: cannot be opened: {e}", file.display());
            Ok(false)
        }
    }
}

/// Copies `from` to `to` so that `to` is whole or absent: a temporary file beside it,
/// fsynced, renamed, the directory fsynced.
fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let done = (|| {
        std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// The address to reach a daemon listening on `listen` from this machine.
fn loopback_for(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if listen.ip().is_unspecified() {
        addr.set_ip(if listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// A bodiless POST over HTTP/1.1; returns the status and the body.
fn post(addr: SocketAddr, path: &str, token: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(BACKUP_TIMEOUT))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(16 * 1024 * 1024).read_to_end(&mut raw)?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the answer")?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = raw[end + 4..].to_vec();
    Ok((status, if chunked { dechunk(&body) } else { body }))
}

/// The payload of a chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let Some(chunk) = body.get(start..start + size) else { break };
        out.extend_from_slice(chunk);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
    out
}
