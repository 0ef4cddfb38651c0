//! `mla generate --prompts FILE.jsonl --output OUT.jsonl` end to end, and chat templates.

mod common;

use common::{batch, fixtures_dir, mla, s};
use serde_json::{json, Value};

/// A DeepSeek-style chat template, as published DeepSeek-V2-Chat checkpoints write it.
const TEMPLATE: &str = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/// The v3 fixture with a chat template in its tokenizer_config.json.
fn chat_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures_dir().join("v3")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["chat_template"] = json!(TEMPLATE);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

#[test]
fn chat_template_renders_like_transformers() {
    let model = chat_model();
    let template = mla_rt::chat::ChatTemplate::load(model.path()).unwrap();
    let messages = vec![
        mla_rt::chat::Message {
            role: "system".into(),
            content: "Be brief.".into(),
        },
        mla_rt::chat::Message {
            role: "user".into(),
            content: "Hi".into(),
        },
    ];
    assert_eq!(
        template.render(&messages).unwrap(),
        "<|bos|>Be brief.\n\nUser: Hi\n\nAssistant:"
    );
    // The template writes BOS itself: the encoded prompt must hold exactly one.
    let config = mla_rt::config::ModelConfig::from_file(&model.path().join("config.json")).unwrap();
    let tokenizer = mla_rt::tokenizer::TextTokenizer::load(model.path(), &config).unwrap();
    let ids = tokenizer
        .encode_chat(&template.render(&messages).unwrap(), template.bos_token())
        .unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == 0).count(), 1);
    assert_eq!(ids[0], 0);
}

#[test]
fn batch_generation_writes_results_in_order_with_a_summary() {
    let model = chat_model();
    let work = tempfile::tempdir().unwrap();
    let prompts = work.path().join("prompts.jsonl");
    let output = work.path().join("out.jsonl");
    let shared = "The old sailor told the children a story about the sea and ";
    let mut lines = Vec::new();
    for i in 0..12 {
        lines.push(
            json!({"id": i, "prompt": format!("{shared}{}", "the ship ".repeat(i % 4))})
                .to_string(),
        );
    }
    lines.push(json!({"id": "chat", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 3}).to_string());
    lines.push(json!({"id": "hot", "prompt": "Once upon a time", "temperature": 0.9, "top_p": 0.9, "seed": 4}).to_string());
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let out = mla(&[
        "generate",
        "--model",
        s(model.path()),
        "--prompts",
        s(&prompts),
        "--output",
        s(&output),
        "--max-new-tokens",
        "6",
        "--block-size",
        "4",
        "--kv-cache-memory",
        "200KB",
        "--max-num-seqs",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "KV cache: ",
        "an MHA cache of this model would hold",
        "Throughput:",
        "requests/s",
        "output tokens/s",
        "TTFT (ms): mean",
        "ITL (ms): mean",
        "p99",
        "prefix cache hit rate",
        "outside the forward pass",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let results: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 14);
    for (i, r) in results.iter().take(12).enumerate() {
        assert_eq!(r["id"], json!(i));
        assert_eq!(r["completion_tokens"], json!(6));
        assert_eq!(r["finish_reason"], json!("length"));
        assert!(r["ttft_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(results[12]["id"], json!("chat"));
    assert_eq!(results[12]["completion_tokens"], json!(3));
    // The shared prefix came from the prefix cache for later requests.
    assert!(
        results[11]["cached_prompt_tokens"].as_u64().unwrap() >= 8,
        "{}",
        results[11]
    );

    // Each greedy result equals the same prompt generated alone.
    let alone = mla(&[
        "generate",
        "--model",
        s(model.path()),
        "--prompt",
        &format!("{shared}the ship "),
        "--max-new-tokens",
        "6",
    ]);
    assert!(alone.status.success());
    assert_eq!(
        String::from_utf8_lossy(&alone.stdout).trim_end_matches('\n'),
        format!("{shared}the ship {}", results[1]["text"].as_str().unwrap()),
        "the echoed prompt, then the same text as in the batch"
    );
}

#[test]
fn bad_request_files_name_the_line() {
    let model = fixtures_dir().join("v2-lite");
    let work = tempfile::tempdir().unwrap();
    let prompts = work.path().join("p.jsonl");
    let output = work.path().join("o.jsonl");
    let cases = [
        (
            "{\"id\": 1, \"prompt\": \"hi\"}\n{\"id\": 2, \"prompt\": ",
            ":2:",
        ),
        (
            "{\"id\": 1, \"prompt\": \"hi\", \"temprature\": 1}",
            "temprature",
        ),
        (
            "{\"id\": 1, \"prompt\": \"hi\", \"messages\": []}",
            "exactly one",
        ),
        (
            "{\"id\": 1, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
            ":1: \"messages\": ",
        ),
        ("{\"id\": 1, \"prompt\": \"hi\", \"top_p\": 2.0}", "--top-p"),
        ("", "no requests"),
    ];
    for (text, needle) in cases {
        std::fs::write(&prompts, text).unwrap();
        let out = mla(&[
            "generate",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--output",
            s(&output),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{needle}: {stderr}"
        );
        assert!(!output.exists(), "no output for a failed run");
    }
    let out = mla(&["generate", "--model", s(&model), "--prompt", "hi", "--chat"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("chat_template"),
        "{stderr}"
    );
}

#[test]
fn an_endless_chat_template_names_the_request_line() {
    let model = chat_model();
    let path = model.path().join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["chat_template"] =
        json!("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    std::fs::write(&path, config.to_string()).unwrap();
    let (out, _work, _) = batch(
        model.path(),
        "{\"id\": 1, \"prompt\": \"hi\"}\n{\"id\": 2, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.lines().count() == 1
            && stderr.contains("p.jsonl:2:")
            && stderr.contains("tokenizer_config.json")
            && stderr.contains("template steps"),
        "{stderr}"
    );
}

#[test]
fn an_fp8_cache_runs_batches_and_says_so() {
    let (out, _work, output) = batch(
        &fixtures_dir().join("v2-lite"),
        "{\"id\": 1, \"prompt\": \"the ship\", \"max_tokens\": 4}\n{\"id\": 2, \"prompt\": \"a story\", \"max_tokens\": 4}\n",
        &["--kv-cache-dtype", "fp8"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(" GiB, fp8); an MHA cache"), "{stderr}");
    let results = std::fs::read_to_string(&output).unwrap();
    assert_eq!(results.lines().count(), 2);
}
