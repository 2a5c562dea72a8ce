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

#[test]
fn zk_setup_prove_and_verify_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let output = trellis().arg("zk").args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let model = "softmax:4x3,batch=2";
    let (code, _, stderr) = run(&["setup", "--model", "softmax:4", "--out", &path("keys")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--model 'softmax:4'"), "{stderr}");

    let (code, out, err) =
        run(&["setup", "--model", model, "--steps", "2", "--out", &path("keys"), "--insecure-seed", "7"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("can forge proofs"), "an insecure setup says so: {err}");
    let (code, out, err) = run(&["sample", "--model", model, "--steps", "2", "--seed", "3", "--out", &path("inputs")]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(&[
        "prove",
        "--key",
        &path("keys/proving_key.bin"),
        "--weights",
        &path("inputs/weights.bin"),
        "--batches",
        &path("inputs/batches.bin"),
        "--out",
        &path("proof"),
        "--snarkjs",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("proved 2 steps"), "{out}");
    assert!(dir.path().join("proof/proof.json").exists() && dir.path().join("proof/public.json").exists());
    let verify = |public: &str| {
        run(&[
            "verify",
            "--key",
            &path("keys/verifying_key.bin"),
            "--proof",
            &path("proof/proof.bin"),
            "--public",
            public,
        ])
    };
    let (code, out, err) = verify(&path("proof/public.bin"));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("valid: 2 steps"), "{out}");

    // Public inputs of another run (other weights): the proof is rejected, exit 2.
    let (_, _, _) = run(&["sample", "--model", model, "--steps", "2", "--seed", "4", "--out", &path("other")]);
    let (code, out, err) = run(&[
        "prove",
        "--key",
        &path("keys/proving_key.bin"),
        "--weights",
        &path("other/weights.bin"),
        "--batches",
        &path("other/batches.bin"),
        "--out",
        &path("other-proof"),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = verify(&path("other-proof/public.bin"));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.starts_with("rejected"), "{out}");
    // Bytes that are not a proof: an error, not a panic.
    std::fs::write(dir.path().join("proof/proof.bin"), b"not a proof").unwrap();
    let (code, _, err) = verify(&path("proof/public.bin"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("error:"), "{err}");
}
