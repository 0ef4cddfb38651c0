//! The `mla` binary end to end: the three commands on the fixtures, and every bad-input path
//! giving one clear line, a non-zero exit and no panic.

mod common;

use common::{fixtures_dir, mla, random_weights, rel_l2, s, tiny_config, write_model};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

/// Runs `mla` expecting failure; returns its one-line message.
fn fails(args: &[&str]) -> String {
    let out = mla(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{args:?} should fail; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    lines[0].to_string()
}

fn ids_arg(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn logits_command_writes_reference_logits() {
    let exp = expected("v2-lite");
    let ids: Vec<u64> = exp["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let out_dir = tempfile::tempdir().unwrap();
    let out_file = out_dir.path().join("logits.json");
    let model = fixture("v2-lite");
    let status = mla(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--token-ids",
        &ids_arg(&ids),
        "--prefill",
        "7",
        "--output",
        out_file.to_str().unwrap(),
    ]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(written["token_ids"], exp["token_ids"]);
    let rows = written["logits"].as_array().unwrap();
    assert_eq!(rows.len(), ids.len());
    for (row, want) in rows.iter().zip(exp["logits"].as_array().unwrap()) {
        let got: Vec<f32> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(rel_l2(&got, &want) <= 1e-4);
    }
}

#[test]
fn generate_streams_the_greedy_continuation() {
    for name in ["v2-grouped", "v3"] {
        let exp = expected(name);
        let model = fixture(name);
        let n = exp["greedy_ids"].as_array().unwrap().len().to_string();
        let out = mla(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            exp["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            &n,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("prefill:") && stderr.contains("tokens/s"),
            "{stderr}"
        );
        // The same text the tokenizer decodes from transformers' greedy ids.
        let config = mla_rt::config::ModelConfig::from_file(&model.join("config.json")).unwrap();
        let tokenizer = mla_rt::tokenizer::TextTokenizer::load(&model, &config).unwrap();
        let ids: Vec<u32> = exp["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let text = tokenizer.decode(&ids).unwrap();
        let prompt = exp["prompt"].as_str().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{prompt}{text}\n"),
            "{name}: the prompt, then the continuation"
        );
    }
}

#[test]
fn generate_with_sampling_is_reproducible_per_seed() {
    let model = fixture("v3-halfsplit");
    let run = |seed: &str| {
        let out = mla(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "The sea",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0.9",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(run("5"), run("5"));
}

#[test]
fn info_reports_architecture_params_and_cache_ratio() {
    let model = fixture("v2-lite");
    let out = mla(&["info", "--model", model.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "deepseek_v2",
        "layers:       3 (1 dense, 2 MoE)",
        "parameters:",
        "activated",
        "KV cache:",
        "smaller",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Latent 24 + 8 = 32 values against 2·4·16 = 128 for MHA: 4.0× smaller.
    assert!(
        text.contains("MLA latent 32 values") && text.contains("4.0×"),
        "{text}"
    );
}

#[test]
fn info_param_count_matches_the_checkpoint() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let dir = fixture(name);
        let config = mla_rt::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let checkpoint = mla_rt::weights::Checkpoint::open(&dir).unwrap();
        let in_files: u64 = checkpoint.tensor_sizes().map(|(_, n)| n as u64).sum();
        assert_eq!(
            mla_rt::model::params::count_params(&config).total,
            in_files,
            "{name}"
        );
    }
}

#[test]
fn help_documents_every_command() {
    let out = mla(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["generate", "logits", "info"] {
        assert!(text.contains(cmd), "{text}");
        let sub = mla(&[cmd, "--help"]);
        assert!(sub.status.success());
        assert!(String::from_utf8_lossy(&sub.stdout).contains("--model"));
    }
}

/// A copy of a fixture in a temporary folder, to break in one way.
fn broken_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// The one-line error of `mla logits` on the model in `dir` (nothing may be written).
fn logits_fails(dir: &Path, token_ids: &str) -> String {
    fails(&[
        "logits",
        "--model",
        s(dir),
        "--token-ids",
        token_ids,
        "--output",
        "/tmp/never.json",
    ])
}

#[test]
fn bad_model_folders_fail_with_one_line() {
    let err = fails(&["info", "--model", "/nonexistent/model"]);
    assert!(
        err.contains("/nonexistent/model") && err.contains("not found"),
        "{err}"
    );

    let dir = broken_copy("v2-lite");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(fails(&["info", "--model", s(dir.path())]).contains("config.json"));

    let dir = broken_copy("v2-lite");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"deepseek_v2\",",
    )
    .unwrap();
    let err = fails(&["info", "--model", s(dir.path())]);
    assert!(
        err.contains("config.json") && err.contains("malformed JSON"),
        "{err}"
    );

    let dir = broken_copy("v2-lite");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    config["model_type"] = json!("mamba");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = fails(&["info", "--model", s(dir.path())]);
    assert!(err.contains("model_type") && err.contains("mamba"), "{err}");

    let dir = broken_copy("v2-lite");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(fails(&["info", "--model", s(dir.path())]).contains("no weights found"));

    let dir = broken_copy("v2-lite");
    let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    let err = logits_fails(dir.path(), "1,2");
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );

    let dir = broken_copy("v2-lite");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = fails(&["generate", "--model", s(dir.path()), "--prompt", "hi"]);
    assert!(
        err.contains("tokenizer.json") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn bad_tensors_name_the_tensor() {
    let config = tiny_config("deepseek_v2", json!({}));
    let mut weights = random_weights(&config, 9);
    weights.remove("model.layers.1.self_attn.kv_b_proj.weight");
    let dir = write_model(&config, &weights);
    let err = logits_fails(dir.path(), "1");
    assert!(
        err.contains("model.layers.1.self_attn.kv_b_proj.weight") && err.contains("missing"),
        "{err}"
    );

    let mut weights = random_weights(&config, 9);
    weights.insert("model.norm.weight".into(), (vec![31], vec![1.0; 31]));
    let dir = write_model(&config, &weights);
    let err = logits_fails(dir.path(), "1");
    assert!(
        err.contains("model.norm.weight has shape [31], expected [32]"),
        "{err}"
    );

    // An FP8 tensor where the model needs a float one.
    let weights = random_weights(&config, 9);
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, (shape, data)) in &weights {
        if name == "model.layers.0.self_attn.o_proj.weight" {
            bytes.push((name.clone(), shape.clone(), vec![0u8; data.len()]));
        } else {
            bytes.push((
                name.clone(),
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, shape, b)| {
            let dtype = if b.len() == shape.iter().product::<usize>() {
                safetensors::Dtype::F8_E4M3
            } else {
                safetensors::Dtype::F32
            };
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let dir = write_model(&config, &weights);
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = logits_fails(dir.path(), "1");
    assert_eq!(err, format!("error: {}/model.safetensors: tensor model.layers.0.self_attn.o_proj.weight is F8_E4M3, but config.json has no quantization_config (block-scaled fp8)", dir.path().display()));
}

#[test]
fn bad_requests_fail_with_one_line_and_write_nothing() {
    let model = fixture("v2-lite");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.json");
    let base = ["logits", "--model", s(&model), "--output", s(&out)];

    let err = fails(&[&base[..], &["--token-ids", "1,352"]].concat());
    assert!(err.contains("352") && err.contains("vocab"), "{err}");
    let long = vec!["5"; 129].join(",");
    let err = fails(&[&base[..], &["--token-ids", &long]].concat());
    assert!(err.contains("max_position_embeddings"), "{err}");
    let err = fails(&[&base[..], &["--token-ids", "1,2", "--prefill", "3"]].concat());
    assert!(err.contains("--prefill"), "{err}");
    let err = fails(&[
        "logits",
        "--model",
        s(&model),
        "--token-ids",
        "1",
        "--output",
        "/nonexistent/dir/out.json",
    ]);
    assert!(err.contains("/nonexistent/dir"), "{err}");
    assert!(
        std::fs::read_dir(out_dir.path()).unwrap().next().is_none(),
        "nothing may be left behind"
    );

    let gen = ["generate", "--model", s(&model)];
    let err = fails(&[&gen[..], &["--prompt", "hi", "--top-p", "1.5"]].concat());
    assert!(err.contains("--top-p") && err.contains("1.5"), "{err}");
    let err = fails(&[&gen[..], &["--prompt", "hi", "--max-new-tokens", "0"]].concat());
    assert!(err.contains("--max-new-tokens"), "{err}");
    let err = fails(&[&gen[..], &["--prompt", "hi", "--top-p", "0"]].concat());
    assert!(err.contains("--top-p"), "{err}");
    let err = fails(&[&gen[..], &["--prompt", &"the sea and the ship ".repeat(40)]].concat());
    assert!(
        err.contains("--prompt") && err.contains("max_position_embeddings"),
        "{err}"
    );
    let err = fails(&[&gen[..], &["--prompt", "hi", "--device", "cuda"]].concat());
    assert!(err.starts_with("error: device: "), "{err}");
}

#[test]
fn generate_stops_at_eos() {
    let exp = expected("v2-grouped");
    let greedy: Vec<u32> = exp["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    // Make the third greedy token the model's EOS: generation must print the first two only.
    let dir = broken_copy("v2-grouped");
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["eos_token_id"] = json!(greedy[2]);
    std::fs::write(&path, config.to_string()).unwrap();
    let out = mla(&[
        "generate",
        "--model",
        s(dir.path()),
        "--prompt",
        exp["prompt"].as_str().unwrap(),
        "--max-new-tokens",
        "8",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("finish: stop") && stderr.contains("decode: 2 tokens"),
        "{stderr}"
    );
    let model_config = mla_rt::config::ModelConfig::from_file(&path).unwrap();
    let tokenizer = mla_rt::tokenizer::TextTokenizer::load(dir.path(), &model_config).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}{}\n",
            exp["prompt"].as_str().unwrap(),
            tokenizer.decode(&greedy[..2]).unwrap()
        )
    );
}

#[test]
fn info_describes_grouped_query_attention() {
    let out = mla(&["info", "--model", fixture("llama-gqa").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "(llama)",
        "GQA (2 query heads per KV head)",
        "head dim 16",
        "llama3 ×8",
        "2.0× smaller",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn perplexity_command_matches_transformers() {
    for name in ["v2-lite", "llama-gqa"] {
        let exp = expected(name);
        let reference = &exp["perplexity"];
        let work = tempfile::tempdir().unwrap();
        let text = work.path().join("text.txt");
        std::fs::write(&text, reference["text"].as_str().unwrap()).unwrap();
        let (context, stride) = (
            reference["context"].to_string(),
            reference["stride"].to_string(),
        );
        let model = fixture(name);
        let out = mla(&[
            "perplexity",
            "--model",
            s(&model),
            "--file",
            s(&text),
            "--context",
            &context,
            "--stride",
            &stride,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |label: &str| -> f64 {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label} in {stdout}"));
            line.split_whitespace().last().unwrap().parse().unwrap()
        };
        assert_eq!(
            value("tokens evaluated:") as u64,
            reference["tokens_evaluated"].as_u64().unwrap()
        );
        let ppl = reference["ppl"].as_f64().unwrap();
        assert!(
            (value("perplexity:") - ppl).abs() / ppl < 1e-4,
            "{name}: {stdout} vs {ppl}"
        );
    }
    let err = fails(&[
        "perplexity",
        "--model",
        fixture("v2-lite").to_str().unwrap(),
        "--file",
        "/nonexistent.txt",
    ]);
    assert!(err.contains("/nonexistent.txt"), "{err}");
}

#[test]
fn generate_profile_prints_a_per_op_table() {
    let model = fixture("v3");
    let out = mla(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "The sea",
        "--max-new-tokens",
        "4",
        "--profile",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for op in [
        "| attention | 12 |",
        "| moe | 8 |",
        "| mlp | 4 |",
        "| lm_head | 4 |",
        "| other",
    ] {
        assert!(stderr.contains(op), "missing {op:?} in:\n{stderr}");
    }
}
