//! `trellis train` and `trellis model eval` as a user runs them: a tiny real run end to end,
//! and clear errors for every bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis")).args(args).env_remove("LD_LIBRARY_PATH").output().unwrap()
}

mod corpus;

fn corpus_text() -> String {
    corpus::path().display().to_string()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trellis-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `trellis train` of the `nano` preset on `data` with `[workers, inner steps, rounds, batch
/// size]`, then the `extra` flags.
fn train_nano(data: &str, [workers, inner_steps, rounds, batch_size]: [&str; 4], extra: &[&str]) -> Output {
    let mut args = vec!["train", "--data", data, "--model", "nano", "--workers", workers];
    args.extend_from_slice(&["--inner-steps", inner_steps, "--rounds", rounds, "--batch-size", batch_size]);
    args.extend_from_slice(extra);
    trellis(&args)
}

#[test]
fn a_tiny_run_writes_model_metrics_plot_and_trail_then_evaluates() {
    let dir = temp_dir("run");
    let out = dir.join("m.safetensors");
    let trail = dir.join("trail");
    let data = corpus_text();
    let output = train_nano(
        &data,
        ["2", "6", "2", "4"],
        &[
            "--checkpoint-interval",
            "3",
            "--baseline",
            "ddp",
            "--ddp-lr",
            "0.003,0.0001",
            "--json",
            "--out",
            out.to_str().unwrap(),
            "--trail-dir",
            trail.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let metrics: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let diloco = &metrics["diloco"];
    assert_eq!(diloco["rounds"].as_array().unwrap().len(), 2);
    assert!(diloco["final_validation_loss"].as_f64().unwrap() < diloco["initial_validation_loss"].as_f64().unwrap());
    assert_eq!(diloco["tokens"], metrics["ddp"]["tokens"], "the baseline trains the same tokens");
    assert!(metrics["comparison"]["bytes_ratio_ddp_over_diloco"].as_f64().unwrap() > 1.0);
    // Data-parallel at each rate asked; DiLoCo is compared with the best (3e-3 beats 1e-4).
    let sweep = metrics["ddp_sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    let losses: Vec<f64> = sweep.iter().map(|r| r["final_validation_loss"].as_f64().unwrap()).collect();
    assert!(losses[0] < losses[1], "{sweep:?}");
    assert_eq!(metrics["ddp"]["final_validation_loss"].as_f64().unwrap(), losses[0]);
    assert_eq!(metrics["ddp"]["method"], "ddp-lr0.003");
    assert!(dir.join("m.metrics.json").exists());
    assert_eq!(&std::fs::read(dir.join("m.loss.png")).unwrap()[..4], b"\x89PNG");
    let trail_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trail.join("round-0001/worker-01/trail.json")).unwrap()).unwrap();
    assert_eq!(trail_json["checkpoints"].as_array().unwrap().len(), 3);
    assert!(trail.join("round-0001/worker-01/ckpt-00000012.bin").exists());

    let eval = trellis(&["model", "eval", "--model", out.to_str().unwrap(), "--data", &data]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let text = String::from_utf8_lossy(&eval.stdout);
    let loss: f64 = text.lines().next().unwrap().trim_start_matches("validation loss:").trim().parse().unwrap();
    assert!((loss - diloco["final_validation_loss"].as_f64().unwrap()).abs() < 1e-3, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--fragments 2 --overlap-steps 1 --baseline plain`: Streaming DiLoCo (each fragment's update
/// arriving a step late) and plain DiLoCo of the same tokens in one invocation; the streaming
/// run's largest message is half a Δ.
#[test]
fn streaming_is_compared_with_plain_diloco_of_the_same_tokens() {
    let dir = temp_dir("plain");
    let out = dir.join("m.safetensors");
    let data = corpus_text();
    let output = train_nano(
        &data,
        ["2", "4", "2", "4"],
        &["--fragments", "2", "--overlap-steps", "1", "--baseline", "plain", "--json", "--out", out.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let metrics: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(metrics["diloco"]["method"], "streaming-diloco-2-overlap1-f32", "{metrics}");
    assert_eq!(metrics["overlap_steps"], 1);
    assert_eq!(metrics["overlap_mix"], 0.5);
    assert_eq!(metrics["diloco"]["tokens"], metrics["plain"]["tokens"], "the baseline trains the same tokens");
    let peak = metrics["comparison"]["peak_bytes_ratio_over_plain"].as_f64().unwrap();
    assert!((0.45..0.55).contains(&peak), "half a Δ at a time: {peak}");
    let ratio = metrics["comparison"]["loss_ratio_over_plain"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_warm_start_or_a_saved_model_is_shared_by_diloco_and_its_baseline() {
    let dir = temp_dir("warm");
    let run_with = |start: &[&str], name: &str| -> serde_json::Value {
        let out = dir.join(name);
        let data = corpus_text();
        let mut extra = vec!["--baseline", "ddp", "--json", "--out", out.to_str().unwrap()];
        extra.extend_from_slice(start);
        let output = train_nano(&data, ["2", "3", "1", "4"], &extra);
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let run = |warm: &str, name: &str| run_with(&["--warm-start-steps", warm], name);
    let cold = run("0", "cold.safetensors");
    let warm = run("30", "warm.safetensors");
    let initial = |m: &serde_json::Value, method: &str| m[method]["initial_validation_loss"].as_f64().unwrap();
    // Both methods start from the same model: the seed's, or the one pretrained for 30 steps.
    assert_eq!(initial(&cold, "diloco"), initial(&cold, "ddp"));
    assert_eq!(initial(&warm, "diloco"), initial(&warm, "ddp"));
    assert!(
        initial(&warm, "diloco") < initial(&cold, "diloco") - 0.5,
        "30 warm-up steps lower the loss: {warm} vs {cold}"
    );
    assert_eq!(warm["warm_start_steps"], 30);
    assert_eq!(warm["diloco"]["tokens"], cold["diloco"]["tokens"], "the warm start's tokens are not counted");

    // --init starts both methods from a saved model: here the warm run's result.
    let saved = dir.join("warm.safetensors");
    let resumed = run_with(&["--init", saved.to_str().unwrap()], "resumed.safetensors");
    assert_eq!(initial(&resumed, "diloco"), warm["diloco"]["final_validation_loss"].as_f64().unwrap());
    assert_eq!(initial(&resumed, "ddp"), initial(&resumed, "diloco"));
    assert!(resumed["init"].as_str().unwrap().ends_with("warm.safetensors"));
    let mismatched = trellis(&[
        "train",
        "--data",
        &corpus_text(),
        "--model",
        "micro",
        "--init",
        saved.to_str().unwrap(),
        "--out",
        dir.join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!mismatched.status.success());
    assert!(stderr(&mismatched).contains("another shape than --model micro"), "{}", stderr(&mismatched));
    let both = trellis(&[
        "train",
        "--data",
        &corpus_text(),
        "--init",
        saved.to_str().unwrap(),
        "--warm-start-steps",
        "3",
        "--out",
        dir.join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!both.status.success());
    assert!(stderr(&both).contains("cannot be used with"), "{}", stderr(&both));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = temp_dir("bad");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let tiny = dir.join("tiny.txt");
    std::fs::write(&tiny, b"too short").unwrap();
    let data = corpus_text();
    let out = dir.join("m.safetensors");
    let out = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--data", "/no/such/file.txt", "--out", out], "does not exist"),
        (vec!["train", "--data", empty.to_str().unwrap(), "--out", out], "is empty"),
        (vec!["train", "--data", tiny.to_str().unwrap(), "--out", out], "at least"),
        (vec!["train", "--data", &data, "--model", "huge", "--out", out], "unknown model preset 'huge'"),
        (vec!["train", "--data", &data, "--inner-steps", "0", "--out", out], "--inner-steps (H) must be at least 1"),
        (vec!["train", "--data", &data, "--workers", "0", "--out", out], "--workers must be at least 1"),
        (vec!["train", "--data", &data, "--workers", "100", "--out", out], "use fewer --workers"),
        (vec!["train", "--data", &data, "--device", "tpu", "--out", out], "unknown device 'tpu'"),
        (vec!["train", "--data", &data, "--threads", "0", "--out", out], "--threads must be at least 1"),
        (vec!["model", "eval", "--model", "/no/such/model", "--data", &data], "model file /no/such/model"),
        (vec!["train", "--data", &data, "--init", "/no/such/model", "--out", out], "loading the --init model"),
        (vec!["model", "eval", "--model", tiny.to_str().unwrap(), "--data", &data], "not a valid safetensors file"),
        (vec!["train", "--data", &data, "--slowdown", "1,3", "--out", out], "--slowdown has 2 factors for 4 workers"),
        (vec!["train", "--data", &data, "--slowdown", "1,1,1,0.5", "--out", out], "each at least 1"),
        (vec!["train", "--data", &data, "--min-inner-steps", "0", "--out", out], "--min-inner-steps must be in 1..="),
        (vec!["train", "--data", &data, "--baseline", "wait", "--out", out], "--baseline wait compares"),
        (vec!["train", "--data", &data, "--ddp-lr", "0.01", "--out", out], "add --baseline ddp"),
        (vec!["train", "--data", &data, "--baseline", "plain", "--out", out], "--baseline plain compares"),
        (
            vec!["train", "--data", &data, "--slowdown", "1,1,1,3", "--fragments", "2", "--out", out],
            "--slowdown runs without --fragments",
        ),
        (vec!["train", "--data", &data, "--overlap-steps", "2", "--out", out], "give --fragments F"),
        (
            vec!["train", "--data", &data, "--fragments", "2", "--overlap-steps", "25", "--out", out],
            "must be below the steps between two synchronisations, --inner-steps / --fragments (25)",
        ),
        (vec!["train", "--data", &data, "--overlap-mix", "2", "--out", out], "--overlap-mix is the share"),
        (
            vec!["train", "--data", &data, "--aggregate", "centered-clip", "--clip-tau", "inf", "--out", out],
            "--clip-tau must be a positive, finite radius (got inf)",
        ),
    ];
    for (args, expected) in cases {
        let output = trellis(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let message = stderr(&output);
        assert!(message.contains(expected), "{args:?}: expected '{expected}' in: {message}");
        assert!(!message.contains("panicked"), "{args:?} panicked: {message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verify_trail_passes_honest_trails_and_fails_tampered_ones() {
    let dir = temp_dir("verify");
    let trail = dir.join("trail");
    let data = corpus_text();
    let output = train_nano(
        &data,
        ["2", "4", "1", "2"],
        &[
            "--checkpoint-interval",
            "2",
            "--threads",
            "1",
            "--json",
            "--out",
            dir.join("m.safetensors").to_str().unwrap(),
            "--trail-dir",
            trail.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // Re-executed in a fresh process, on another thread count.
    let verify =
        trellis(&["verify", "trail", "--trail-dir", trail.to_str().unwrap(), "--data", &data, "--threads", "2"]);
    assert!(verify.status.success(), "{}{}", String::from_utf8_lossy(&verify.stdout), stderr(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("4 segments checked: all valid"));

    let checkpoint = trail.join("round-0000/worker-01/ckpt-00000002.bin");
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    bytes[3_000] ^= 0x40;
    std::fs::write(&checkpoint, bytes).unwrap();
    let verify =
        trellis(&["verify", "trail", "--trail-dir", trail.to_str().unwrap(), "--data", &data, "--segments", "all"]);
    assert_eq!(verify.status.code(), Some(2));
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("INVALID") && text.contains("StartMismatch"), "{text}");
    // The wrong data is refused with a reason.
    let other = dir.join("other.txt");
    std::fs::write(&other, "x".repeat(100_000)).unwrap();
    let verify =
        trellis(&["verify", "trail", "--trail-dir", trail.to_str().unwrap(), "--data", other.to_str().unwrap()]);
    assert!(!verify.status.success());
    assert!(stderr(&verify).contains("pass the same --data"), "{}", stderr(&verify));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn attacks_run_and_defences_exclude_the_attacker() {
    let dir = temp_dir("attack");
    let data = corpus_text();
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = dir.join("m.safetensors");
        let trail = dir.join("trail");
        let mut flags = vec![
            "--checkpoint-interval",
            "2",
            "--json",
            "--out",
            out.to_str().unwrap(),
            "--trail-dir",
            trail.to_str().unwrap(),
        ];
        flags.extend_from_slice(extra);
        let output = train_nano(&data, ["3", "4", "1", "2"], &flags);
        assert!(output.status.success(), "{extra:?}: {}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let excluded = |m: &serde_json::Value| m["diloco"]["rounds"][0]["excluded"].clone();
    assert_eq!(excluded(&run(&["--attack", "copy", "--detect-copies"])), serde_json::json!([2]));
    assert_eq!(excluded(&run(&["--attack", "fake-trail", "--verify-segments", "1"])), serde_json::json!([2]));
    assert_eq!(excluded(&run(&["--attack", "sign-flip", "--aggregate", "centered-clip"])), serde_json::json!([]));
    let bad = trellis(&["train", "--data", &data, "--attack", "copy", "--attackers", "4", "--workers", "4"]);
    assert!(stderr(&bad).contains("--attackers must be between 1"), "{}", stderr(&bad));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary holds libtorch's own CPU kernels to their AVX2 path (`ATEN_CPU_CAPABILITY`, unless
/// the user set it): on a machine with AVX-512 the wider kernels sum in another order, and a
/// trail trained there would not replay bit for bit on an AVX2-only checker (docs/protocol.md
/// §2.6). A run with the variable unset must be the run pinned to AVX2; where the CPU has
/// AVX-512, a run allowed to use it must differ (what makes the pin necessary).
#[test]
fn the_binary_pins_libtorchs_cpu_kernels_to_avx2() {
    let dir = temp_dir("aten");
    let data = corpus_text();
    let run = |name: &str, capability: Option<&str>| -> Vec<u8> {
        let out = dir.join(format!("{name}.safetensors"));
        let args = [
            "train",
            "--data",
            &data,
            "--model",
            "nano",
            "--workers",
            "1",
            "--inner-steps",
            "8",
            "--rounds",
            "1",
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command.args(args).env_remove("LD_LIBRARY_PATH").env_remove("ATEN_CPU_CAPABILITY");
        if let Some(capability) = capability {
            command.env("ATEN_CPU_CAPABILITY", capability);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        std::fs::read(&out).unwrap()
    };
    let unset = run("unset", None);
    assert!(unset == run("avx2", Some("avx2")), "with ATEN_CPU_CAPABILITY unset the run is not the AVX2 one");
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpu.contains("avx512f") {
        assert!(unset != run("avx512", Some("avx512")), "AVX-512 kernels gave the AVX2 bits: the premise changed");
    }
}
