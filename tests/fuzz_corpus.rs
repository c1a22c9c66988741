//! Replays the fuzz corpus kept in `fuzz/corpus/<target>/`, and the crash
//! reproducers kept in `fuzz/regressions/<target>/`, through the same
//! functions the fuzz targets call (`sessionlb::fuzzing`), so that a plain
//! `cargo test` on stable guards what the fuzzers found. A target without
//! a corpus fails: the corpus is part of the test.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} is missing or empty"
    );
    let regressions = inputs(&fuzz.join("regressions").join(target));
    let failed: Vec<String> = corpus
        .iter()
        .chain(&regressions)
        .filter(|file| {
            let data = std::fs::read(file).expect("a corpus file");
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

#[test]
fn response() {
    replay("response", sessionlb::fuzzing::response);
}

#[test]
fn request_head() {
    replay("request_head", sessionlb::fuzzing::request_head);
}

#[test]
fn cookies() {
    replay("cookies", sessionlb::fuzzing::cookies);
}

#[test]
fn forwarded_for() {
    replay("forwarded_for", sessionlb::fuzzing::forwarded_for);
}

#[test]
fn config() {
    replay("config", sessionlb::fuzzing::config);
}

#[test]
fn session() {
    replay("session", sessionlb::fuzzing::session);
}

#[test]
fn health_status() {
    replay("health_status", sessionlb::fuzzing::health_status);
}
