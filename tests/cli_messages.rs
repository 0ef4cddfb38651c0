//! Bad input files and arguments are named for what they are and where: one error line, the
//! path (or flag, line, byte, tensor, key), no panic. A leading UTF-8 BOM is accepted.

mod common;

use common::{fixtures_dir, mla};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A copy of the v2-lite fixture in `work/name`, with `change` applied to it.
fn model_copy(work: &Path, name: &str, change: impl FnOnce(&Path)) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures_dir().join("v2-lite")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    change(&dir);
    dir
}

fn replace_with(path: &Path, make: impl FnOnce(&Path)) {
    std::fs::remove_file(path).unwrap();
    make(path);
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn model_files_are_named_for_what_they_are() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let config_file = fixtures_dir().join("v2-lite").join("config.json");
    assert_error(
        &mla(&[Path::new("info"), Path::new("--model"), &config_file]),
        &["is a file, not a model folder"],
    );
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            model_copy(w, "config-dir", |d| {
                replace_with(&d.join("config.json"), |p| std::fs::create_dir(p).unwrap())
            }),
            "config.json: is a directory",
        ),
        (
            model_copy(w, "config-fifo", |d| {
                replace_with(&d.join("config.json"), mkfifo)
            }),
            "config.json: is not a regular file",
        ),
        (
            model_copy(w, "weights-dir", |d| {
                replace_with(&d.join("model.safetensors"), |p| {
                    std::fs::create_dir(p).unwrap()
                })
            }),
            "model.safetensors: is a directory",
        ),
        (
            model_copy(w, "weights-fifo", |d| {
                replace_with(&d.join("model.safetensors"), mkfifo)
            }),
            "model.safetensors: is not a regular file",
        ),
        (
            model_copy(w, "weights-loop", |d| {
                replace_with(&d.join("model.safetensors"), |p| {
                    std::os::unix::fs::symlink("model.safetensors", p).unwrap()
                })
            }),
            "model.safetensors: Too many levels of symbolic links",
        ),
        (
            model_copy(w, "weights-zero", |d| {
                replace_with(&d.join("model.safetensors"), |p| {
                    std::os::unix::fs::symlink("/dev/zero", p).unwrap()
                })
            }),
            "model.safetensors: is not a regular file",
        ),
    ];
    for (dir, needle) in cases {
        assert_error(
            &mla(&[Path::new("info"), Path::new("--model"), &dir]),
            &[needle],
        );
    }
    let bf16_claim = model_copy(w, "weights-size", |d| {
        let path = d.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
        let at = header.find("\"model.embed_tokens.weight\"").unwrap();
        let dtype = at + header[at..].find("\"F32\"").unwrap();
        let header = format!("{}\"F16\"{}", &header[..dtype], &header[dtype + 5..]);
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(&path, out).unwrap();
    });
    assert_error(
        &mla(&[Path::new("info"), Path::new("--model"), &bf16_claim]),
        &["tensor model.embed_tokens.weight: F16 of shape [352, 48] takes 33792 bytes"],
    );
}

#[test]
fn a_bom_is_accepted_and_bad_settings_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let bom = model_copy(w, "bom", |d| {
        let path = d.join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("\u{feff}{text}")).unwrap();
    });
    let out = mla(&[Path::new("info"), Path::new("--model"), &bom]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (text, needle) in [
        (
            "[1]",
            "tokenizer_config.json: tokenizer: expected a JSON object",
        ),
        (
            "{\"add_bos_token\": \"yes\"}",
            "key `add_bos_token`: expected true or false",
        ),
        ("{\"eos_token\": 5}", "key `eos_token`"),
    ] {
        let dir = model_copy(w, &format!("tok{}", text.len()), |d| {
            std::fs::write(d.join("tokenizer_config.json"), text).unwrap()
        });
        let out = mla(&[
            Path::new("generate"),
            Path::new("--model"),
            &dir,
            Path::new("--prompt"),
            Path::new("hi"),
        ]);
        assert_error(&out, &[needle]);
    }
}

#[test]
fn invalid_utf8_and_bad_lines_say_where() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let model = fixtures_dir().join("v2-lite");
    let text = w.join("text.txt");
    std::fs::write(&text, b"line one\nab\xffcd").unwrap();
    let out = mla(&[
        Path::new("perplexity"),
        Path::new("--model"),
        &model,
        Path::new("--file"),
        &text,
    ]);
    assert_error(&out, &["text.txt:2: invalid UTF-8 at byte 12"]);

    let prompt = std::ffi::OsStr::from_bytes(b"a\xffb");
    let out = mla(&[
        std::ffi::OsStr::new("generate"),
        std::ffi::OsStr::new("--model"),
        model.as_os_str(),
        std::ffi::OsStr::new("--prompt"),
        prompt,
    ]);
    assert_error(&out, &["--prompt: invalid UTF-8 at byte 2"]);

    let prompts = w.join("p.jsonl");
    let output = w.join("o.jsonl");
    let batch = |content: &[u8]| {
        std::fs::write(&prompts, content).unwrap();
        mla(&[
            Path::new("generate"),
            Path::new("--model"),
            &model,
            Path::new("--prompts"),
            &prompts,
            Path::new("--output"),
            &output,
        ])
    };
    for (content, needle) in [
        (
            &b"{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 2, \"prompt\": \"\xff\"}"[..],
            "p.jsonl:2: invalid UTF-8 at byte 22",
        ),
        (b"[1, 2]", "p.jsonl:1: expected a JSON object"),
        (
            b"{\"id\": 1, \"prompt\": \"a\", \"stop\": 5}",
            "p.jsonl:1: \"stop\" must be a non-empty string",
        ),
    ] {
        assert_error(&batch(content), &[needle]);
    }
    let out = batch(b"\xef\xbb\xbf{\"id\": 1, \"prompt\": \"the\", \"max_tokens\": 2}\n");
    assert!(
        out.status.success(),
        "a BOM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
