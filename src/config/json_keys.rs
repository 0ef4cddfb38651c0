//! Typed access to the keys of a config.json object, with errors that name the file and key.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub struct Keys<'a> {
    pub path: PathBuf,
    pub map: &'a Map<String, Value>,
    /// Prefix for nested objects so errors read `rope_scaling.factor`.
    pub prefix: String,
}

impl<'a> Keys<'a> {
    pub fn new(path: &Path, map: &'a Map<String, Value>, prefix: &str) -> Self {
        Keys {
            path: path.to_path_buf(),
            map,
            prefix: prefix.to_string(),
        }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub fn err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(&self.path, &self.name(key), message)
    }

    /// The value of `key`, treating JSON null as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer, at most [`dim_limit`] (every size of a config is bounded).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    self.err(key, format!("expected a non-negative integer, found {v}"))
                })?;
                let limit = dim_limit(key);
                if n > limit as u64 {
                    return Err(self.err(key, format!("must be at most {limit}, found {n}")));
                }
                Ok(Some(n as usize))
            }
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "missing (required)"))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    /// A dimension that must be at least 1 and at most [`dim_limit`].
    pub fn dim(&self, key: &str) -> Result<usize> {
        let v = self.usize(key)?;
        if v == 0 {
            return Err(self.err(key, "must be at least 1, found 0"));
        }
        let limit = dim_limit(key);
        if v > limit {
            return Err(self.err(key, format!("must be at most {limit}, found {v}")));
        }
        Ok(v)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }

    /// A token id or a list of token ids (`eos_token_id` may be either).
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        // An id past u32 is refused, not wrapped onto another token.
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let bad = |v: &Value| {
            self.err(
                key,
                format!("expected a token id or a list of ids, found {v}"),
            )
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().map(|v| id(v).ok_or_else(|| bad(v))).collect()
            }
            Some(v) => id(v).map(|n| vec![n]).ok_or_else(|| bad(v)),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<Keys<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Keys {
                path: self.path.clone(),
                map,
                prefix: format!("{}{}.", self.prefix, key),
            })),
            Some(v) => Err(self.err(key, format!("expected an object, found {v}"))),
        }
    }

    /// BOS and EOS ids must name tokens of the vocabulary.
    pub fn check_special_tokens(
        &self,
        bos: Option<u32>,
        eos: &[u32],
        vocab_size: usize,
    ) -> Result<()> {
        let ids = bos
            .iter()
            .map(|id| ("bos_token_id", id))
            .chain(eos.iter().map(|id| ("eos_token_id", id)));
        for (key, id) in ids {
            if *id as usize >= vocab_size {
                return Err(self.err(
                    key,
                    format!("token id {id} is outside the vocabulary (vocab_size {vocab_size})"),
                ));
            }
        }
        Ok(())
    }

    /// Every supported architecture uses SwiGLU: `hidden_act` must be absent or `silu`.
    pub fn require_silu(&self) -> Result<()> {
        match self.opt_str("hidden_act")? {
            None | Some("silu") => Ok(()),
            Some(other) => Err(self.err(
                "hidden_act",
                format!("unsupported activation \"{other}\" (only silu)"),
            )),
        }
    }
}

/// The largest value a dimension may take, far above any published model's (DeepSeek-V3: 61
/// layers, 128 heads, hidden 7168, vocabulary 129,280; Llama 3.1 405B: 126 layers, MLP 53,248):
/// layers and heads size per-layer and per-head tables and loops, the rest buffers, so that a
/// config's size is refused before anything is allocated or counted.
pub fn dim_limit(key: &str) -> usize {
    match key {
        "num_hidden_layers" => 1024,
        "num_attention_heads" | "num_key_value_heads" => 4096,
        // Context lengths beyond a million tokens exist; 2^24 bounds them.
        "max_position_embeddings" | "original_max_position_embeddings" | "sliding_window" => {
            1 << 24
        }
        _ => 1 << 20,
    }
}
