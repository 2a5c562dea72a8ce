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

    // Four ports from the base: one that would run past 65535 is refused, nothing written.
    let high = dir.join("high");
    let past = trellis(&["init", "--home", high.to_str().unwrap(), "--base-port", "65533"]);
    assert!(!past.status.success());
    assert!(String::from_utf8_lossy(&past.stderr).contains("65532"), "{}", String::from_utf8_lossy(&past.stderr));
    assert!(!high.exists());

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

/// The genesis workflow of docs/network.md: a coordinator builds a genesis from operators'
/// public keys, each operator installs it and sees the same fingerprint; mistakes are refused
/// with the reason.
#[test]
fn a_genesis_built_across_machines_installs_with_one_fingerprint() {
    let dir = std::env::temp_dir().join(format!("trellis-genesis-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = |output: &Output| {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let refused = |output: &Output, reason: &str| {
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "expected '{reason}' in: {stderr}");
    };
    // Two operators make their homes (and keys) on their own machines.
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    let alice_init = text(&trellis(&["init", "--home", alice.to_str().unwrap(), "--base-port", "27100"]));
    let alice_key = alice_init.lines().find_map(|l| l.strip_prefix("public key:")).unwrap().trim().to_string();
    text(&trellis(&["init", "--home", bob.to_str().unwrap(), "--base-port", "27110"]));

    let genesis = dir.join("genesis.json");
    let g = genesis.to_str().unwrap();
    text(&trellis(&["genesis", "new", "--chain-id", "mynet", "--out", g]));
    refused(&trellis(&["genesis", "new", "--chain-id", "mynet", "--out", g]), "already exists");
    text(&trellis(&["genesis", "add-validator", "--genesis", g, "--public-key", &alice_key]));
    let bob_key_file = bob.join("keys/node.key");
    text(&trellis(&["genesis", "add-validator", "--genesis", g, "--key-file", bob_key_file.to_str().unwrap()]));
    refused(
        &trellis(&["genesis", "add-validator", "--genesis", g, "--public-key", &alice_key]),
        "already in the genesis",
    );
    refused(
        &trellis(&["genesis", "add-miner", "--genesis", g, "--public-key", &alice_key, "--bond", "1"]),
        "below the chain's minimum stake",
    );
    refused(&trellis(&["genesis", "add-validator", "--genesis", g, "--public-key", "nothex"]), "invalid value");
    let shown =
        text(&trellis(&["genesis", "add-account", "--genesis", g, "--address", &"ab".repeat(20), "--balance", "5"]));
    assert!(shown.contains("validators   2") && shown.contains("accounts     3"), "{shown}");
    let fingerprint = shown.lines().find_map(|l| l.strip_prefix("fingerprint")).unwrap().trim().to_string();

    // Each operator installs the file and sees the coordinator's fingerprint and its own role.
    for (home, who) in [(&alice, "alice"), (&bob, "bob")] {
        let said = text(&trellis(&["genesis", "install", "--genesis", g, "--home", home.to_str().unwrap()]));
        assert!(said.contains(&fingerprint) && said.contains("is a validator"), "{who}: {said}");
        let config = std::fs::read_to_string(home.join("config/node.toml")).unwrap();
        assert!(config.contains("chain_id = \"mynet\""), "{who}: the config follows the genesis's chain");
    }
    // A home that has run a chain keeps its genesis.
    std::fs::create_dir_all(alice.join("data/chain")).unwrap();
    refused(
        &trellis(&["genesis", "install", "--genesis", g, "--home", alice.to_str().unwrap()]),
        "already run a chain",
    );
    // A joiner made from the file agrees, and may not name another chain.
    let joiner = dir.join("joiner");
    let said = text(&trellis(&["init", "--home", joiner.to_str().unwrap(), "--genesis", g, "--base-port", "27120"]));
    assert!(said.contains(&fingerprint), "{said}");
    refused(
        &trellis(&["init", "--home", dir.join("other").to_str().unwrap(), "--genesis", g, "--chain-id", "else"]),
        "not 'else'",
    );
    refused(
        &trellis(&["init", "--home", dir.join("bad").to_str().unwrap(), "--bootnode", "not-an-address"]),
        "is not a multiaddr",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
