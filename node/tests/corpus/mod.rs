//! The corpus the node's tests train on: the repository's own docs and sources
//! (`trellis_trainer::data::REPOSITORY_TEXT`), which every clone holds, as one text file.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The corpus file, written once per test process under Cargo's scratch folder for tests.
pub fn path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = trellis_trainer::data::repository_text(&repo)
            .unwrap_or_else(|e| panic!("the repository's text is the test corpus: {e}"));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("repository-corpus.txt");
        // Test binaries run at once: each writes its own copy and renames it into place.
        let own = dir.join(format!("repository-corpus-{}.txt", std::process::id()));
        std::fs::write(&own, text).expect("writing the test corpus");
        std::fs::rename(&own, &path).expect("placing the test corpus");
        path
    })
    .clone()
}
