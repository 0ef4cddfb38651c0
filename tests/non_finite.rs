//! A NaN in the weights stops `logits`, `generate` (greedy and sampled) and `perplexity` with
//! one error naming the position, and `info --verify` names the tensor.

mod common;

use common::{fixtures_dir, mla, s};
use std::process::Output;

/// The v2-lite fixture with NaN in every element of `token`'s embedding row.
fn poisoned_model(token: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures_dir().join("v2-lite");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let embed = &header["model.embed_tokens.weight"];
    assert_eq!(embed["dtype"], "F32");
    let hidden = embed["shape"][1].as_u64().unwrap() as usize;
    let begin = 8 + header_len + embed["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bytes = bytes.clone();
    for c in 0..hidden {
        let at = begin + (token * hidden + c) * 4;
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    dir
}

fn assert_one_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(errors[0].contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn a_nan_weight_stops_every_command_with_the_position() {
    // Token 5's row: position 1 of the logits input, every position of a text starting with it.
    let model = poisoned_model(5);
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("logits.json");
    let out = mla(&[
        "logits",
        "--model",
        s(model.path()),
        "--token-ids",
        "1,5,2",
        "--output",
        s(&output),
    ]);
    assert_one_error(&out, &["not finite", "position 1"]);
    assert!(!output.exists(), "nothing written");

    let config = mla_rt::config::ModelConfig::from_file(&model.path().join("config.json")).unwrap();
    let tokenizer = mla_rt::tokenizer::TextTokenizer::load(model.path(), &config).unwrap();
    let text = tokenizer.decode(&[5, 9, 12, 5, 30]).unwrap();
    let ids = tokenizer.encode(&text).unwrap();
    assert!(
        ids.contains(&5),
        "the text holds the poisoned token: {ids:?}"
    );
    let out = mla(&[
        "generate",
        "--model",
        s(model.path()),
        "--prompt",
        &text,
        "--max-new-tokens",
        "3",
    ]);
    assert_one_error(&out, &["not finite", "request prompt", "position"]);

    // Sampled rows take the top-k and row-total path.
    let line = serde_json::json!({"id": 1, "prompt": text, "temperature": 0.8, "top_k": 5});
    let (out, _batch_dir, _) = common::batch(model.path(), &line.to_string(), &[]);
    assert_one_error(&out, &["not finite", "position"]);

    let file = work.path().join("text.txt");
    std::fs::write(&file, text.repeat(4)).unwrap();
    let out = mla(&["perplexity", "--model", s(model.path()), "--file", s(&file)]);
    assert_one_error(&out, &["not finite", "token"]);
}

#[test]
fn info_verify_names_the_first_non_finite_tensor() {
    let model = poisoned_model(7);
    let out = mla(&["info", "--model", s(model.path()), "--verify"]);
    assert_one_error(
        &out,
        &[
            "model.embed_tokens.weight",
            "NaN",
            &format!("element {}", 7 * 48),
        ],
    );
    let clean = fixtures_dir().join("v2-lite");
    let out = mla(&["info", "--model", s(&clean), "--verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("is finite"));
}
