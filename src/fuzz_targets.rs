//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run by `scripts/fuzz/run.sh`;
//! replayed over the committed seeds and their mutations by `tests/fuzz_replay.rs`): each takes
//! arbitrary bytes through one of the parsers that read what a user hands the runtime, and must
//! return a value or one of the crate's errors for every input: never panic, hang, overflow the
//! stack or allocate far beyond the input's size.
//!
//! The loaders read files, so the targets that test them write the input into `dir`, a scratch
//! folder the caller owns and reuses (each call replaces the files it writes there).

use crate::chat::{ChatTemplate, Message};
use crate::config::ModelConfig;
use crate::engine::request_line::RequestLine;
use crate::engine::sampler::SamplingParams;
use crate::error::{Error, Result};
use crate::model::params;
use crate::openai_request::{
    self, ChatMessage, ChatRequest, CompletionRequest, DetokenizeRequest, RequestModel,
    TokenizeRequest,
};
use crate::weights::Checkpoint;
use std::path::Path;

/// The shard names a fuzzed `model.safetensors.index.json` can point at.
pub const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
}

fn remove(dir: &Path, name: &str) {
    // Absent already is what we want; any other failure shows up when the file is written.
    let _ = std::fs::remove_file(dir.join(name));
}

/// Splits off a 2-byte little-endian length and that many bytes (fewer where the input ends).
fn take_prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return (data, &[]);
    };
    rest.split_at((u16::from_le_bytes(*len) as usize).min(rest.len()))
}

/// (a) A checkpoint folder, opened as [`Checkpoint::open`] opens it and every tensor read back.
/// The first byte picks the layout: even, the rest is `model.safetensors`; odd, the rest is a
/// length-prefixed `model.safetensors.index.json`, a length-prefixed first shard, then the
/// second shard ([`SHARDS`]).
pub fn safetensors(dir: &Path, data: &[u8]) -> Result<usize> {
    for name in ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .chain(&SHARDS)
    {
        remove(dir, name);
    }
    match data.split_first() {
        Some((layout, rest)) if layout % 2 == 1 => {
            let (index, rest) = take_prefixed(rest);
            let (first, second) = take_prefixed(rest);
            write(dir, "model.safetensors.index.json", index)?;
            write(dir, SHARDS[0], first)?;
            write(dir, SHARDS[1], second)?;
        }
        Some((_, rest)) => write(dir, "model.safetensors", rest)?,
        None => write(dir, "model.safetensors", data)?,
    }
    let checkpoint = Checkpoint::open(dir)?;
    checkpoint.dtypes();
    let names: Vec<(String, usize)> = checkpoint
        .tensor_sizes()
        .map(|(name, size)| (name.to_string(), size))
        .collect();
    let mut values = 0;
    for (name, _) in &names {
        let shape = checkpoint.shape(name).unwrap_or_default().to_vec();
        // A shape that does not match must be refused, not read.
        let wrong: Vec<usize> = shape
            .iter()
            .map(|d| d.saturating_add(1))
            .chain([2])
            .collect();
        if checkpoint.load(name, &wrong).is_ok() {
            return Err(Error::InvalidInput(format!(
                "{name}: loaded with a wrong shape"
            )));
        }
        if let Ok(tensor) = checkpoint.load(name, &shape) {
            values += tensor.data.len();
        }
    }
    Ok(values)
}

/// (b) `config.json`, read by [`ModelConfig::from_file`], then every size the runtime derives
/// from a config alone (parameter counts, cache widths, the softmax scale, MoE layers).
pub fn config_json(dir: &Path, data: &[u8]) -> Result<u64> {
    write(dir, "config.json", data)?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let counts = params::count_params(&config);
    let (cached, mha) = params::kv_values_per_token_per_layer(&config);
    let step = params::decode_step_weight_params(&config, 64);
    crate::engine::memory::check_weights_fit_host(&config, "config.json").ok();
    let mut sum = counts.total ^ counts.activated ^ cached ^ mha ^ step.to_bits();
    sum ^= config.cache_width() as u64 ^ config.vocab_size() as u64;
    if let Some(c) = config.deepseek() {
        sum ^= c.softmax_scale().to_bits() as u64 ^ c.qk_head_dim() as u64;
        sum ^= (0..c.num_hidden_layers)
            .filter(|&l| c.is_moe_layer(l))
            .count() as u64;
    }
    Ok(sum)
}

/// The conversation every fuzzed chat template renders.
fn conversation() -> Vec<Message> {
    [
        ("system", "Be brief."),
        ("user", "Hello"),
        ("assistant", "Hi."),
        ("user", "Why?"),
    ]
    .into_iter()
    .map(|(role, content)| Message {
        role: role.into(),
        content: content.into(),
    })
    .collect()
}

/// (c) A chat template rendered over a fixed conversation. An input that starts (after blanks)
/// with `{` but not with a Jinja tag (`{{`, `{%`, `{#`) is a whole `tokenizer_config.json`,
/// loaded by [`ChatTemplate::load`]; any other is a template's source (in a config with BOS and
/// EOS), so that the template language is fuzzed without JSON escaping in the way. Returns the
/// rendered length.
pub fn chat_template(dir: &Path, data: &[u8]) -> Result<usize> {
    let config = match data.trim_ascii_start() {
        [b'{', next, ..] if !matches!(next, b'{' | b'%' | b'#') => data.to_vec(),
        _ => serde_json::json!({
            "chat_template": String::from_utf8_lossy(data),
            "bos_token": "<s>",
            "eos_token": {"content": "</s>"},
        })
        .to_string()
        .into_bytes(),
    };
    write(dir, "tokenizer_config.json", &config)?;
    Ok(ChatTemplate::load(dir)?.render(&conversation())?.len())
}

/// (d) Batch mode's JSONL input as `mla generate --prompts` reads it before tokenizing: a
/// leading UTF-8 BOM dropped, lines split at `\n`, each non-blank one (UTF-8 or an error)
/// parsed by [`RequestLine::parse`] and its sampling overrides applied to the defaults.
/// Returns the lines accepted, or the first error where none is.
pub fn request_line(data: &[u8]) -> Result<usize> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut accepted = 0;
    let mut first_error = None;
    for raw in data.split(|&b| b == b'\n') {
        let line = match std::str::from_utf8(raw) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => {
                RequestLine::parse(line).and_then(|l| l.sampling.apply(SamplingParams::default()))
            }
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1)),
        };
        match line {
            Ok(_) => accepted += 1,
            Err(e) => {
                first_error.get_or_insert(Error::InvalidInput(e));
            }
        }
    }
    match (accepted, first_error) {
        (0, Some(e)) => Err(e),
        (n, _) => Ok(n),
    }
}

/// The model a fuzzed request body is checked against: a vocabulary of 1,000 tokens, a context
/// of 256, one token per byte of text, and a chat template that joins roles and contents.
struct StandIn;

impl RequestModel for StandIn {
    type Error = Error;

    fn check_model(&self, requested: Option<&str>) -> Result<()> {
        match requested {
            Some(m) if m != "stand-in" => Err(Error::InvalidInput(format!("model {m}"))),
            _ => Ok(()),
        }
    }

    fn vocab_size(&self) -> usize {
        1000
    }

    fn max_pos(&self) -> usize {
        256
    }

    fn text_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids.iter().map(|&id| char::from(id as u8)).collect())
    }

    fn chat_ids(&self, messages: Vec<ChatMessage>) -> Result<Vec<u32>> {
        if messages.is_empty() {
            return Err(Error::InvalidInput("`messages` is empty".into()));
        }
        let text: String = openai_request::messages(messages)?
            .iter()
            .map(|m| format!("{}: {}\n", m.role, m.content))
            .collect();
        self.text_ids(&text)
    }
}

/// (e) A body of `mla serve`'s endpoints, parsed as each of the four request types the server
/// takes and, where it parses, checked and turned into engine requests as the server does it
/// (against [`StandIn`]). Returns the choices made.
pub fn openai_body(data: &[u8]) -> Result<usize> {
    let json = |e: serde_json::Error| Error::Json {
        path: openai_request::BODY.into(),
        source: e,
    };
    let model = StandIn;
    let mut choices = 0;
    let mut first_error = None;
    let mut note = |r: Result<usize>| match r {
        Ok(n) => choices += n,
        Err(e) => {
            first_error.get_or_insert(e);
        }
    };
    note(
        serde_json::from_slice::<CompletionRequest>(data)
            .map_err(json)
            .and_then(|r| r.job(&model))
            .map(|job| job.choices.len()),
    );
    note(
        serde_json::from_slice::<ChatRequest>(data)
            .map_err(json)
            .and_then(|r| r.job(&model))
            .map(|job| job.choices.len()),
    );
    note(
        serde_json::from_slice::<TokenizeRequest>(data)
            .map_err(json)
            .and_then(|r| match (r.prompt, r.messages) {
                (Some(p), None) => model.text_ids(&p),
                (None, Some(m)) => model.chat_ids(m),
                _ => Err(Error::InvalidInput(
                    "give one of prompt and messages".into(),
                )),
            })
            .map(|ids| ids.len()),
    );
    note(
        serde_json::from_slice::<DetokenizeRequest>(data)
            .map_err(json)
            .and_then(|r| openai_request::token_ids(&r.tokens, model.vocab_size(), "tokens"))
            .and_then(|ids| model.decode(&ids))
            .map(|text| text.len()),
    );
    match (choices, first_error) {
        (0, Some(e)) => Err(e),
        (n, _) => Ok(n),
    }
}
