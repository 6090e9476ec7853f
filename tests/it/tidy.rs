//! Tidy: the code-style invariants of ARCHITECTURE.md, checked on the source text, and the
//! systemd unit checked with `systemd-analyze verify` where that tool exists.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn every_file_opens_with_a_module_doc() {
    for (path, text) in sources() {
        assert!(text.starts_with("//!"), "{path} does not start with a //! line");
    }
}

#[test]
fn each_storage_engine_is_named_only_in_its_own_backend() {
    for (path, text) in sources() {
        for (engine, home) in
            [("redb::", "src/store/redb/"), ("tokio_postgres", "src/store/postgres/")]
        {
            if !path.starts_with(home) {
                assert!(!text.contains(engine), "{path} names {engine} outside {home}");
            }
        }
    }
}

#[test]
fn every_queue_is_bounded_and_nothing_unwraps() {
    for (path, text) in sources() {
        assert!(!text.contains("unbounded_channel"), "{path} uses an unbounded channel");
        assert!(!text.contains("#[ignore]"), "{path} ignores a test");
        assert!(!text.contains("#[should_panic]"), "{path} has a should_panic test");
        if !path.ends_with("tests.rs") {
            let code: String = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            assert!(!code.contains(".unwrap()"), "{path} unwraps outside tests");
        }
    }
}

#[test]
fn pure_modules_do_no_io_and_read_no_clock() {
    for (path, text) in sources() {
        let pure = ["src/model.rs", "src/template.rs", "src/delivery/policy.rs"]
            .contains(&path.as_str())
            || path.starts_with("src/template/")
            || path.starts_with("src/config/");
        if pure {
            for banned in [
                "tokio",
                "hyper",
                "std::fs",
                "TcpStream",
                "TcpListener",
                "SystemTime",
                "Instant::now",
                "crate::sys",
            ] {
                assert!(!text.contains(banned), "{path} is pure but mentions {banned}");
            }
        }
        if path != "src/sys.rs" {
            assert!(!text.contains("SystemTime::now"), "{path} reads the clock; use sys::now_ms");
        }
    }
}

#[test]
fn only_the_writer_opens_write_transactions() {
    for (path, text) in sources() {
        // backup.rs writes only the new file a backup or a check makes, never the live store.
        let allowed = path == "src/store/redb/writer.rs"
            || path == "src/store/redb/open.rs"
            || path == "src/store/redb/backup.rs";
        if !allowed {
            assert!(!text.contains("begin_write"), "{path} opens a write transaction");
        }
        if path == "src/store/redb/open.rs" {
            // Only the schema set-up at open, before the writer thread starts.
            assert_eq!(text.matches("begin_write").count(), 1, "{path}");
        }
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/hookd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for key in [
        "Type=notify",
        "StateDirectory=hookd",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
    ] {
        assert!(text.contains(key), "hookd.service lacks {key}");
    }
    // scripts/test installs systemd when it is missing; a run without it is not a pass.
    let out = std::process::Command::new("systemd-analyze").arg("--version").output().expect(
        "systemd-analyze is not installed: `apt-get install systemd` (scripts/test does this)",
    );
    assert!(out.status.success());
    // Point ExecStart at the built binary so verify can check it exists and is executable.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("hookd.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/hookd", env!("CARGO_BIN_EXE_hookd")))
        .unwrap();
    let out =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}
