//! The `mla` binary used as a hostile-but-realistic user would: where its results go when that
//! place fails (a reader that closed the pipe, `mla info | head -1`, ends the program quietly; a
//! full disk is one error line naming stdout) and flags out of range; none panics.

mod common;

use common::fixtures_dir;
use std::process::{Command, Output, Stdio};

/// The commands that print results to stdout, on a small fixture.
fn commands() -> Vec<Vec<String>> {
    let model = fixtures_dir().join("v2-lite");
    let model = model.to_str().unwrap().to_string();
    let text = fixtures_dir().join("v2-lite").join("config.json");
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        args(&["info", "--model", &model]),
        args(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "The",
            "--max-new-tokens",
            "3",
        ]),
        args(&[
            "perplexity",
            "--model",
            &model,
            "--file",
            text.to_str().unwrap(),
            "--context",
            "16",
        ]),
    ]
}

fn run(args: &[String], stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mla"))
        .args(args)
        .stdout(stdout)
        .output()
        .expect("run mla")
}

fn no_panic(args: &[String], out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {stderr}"
    );
    stderr
}

#[test]
fn a_closed_pipe_ends_the_program_quietly() {
    for args in commands() {
        // The reader is gone before the program writes a byte: its first write fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = run(&args, Stdio::from(writer));
        let stderr = no_panic(&args, &out);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_full_disk_is_one_error_line_naming_stdout() {
    for args in commands() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full (Linux)");
        let out = run(&args, Stdio::from(full));
        let stderr = no_panic(&args, &out);
        assert!(!out.status.success(), "{args:?} should fail");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(
            errors,
            ["error: <stdout>: No space left on device (os error 28)"],
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn counts_and_strings_out_of_range_are_refused() {
    let model = fixtures_dir().join("v2-lite");
    let model = model.to_str().unwrap();
    let file = fixtures_dir().join("v2-lite").join("config.json");
    for (args, flag) in [
        (
            vec![
                "perplexity",
                "--model",
                model,
                "--file",
                file.to_str().unwrap(),
                "--stride",
                "0",
            ],
            "--stride",
        ),
        (
            vec!["bench", "--preset", "v2-lite", "--reps", "0"],
            "--reps",
        ),
        (
            vec!["generate", "--model", model, "--prompt", "a", "--stop", ""],
            "--stop",
        ),
        (
            vec!["--threads", "100000", "info", "--model", model],
            "--threads",
        ),
        (
            vec!["--threads", "0", "info", "--model", model],
            "--threads",
        ),
        (
            vec![
                "generate",
                "--model",
                model,
                "--prompt",
                "a",
                "--block-size",
                "1000000",
            ],
            "--block-size",
        ),
        (
            vec!["bench", "--preset", "v2-lite", "--block-size", "0"],
            "--block-size",
        ),
        (
            vec![
                "generate",
                "--model",
                model,
                "--prompt",
                "a",
                "--max-num-seqs",
                "0",
            ],
            "--max-num-seqs",
        ),
        (
            vec![
                "generate",
                "--model",
                model,
                "--prompt",
                "a",
                "--kv-cache-memory",
                "1",
            ],
            "--kv-cache-memory",
        ),
        (
            vec![
                "bench",
                "--preset",
                "deepseek-v2-lite",
                "--layers",
                "1",
                "--batch",
                "max",
                "--kv-cache-memory",
                "1",
            ],
            "--batch max",
        ),
        (
            vec![
                "bench",
                "--preset",
                "deepseek-v2-lite",
                "--depth",
                "18446744073709551615",
            ],
            "max_position_embeddings",
        ),
        (
            vec![
                "bench",
                "--preset",
                "deepseek-v2-lite",
                "--gen",
                "18446744073709551615",
            ],
            "max_position_embeddings",
        ),
        (
            vec![
                "bench",
                "--preset",
                "deepseek-v2-lite",
                "--batch",
                "18446744073709551615",
            ],
            "--batch",
        ),
    ]
    .into_iter()
    .chain(
        [
            "--gpu-memory-utilization=NaN",
            "--gpu-memory-utilization=-1",
            "--gpu-memory-utilization=2",
            "--gpu-memory-utilization=0",
        ]
        .map(|flag| {
            (
                vec!["generate", "--model", model, "--prompt", "a", flag],
                "--gpu-memory-utilization",
            )
        }),
    ) {
        let out = Command::new(env!("CARGO_BIN_EXE_mla"))
            .args(&args)
            .output()
            .expect("run mla");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            !stderr.contains("panicked") && stderr.starts_with("error: ") && stderr.contains(flag),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
