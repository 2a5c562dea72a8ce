//! `trellis init` and `trellis keys` as a new node operator runs them.

use std::process::{Command, Output};

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis")).args(args).output().unwrap()
}

#[test]
fn init_then_keys_show_and_clear_errors_for_mistakes() {
    let dir = std::env::temp_dir().join(format!("trellis-init-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let home = dir.join("node0");
    let home = home.to_str().unwrap();
    let output =
        trellis(&["init", "--home", home, "--moniker", "node0", "--chain-id", "trellis-test", "--base-port", "27000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let address = text.lines().find_map(|l| l.strip_prefix("address:")).unwrap().trim().to_string();
    assert_eq!(address.len(), 40);

    let shown = trellis(&["keys", "show", "--home", home]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&address));

    let again = trellis(&["init", "--home", home]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));

    let missing = trellis(&["keys", "show", "--home", dir.join("nowhere").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading key file"));

    let key = dir.join("alice.key");
    let made = trellis(&["keys", "new", "--out", key.to_str().unwrap()]);
    assert!(made.status.success());
    let twice = trellis(&["keys", "new", "--out", key.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("does it already exist"));
    std::fs::remove_dir_all(&dir).unwrap();
}
