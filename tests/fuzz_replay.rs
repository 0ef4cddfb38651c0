//! The fuzz targets' bodies (`mla_rt::fuzz_targets`, run for millions of inputs by
//! `scripts/fuzz/run.sh`) replayed in `cargo test`: over the committed seeds
//! (`fuzz/seeds/<target>/`: each `ok-*` must be accepted and each `err-*` refused, so a seed
//! still reaches the code it was written for) and over a few thousand mutations of them drawn
//! from a fixed seed, none of which may panic. Then the inputs the fuzzer found, each once a bug.

use mla_rt::fuzz_targets as body;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::path::Path;

/// Mutated inputs per target.
const MUTATIONS: u32 = 2000;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
    seeds
}

/// Bytes the mutations insert: JSON's and Jinja's punctuation, and numbers at the edges of
/// the integer and float types.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e400",
    b"-1e400",
    b"18446744073709551616",
    b"18446744073709551615",
    b"4294967296",
    b"1048577",
    b"99999999999",
    b"0.5",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\n",
    b"{{",
    b"}}",
    b"{%",
    b"%}",
    b"range(",
    b")",
    b" * ",
    b"messages",
    b"loop",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Index),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<Index>(), 1..32usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1..64usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: &Index| i.index(data.len() + 1);
        match m {
            Mutation::FlipBit(i, b) if !data.is_empty() => {
                let i = i.index(data.len());
                data[i] ^= 1 << b;
            }
            Mutation::SetByte(i, b) if !data.is_empty() => {
                let i = i.index(data.len());
                data[i] = *b;
            }
            Mutation::Insert(i, t) => {
                let i = at(i);
                let token = TOKENS[t.index(TOKENS.len())];
                data.splice(i..i, token.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(i);
                data.drain(i..(i + n).min(data.len()));
            }
            Mutation::Duplicate(i, n) => {
                let i = at(i);
                let copy = data[i..(i + n).min(data.len())].to_vec();
                data.splice(i..i, copy);
            }
            Mutation::Truncate(i) => data.truncate(at(i)),
            _ => {}
        }
    }
    data
}

/// Every seed of `target` as its name says, then `MUTATIONS` mutated seeds: none panics.
fn replay<T>(target: &str, run: impl Fn(&[u8]) -> mla_rt::Result<T>) {
    let seeds = seeds(target);
    for (name, data) in &seeds {
        let result = run(data);
        match name.split('-').next() {
            Some("ok") => assert!(result.is_ok(), "{target}/{name}: {}", result.err().unwrap()),
            Some("err") => assert!(result.is_err(), "{target}/{name} was accepted"),
            _ => panic!("{target}/{name}: a seed's name starts with ok- or err-"),
        }
    }
    let config = Config {
        cases: MUTATIONS,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = (any::<Index>(), prop::collection::vec(mutation(), 1..6));
    let outcome = runner.run(&strategy, |(seed, mutations)| {
        let _ = run(&apply(seeds[seed.index(seeds.len())].1.clone(), &mutations));
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{target}: {e}");
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn safetensors_seeds_and_mutations() {
    let dir = scratch();
    replay("safetensors", |d| body::safetensors(dir.path(), d));
}

#[test]
fn config_json_seeds_and_mutations() {
    let dir = scratch();
    replay("config_json", |d| body::config_json(dir.path(), d));
}

#[test]
fn chat_template_seeds_and_mutations() {
    let dir = scratch();
    replay("chat_template", |d| body::chat_template(dir.path(), d));
}

#[test]
fn request_line_seeds_and_mutations() {
    replay("request_line", body::request_line);
}

#[test]
fn openai_body_seeds_and_mutations() {
    replay("openai_body", body::openai_body);
}

/// Found by the config_json target (fuzz/seeds/config_json/ok-limits-*): a config within every
/// dimension limit whose parameter count passes u64 (Llama-family, 2^20 wide, 4,096 heads,
/// 1,024 layers; DeepSeek with 2^20 experts of 2^20 × 2^20) made the count overflow: a panic in debug
/// builds, wrapped numbers in `mla info` and a wrong host-memory check in release. The count
/// now saturates.
#[test]
fn parameter_counts_past_u64_saturate() {
    let dir = scratch();
    for name in ["ok-limits-llama", "ok-limits-deepseek"] {
        let data = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds/config_json")
                .join(name),
        )
        .unwrap();
        body::config_json(dir.path(), &data).unwrap();
        let config =
            mla_rt::config::ModelConfig::from_file(&dir.path().join("config.json")).unwrap();
        let counts = mla_rt::model::params::count_params(&config);
        assert_eq!(counts.total, u64::MAX, "{name}");
        let fits = mla_rt::engine::memory::check_weights_fit_host(&config, name);
        assert!(fits.is_err() || mla_rt::util::host_memory::available_host_bytes().is_none());
    }
}

/// Found while writing the openai_body target: every choice (prompts × `n`) of a completion
/// holds its own engine request, so a 4 MiB body of a million one-token prompts with `n` 128
/// asked the server to build 134 million requests (tens of GB) before the queue's limit was
/// looked at. One request may now ask for at most 1,024 choices.
#[test]
fn a_request_of_too_many_choices_is_refused_before_they_are_made() {
    let batch = |prompts: usize, n: usize| {
        let prompt = vec![vec![1]; prompts];
        serde_json::json!({"prompt": prompt, "n": n}).to_string()
    };
    assert_eq!(body::openai_body(batch(8, 128).as_bytes()).unwrap(), 1024);
    let err = body::openai_body(batch(9, 128).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("at most 1024"), "{err}");
    let err = body::openai_body(batch(1_000_000, 128).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("128000000 choices"), "{err}");
}

/// Found by the chat_template target (fuzz/seeds/chat_template/err-raw-format-key-multibyte):
/// minijinja 2.24's `format` filter slices a `%(key)` inside a character of more than one byte
/// and panics, which took down `--chat`, batch `messages` lines and the server's chat requests.
/// A panic of the template engine is now the template's error.
#[test]
fn a_template_engine_panic_is_the_templates_error() {
    let dir = scratch();
    for source in [
        "{{ '%(é)s' | format(1) }}",
        "{{ '%(\u{1F600}' | format(x=1) }}",
    ] {
        let err = body::chat_template(dir.path(), source.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("the template engine failed"),
            "{source}: {err}"
        );
    }
}
