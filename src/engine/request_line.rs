//! One line of batch mode's JSONL input (`mla generate --prompts`), parsed and checked without a
//! tokenizer: an `id`, exactly one of `prompt` and `messages`, and per-request overrides of the
//! sampling flags. Errors are one sentence naming the field; the caller adds the file and line.

use super::sampler::SamplingParams;
use crate::chat::{Message, PromptInput};
use serde_json::Value;

/// A parsed request line: what to generate from and how, before tokenization.
#[derive(Debug)]
pub struct RequestLine {
    /// Copied to the result line as it is (any JSON value).
    pub id: Value,
    pub prompt: PromptInput,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOverrides,
    /// None keeps the command line's stop strings; each string is non-empty.
    pub stop: Option<Vec<String>>,
    pub ignore_eos: bool,
}

/// The sampling fields a line may set; the rest come from the command line.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOverrides {
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    min_tokens: Option<usize>,
    logprobs: Option<usize>,
}

impl SamplingOverrides {
    /// `defaults` with this line's fields in place of theirs, checked.
    pub fn apply(&self, defaults: SamplingParams) -> Result<SamplingParams, String> {
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            seed: self.seed.unwrap_or(defaults.seed),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            repetition_penalty: self
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            min_tokens: self.min_tokens.unwrap_or(defaults.min_tokens),
            logprobs: self.logprobs.or(defaults.logprobs),
        };
        params.validate().map_err(|e| e.to_string())?;
        Ok(params)
    }
}

/// The line's fields other than sampling's; `stop` stays a value so its error can say what it
/// wants.
#[derive(serde::Deserialize)]
struct Fields {
    id: Value,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<usize>,
    stop: Option<Value>,
    ignore_eos: Option<bool>,
}

/// The keys of [`Fields`]; every other key of a line must be a [`SamplingOverrides`] field.
const REQUEST_KEYS: [&str; 6] = [
    "id",
    "prompt",
    "messages",
    "max_tokens",
    "stop",
    "ignore_eos",
];

impl RequestLine {
    /// Parses one non-empty line.
    pub fn parse(line: &str) -> Result<RequestLine, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let Value::Object(mut map) = value else {
            return Err(format!(
                "expected a JSON object with \"id\" and \"prompt\" or \"messages\", found {}",
                json_kind(&value)
            ));
        };
        let sampling: serde_json::Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !REQUEST_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.retain(|k, _| REQUEST_KEYS.contains(&k.as_str()));
        let fields: Fields =
            serde_json::from_value(Value::Object(map)).map_err(|e| e.to_string())?;
        let sampling: SamplingOverrides =
            serde_json::from_value(Value::Object(sampling)).map_err(|e| e.to_string())?;
        let prompt = match (fields.prompt, fields.messages) {
            (Some(p), None) => PromptInput::Text(p),
            (None, Some(m)) => PromptInput::Messages(m),
            _ => return Err("give exactly one of \"prompt\" and \"messages\"".into()),
        };
        if fields.max_tokens == Some(0) {
            return Err("\"max_tokens\" must be at least 1".into());
        }
        Ok(RequestLine {
            id: fields.id,
            prompt,
            max_tokens: fields.max_tokens,
            sampling,
            stop: fields.stop.map(stop_strings).transpose()?,
            ignore_eos: fields.ignore_eos.unwrap_or(false),
        })
    }
}

/// `"stop"`: a non-empty string or a list of them.
fn stop_strings(value: Value) -> Result<Vec<String>, String> {
    const WANT: &str = "\"stop\" must be a non-empty string or a list of non-empty strings";
    let strings = match value {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(format!("{WANT}, found {} in the list", json_kind(&other))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(format!("{WANT}, found {}", json_kind(&other))),
    };
    if strings.iter().any(String::is_empty) {
        return Err(format!("{WANT}, found an empty string"));
    }
    Ok(strings)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_overrides_parses() {
        let line = RequestLine::parse(
            r#"{"id": 7, "prompt": "hi", "max_tokens": 3, "temperature": 0.5, "stop": ["a", "b"]}"#,
        )
        .unwrap();
        assert_eq!(line.id, Value::from(7));
        assert!(matches!(line.prompt, PromptInput::Text(ref p) if p == "hi"));
        assert_eq!(line.max_tokens, Some(3));
        assert_eq!(line.stop, Some(vec!["a".to_string(), "b".to_string()]));
        let params = line.sampling.apply(SamplingParams::default()).unwrap();
        assert_eq!(params.temperature, 0.5);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            (r#"[1, 2]"#, "expected a JSON object"),
            (r#""text""#, "found a string"),
            (r#"{"id": 1, "prompt": "x", "stop": 5}"#, "\"stop\" must be"),
            (
                r#"{"id": 1, "prompt": "x", "stop": [""]}"#,
                "an empty string",
            ),
            (
                r#"{"id": 1, "prompt": "x", "stop": ["a", 2]}"#,
                "a number in the list",
            ),
            (r#"{"id": 1}"#, "exactly one of"),
            (
                r#"{"id": 1, "prompt": "x", "messages": []}"#,
                "exactly one of",
            ),
            (r#"{"id": 1, "prompt": "x", "max_tokens": 0}"#, "at least 1"),
            (
                r#"{"id": 1, "prompt": "x", "colour": 1}"#,
                "unknown field `colour`",
            ),
            (r#"{"prompt": "x"}"#, "missing field `id`"),
        ];
        for (line, want) in cases {
            let err = RequestLine::parse(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn overrides_are_checked() {
        let line = RequestLine::parse(r#"{"id": 1, "prompt": "x", "top_p": 2.0}"#).unwrap();
        assert!(line.sampling.apply(SamplingParams::default()).is_err());
    }
}
