//! How hookd last left the store file, recorded beside it (`hookd.redb.lastrun`), so that an
//! open after a crash in place stays fast while a file that came from elsewhere is verified.
//!
//! Why: a file left by a crash (kill -9, power loss) holds whole pages, so redb's fast repair
//! from its saved allocator state is right for it. A file copied (`cp`) while a daemon wrote to
//! it can mix pages of different commits; the fast repair does not checksum the trees, so such
//! a copy would open and fail at the first read of a reused page. Such a copy also reads as not
//! closed cleanly, but it is not the file this record names as running, so it is verified page
//! by page at open (redb falls back to the previous commit or refuses the file).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Which file a record is about: the same path can hold another file after an `rm` and a
/// copy, so the record names the file by device, inode and birth time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    /// Birth time in ns since the epoch; 0 where the file system does not keep one.
    born_ns: u128,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<FileIdentity> {
        let meta = std::fs::metadata(path).ok()?;
        let born_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Some(FileIdentity { device: meta.dev(), inode: meta.ino(), born_ns })
    }
}

/// The record's states: `running` from the open on, `closed` once the writer stopped.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Running,
    Closed,
}

const HEADER: &str = "hookd lastrun v1";

/// The record for the store file at `store`.
#[derive(Debug, Clone)]
pub struct LastRun {
    record: PathBuf,
    store: PathBuf,
}

impl LastRun {
    pub(super) fn beside(store: &Path) -> LastRun {
        let mut name = store.file_name().unwrap_or_default().to_os_string();
        name.push(".lastrun");
        LastRun { record: store.with_file_name(name), store: store.to_path_buf() }
    }

    /// Whether the record says the last hookd on this very file was running and never
    /// closed it: then an unclean file is a crash in place, with whole pages.
    pub(super) fn crashed_in_place(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return false;
        };
        match (parse(&text), FileIdentity::of(&self.store)) {
            (Some((State::Running, recorded)), Some(now)) => recorded == now,
            _ => false,
        }
    }

    /// Records that hookd has the file open (before its first write).
    pub(super) fn mark_running(&self) -> Result<(), std::io::Error> {
        self.write(State::Running)
    }

    /// Records that the writer stopped; a later unclean file is then not a crash in place.
    pub(super) fn mark_closed(&self) -> Result<(), std::io::Error> {
        self.write(State::Closed)
    }

    /// Written whole (a temp file renamed over the record): a torn or lost record only makes
    /// the next open verify the file, never trust one it should not.
    fn write(&self, state: State) -> Result<(), std::io::Error> {
        let id = FileIdentity::of(&self.store).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the store file is gone")
        })?;
        let state = match state {
            State::Running => "running",
            State::Closed => "closed",
        };
        let text = format!(
            "{HEADER}\nstate {state}\ndevice {}\ninode {}\nborn_ns {}\n",
            id.device, id.inode, id.born_ns
        );
        let mut tmp = self.record.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.record)
    }
}

fn parse(text: &str) -> Option<(State, FileIdentity)> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut field = |name: &str| -> Option<String> {
        let line = lines.next()?;
        line.strip_prefix(name)?.strip_prefix(' ').map(str::to_string)
    };
    let state = match field("state")?.as_str() {
        "running" => State::Running,
        "closed" => State::Closed,
        _ => return None,
    };
    let device = field("device")?.parse().ok()?;
    let inode = field("inode")?.parse().ok()?;
    let born_ns = field("born_ns")?.parse().ok()?;
    Some((state, FileIdentity { device, inode, born_ns }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_file_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        std::fs::write(&store, b"x").unwrap();
        let last = LastRun::beside(&store);
        assert!(!last.crashed_in_place(), "no record");
        last.mark_running().unwrap();
        assert!(last.crashed_in_place());
        last.mark_closed().unwrap();
        assert!(!last.crashed_in_place(), "closed");
        last.mark_running().unwrap();
        // Another file at the same path (a copy put in place) is not the one that ran.
        std::fs::remove_file(&store).unwrap();
        std::fs::write(dir.path().join("filler"), b"y").unwrap();
        std::fs::write(&store, b"x").unwrap();
        assert!(!last.crashed_in_place(), "another file");
        std::fs::write(&last.record, "hookd lastrun v1\nstate running\n").unwrap();
        assert!(!last.crashed_in_place(), "a torn record");
    }
}
