//! Bounds on what a chat template (the model folder's code) may make a render do: a step budget
//! (minijinja's fuel), a cap on the rendered text, and guards on the few operations that build
//! a huge value in one step, which neither of those stops — printing a sequence of billions of
//! items (`444444444444 * [1]`), a `format` width of billions (`'%99999999999s' | format(1)`),
//! and `join` results past the cap (chained joins grow geometrically).

use minijinja::value::{Rest, Value};
use minijinja::{Environment, Error, ErrorKind, State};

/// Template instructions one rendering may run: a chat of thousands of messages takes a small
/// share; nested loops over huge ranges run out.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// Most bytes a rendered prompt may have (far more text than any context holds).
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

/// Most items a sequence or map may have where it is printed or joined.
const MAX_ITEMS: usize = 1 << 20;

/// Largest width or precision a `format` string may ask for.
const MAX_FORMAT_WIDTH: u64 = 1 << 16;

fn refuse(what: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, what)
}

/// Installs the bounds on `env`.
pub fn bound(env: &mut Environment<'_>) {
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_formatter(|out, state, value| {
        check_items(value)?;
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter("join", join);
    env.add_filter("format", format);
}

fn check_items(value: &Value) -> Result<(), Error> {
    match value.len() {
        Some(n) if n > MAX_ITEMS && value.as_str().is_none() => Err(refuse(format!(
            "a value of {n} items (at most {MAX_ITEMS} are printed or joined)"
        ))),
        _ => Ok(()),
    }
}

/// `join` as Jinja's, refusing a result past [`MAX_RENDERED_BYTES`] before building it.
fn join(value: &Value, joiner: Option<String>) -> Result<String, Error> {
    let joiner = joiner.unwrap_or_default();
    let within = |bytes: usize| match bytes > MAX_RENDERED_BYTES {
        true => Err(refuse(format!(
            "join would make {bytes} bytes (at most {MAX_RENDERED_BYTES})"
        ))),
        false => Ok(()),
    };
    if let Some(s) = value.as_str() {
        // A string joins its characters.
        let n = s.chars().count();
        within(
            s.len()
                .saturating_add(joiner.len().saturating_mul(n.saturating_sub(1))),
        )?;
        let mut out = String::with_capacity(s.len() + joiner.len() * n);
        for (i, c) in s.chars().enumerate() {
            if i > 0 {
                out.push_str(&joiner);
            }
            out.push(c);
        }
        return Ok(out);
    }
    check_items(value)?;
    // Strings are measured before anything is copied; the total is checked as it grows.
    let (mut items, mut bytes) = (Vec::new(), 0usize);
    for (i, item) in value.try_iter()?.enumerate() {
        check_items(&item)?;
        let text = match item.as_str() {
            Some(s) => {
                within(bytes.saturating_add(s.len()))?;
                s.to_string()
            }
            None => item.to_string(),
        };
        bytes =
            bytes
                .saturating_add(text.len())
                .saturating_add(if i > 0 { joiner.len() } else { 0 });
        within(bytes)?;
        items.push(text);
    }
    Ok(items.join(&joiner))
}

/// `format` as minijinja's, refusing widths and precisions past [`MAX_FORMAT_WIDTH`].
fn format(state: &State, format_str: &Value, args: Rest<Value>) -> Result<Value, Error> {
    if let Some(s) = format_str.as_str() {
        let widest = printf_widths(s).max().unwrap_or(0);
        if widest > MAX_FORMAT_WIDTH {
            return Err(refuse(format!(
                "format width {widest} (at most {MAX_FORMAT_WIDTH})"
            )));
        }
    }
    minijinja::filters::format(state, format_str, args)
}

/// The widths and precisions of a printf-style string's conversions (`%-10.3f` → 10, 3).
fn printf_widths(s: &str) -> impl Iterator<Item = u64> + '_ {
    let bytes = s.as_bytes();
    let number = |at: &mut usize| {
        let start = *at;
        while *at < bytes.len() && bytes[*at].is_ascii_digit() {
            *at += 1;
        }
        s[start..*at]
            .parse::<u64>()
            .unwrap_or(if *at > start { u64::MAX } else { 0 })
    };
    s.match_indices('%').flat_map(move |(i, _)| {
        let mut at = i + 1;
        if bytes.get(at) == Some(&b'(') {
            while at < bytes.len() && bytes[at] != b')' {
                at += 1;
            }
            at += 1;
        }
        while at < bytes.len() && b"-+ #0".contains(&bytes[at]) {
            at += 1;
        }
        let width = number(&mut at);
        let precision = match bytes.get(at) {
            Some(b'.') => {
                at += 1;
                number(&mut at)
            }
            _ => 0,
        };
        [width, precision]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printf_widths_are_read_from_conversions_only() {
        let widths: Vec<u64> =
            printf_widths("year 100000: %-10.3f and %(n)99999999999s %%").collect();
        assert_eq!(widths, [10, 3, 99_999_999_999, 0, 0, 0, 0, 0]);
    }
}
