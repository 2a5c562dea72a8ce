//! The built `trellis` binary starts without any exported variables (libtorch is found by
//! rpath) and answers its basic commands.

use std::process::Command;

fn trellis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
    // Prove the rpath works: nothing may come from the caller's library path.
    command.env_remove("LD_LIBRARY_PATH");
    command
}

#[test]
fn help_lists_the_commands() {
    let output = trellis().arg("--help").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Usage: trellis"), "{text}");
    assert!(text.contains("doctor"), "{text}");
}

#[test]
fn doctor_reports_the_linked_libtorch() {
    let output = trellis().arg("doctor").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("libtorch:        linked"), "{text}");
    assert!(text.contains("CUDA available:"), "{text}");
}

#[test]
fn unknown_commands_fail_with_a_message() {
    let output = trellis().arg("frobnicate").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unrecognized subcommand"));
}
