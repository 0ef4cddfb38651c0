//! `--output` never destroys what the user did not ask to replace (symlinks, FIFOs, stdout, an
//! input given as the output, a failed run), and batch mode keeps every finished result when a
//! signal stops it.

mod common;

use common::{fixtures_dir, mla, s};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    fixtures_dir().join("v2-lite")
}

fn logits_to(output: &Path) -> Output {
    mla(&[
        "logits",
        "--model",
        s(&model()),
        "--token-ids",
        "1,2,3",
        "--output",
        s(output),
    ])
}

fn assert_logits_json(text: &str) {
    let value: Value = serde_json::from_str(text).expect("logits JSON");
    assert_eq!(value["logits"].as_array().unwrap().len(), 3);
}

#[test]
fn a_symlink_is_written_through_and_stays_a_link() {
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("target.json");
    std::fs::write(&target, "old").unwrap();
    let link = work.path().join("link.json");
    std::os::unix::fs::symlink("target.json", &link).unwrap();
    let out = logits_to(&link);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_logits_json(&std::fs::read_to_string(&target).unwrap());
    // A dangling link gets its target created.
    let dangling = work.path().join("dangling.json");
    std::os::unix::fs::symlink("new.json", &dangling).unwrap();
    assert!(logits_to(&dangling).status.success());
    assert_logits_json(&std::fs::read_to_string(work.path().join("new.json")).unwrap());
    let names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".partial")),
        "no temporary left: {names:?}"
    );
}

#[test]
fn a_fifo_and_stdout_are_written_directly() {
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let out = logits_to(&fifo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_logits_json(&reader.join().unwrap());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo_like());

    let out = logits_to(Path::new("-"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_logits_json(&String::from_utf8(out.stdout).unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<stdout>"));
    // /dev/stdout (a link through /proc to the pipe `output()` reads) and /dev/null.
    let out = logits_to(Path::new("/dev/stdout"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_logits_json(&String::from_utf8(out.stdout).unwrap());
    let out = logits_to(Path::new("/dev/null"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let null = std::fs::metadata("/dev/null").unwrap().file_type();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&null));
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[test]
fn an_input_given_as_the_output_is_refused_and_kept() {
    let work = tempfile::tempdir().unwrap();
    let prompts = work.path().join("p.jsonl");
    let text = "{\"id\": 1, \"prompt\": \"the\", \"max_tokens\": 2}\n";
    std::fs::write(&prompts, text).unwrap();
    let alias = work.path().join("alias.jsonl");
    std::fs::hard_link(&prompts, &alias).unwrap();
    let config = model().join("config.json");
    for (output, input) in [(&prompts, &prompts), (&alias, &prompts), (&config, &config)] {
        let out = mla(&[
            "generate",
            "--model",
            s(&model()),
            "--prompts",
            s(&prompts),
            "--output",
            s(output),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", output.display());
        assert!(
            stderr.lines().count() == 1
                && stderr.contains(s(output))
                && stderr.contains("same file as the input")
                && stderr.contains(input.file_name().unwrap().to_str().unwrap()),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&prompts).unwrap(), text);
}

#[test]
fn a_bad_output_path_fails_before_any_work_and_names_the_users_path() {
    let work = tempfile::tempdir().unwrap();
    let prompts = work.path().join("p.jsonl");
    // A request file that would fail if it were read: the output is checked first.
    std::fs::write(&prompts, "not json").unwrap();
    let output = work.path().join("nodir").join("out.jsonl");
    let out = mla(&[
        "generate",
        "--model",
        s(&model()),
        "--prompts",
        s(&prompts),
        "--output",
        s(&output),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.lines().count() == 1 && stderr.contains(s(&output)) && !stderr.contains("partial"),
        "{stderr}"
    );
    // A directory is refused as such.
    let out = logits_to(work.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is a directory"),
        "{stderr}"
    );
    // A failed run leaves an existing output as it was.
    let existing = work.path().join("keep.json");
    std::fs::write(&existing, "keep").unwrap();
    let out = mla(&[
        "logits",
        "--model",
        s(&model()),
        "--token-ids",
        "100000",
        "--output",
        s(&existing),
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
}

/// Lines of the batch run's temporary output (`.out.jsonl.<pid>.partial`) written so far.
fn partial_lines(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .map(|t| t.lines().count())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn a_signal_stops_batch_mode_and_keeps_every_finished_result() {
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let work = tempfile::tempdir().unwrap();
        let prompts = work.path().join("p.jsonl");
        let output = work.path().join("out.jsonl");
        let total = 2000;
        let lines: Vec<String> = (0..total)
            .map(|i| {
                format!("{{\"id\": {i}, \"prompt\": \"the ship {i}\", \"max_tokens\": 60, \"ignore_eos\": true}}")
            })
            .collect();
        std::fs::write(&prompts, lines.join("\n")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mla"))
            .args([
                "generate",
                "--model",
                s(&model()),
                "--prompts",
                s(&prompts),
                "--output",
                s(&output),
                "--max-num-seqs",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while partial_lines(work.path()) < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no result written"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        let results: Vec<Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every kept line is JSON"))
            .collect();
        assert!(
            results.len() >= 3 && results.len() < total,
            "{}",
            results.len()
        );
        let ids: Vec<u64> = results.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "input order: {ids:?}");
        assert!(results
            .iter()
            .all(|r| r["completion_tokens"].as_u64() == Some(60)));
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("SIG{signal}"))
                && last.contains(&format!("{} of {total} requests finished", results.len())),
            "{stderr}"
        );
    }
}
