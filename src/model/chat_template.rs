//! A model's chat template (Jinja), rendered the way transformers' `apply_chat_template` renders
//! it, so that a prompt, and so gen-data's loss mask, is the text the model was trained on:
//! `trim_blocks` and `lstrip_blocks` on (a `{% … %}` tag on its own line leaves no blank line),
//! loop controls, a `tojson` that writes what Python's `json.dumps` writes (`", "` and `": "`
//! separators, no HTML escaping), `raise_exception`, `strftime_now` (in UTC), and `tools` / `documents`
//! passed as none.
//!
//! Checked against Python's jinja2 configured as transformers configures it
//! (`tools/chat_template_fixtures.py` → `tests/fixtures/chat_templates.json`).

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Result};
use crate::model::tokenizer::ChatMessage;

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    /// The file (and field) the template came from, for errors.
    path: PathBuf,
    field: String,
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>, path: impl AsRef<Path>, field: impl Into<String>) -> Self {
        ChatTemplate { source: source.into(), path: path.as_ref().to_path_buf(), field: field.into() }
    }

    /// A template file of its own (`--chat-template FILE`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(ChatTemplate::new(source, path, "(template)"))
    }

    /// The template file's name and a hash of its text, for records that must tell two templates
    /// apart (eval's answer settings, gen-data's index, saved `--tree-budget auto` plans): a path
    /// written another way is the same template, an edited file is not.
    pub fn identity(&self) -> String {
        // FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
        let hash =
            self.source.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let name =
            self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned());
        format!("{name} ({hash:016x})")
    }

    /// Where the template came from: a file, and the field within it (or "(template)").
    pub fn origin(&self) -> (&Path, &str) {
        (&self.path, &self.field)
    }

    /// The conversation as text; `bos_token` / `eos_token` are the strings the template may write.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let error = |e: minijinja::Error| Error::format(&self.path, &self.field, e.to_string());
        let mut env = environment();
        env.add_template("chat", &self.source).map_err(error)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        env.get_template("chat").and_then(|t| t.render(ctx)).map_err(error)
    }
}

fn environment<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |format: String| strftime(unix_seconds(), &format));
    env.add_filter("tojson", tojson);
    env
}

/// `json.dumps(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)` with
/// those keyword arguments honoured, as transformers defines the filter.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    // Python's defaults: ", " between items without an indent, "," with one (the newline follows).
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "separators: give two strings")),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys == Some(true),
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    Ok(out)
}

struct JsonStyle {
    indent: Option<usize>,
    item: String,
    key: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(&self, v: &Value, level: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            // Python's json.dumps cannot write jinja2's Undefined either.
            ValueKind::Undefined => {
                return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson of an undefined value"))
            }
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => out.push_str(&python_float(f64::try_from(v.clone())?)),
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    // Python sorts the keys themselves: numbers by value, strings by text.
                    keys.sort_by(|a, b| match (f64::try_from(a.clone()), f64::try_from(b.clone())) {
                        (Ok(x), Ok(y)) => x.total_cmp(&y),
                        _ => a.to_string().cmp(&b.to_string()),
                    });
                }
                let items = keys
                    .into_iter()
                    .map(|k| {
                        let item = v.get_item(&k)?;
                        Ok((k, item))
                    })
                    .collect::<std::result::Result<Vec<_>, minijinja::Error>>()?;
                self.container(('{', '}'), items.len(), level, out, |i, out| {
                    let (k, item) = &items[i];
                    self.string(&key_text(k), out);
                    out.push_str(&self.key);
                    self.write(item, level + 1, out)
                })?;
            }
            _ => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(('[', ']'), items.len(), level, out, |i, out| self.write(&items[i], level + 1, out))?;
            }
        }
        Ok(())
    }

    fn container(
        &self,
        (open, close): (char, char),
        n: usize,
        level: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, depth: usize| {
            if let Some(width) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(width * depth));
            }
        };
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            newline(out, level + 1);
            item(i, out)?;
        }
        newline(out, level);
        out.push(close);
        Ok(())
    }

    /// Python's string escapes: quote, backslash and control characters; non-ASCII kept unless
    /// `ensure_ascii` (then `\uXXXX`, in surrogate pairs above the BMP).
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || self.ensure_ascii && (c as u32) >= 0x7f => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A map key as `json.dumps` writes it: strings as they are, other keys as their JSON text
/// (`none` → "null", `true` → "true", 1.0 → "1.0").
fn key_text(k: &Value) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number if !k.is_integer() => f64::try_from(k.clone()).map_or_else(|_| k.to_string(), python_float),
        _ => k.to_string(),
    }
}

/// Python's `repr` of a float as `json.dumps` writes it: the shortest digits that round-trip,
/// integral values with a ".0", an exponent (`1e-05`, `1.5e+16`) below 1e-4 and from 1e16 on,
/// and `NaN` / `Infinity` for the non-finite ones.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let scientific = format!("{f:e}"); // Rust's shortest round-trip digits, as "1.5e16" / "1e-5".
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if f != 0.0 && !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// transformers' `strftime_now`, `datetime.now().strftime(format)`, for the directives chat
/// templates use (Llama 3.x writes today's date into its system turn), glibc's `%-d` (no padding)
/// and `%e` (space-padded) included; other directives are copied through. Unlike Python's, the
/// time is UTC: the engine keeps no time-zone data, and a date is all templates ask for.
fn strftime(unix: i64, format: &str) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut directive = chars.next();
        // glibc's `-` flag: the number without its padding.
        let unpadded = directive == Some('-');
        if unpadded {
            directive = chars.next();
        }
        let number = |value: i64, width: usize| {
            if unpadded {
                value.to_string()
            } else {
                format!("{value:0width$}")
            }
        };
        match directive {
            Some('d') => out.push_str(&number(i64::from(day), 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('m') => out.push_str(&number(i64::from(month), 2)),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&number(year.rem_euclid(100), 2)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('H') => out.push_str(&number(hour, 2)),
            Some('I') => out.push_str(&number((hour + 11) % 12 + 1, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&number(minute, 2)),
            Some('S') => out.push_str(&number(second, 2)),
            Some('j') => out.push_str(&number(day_of_year, 3)),
            Some('Z') => out.push_str("UTC"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push_str(if unpadded { "%-" } else { "%" });
                out.push(other);
            }
            None => out.push_str(if unpadded { "%-" } else { "%" }),
        }
    }
    out
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01, in the proleptic Gregorian
/// calendar (the days-to-civil algorithm over 400-year eras).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python_on_known_dates() {
        // date -u -d @… ; Python: datetime.fromtimestamp(t, timezone.utc).strftime(…)
        assert_eq!(strftime(0, "%d %b %Y %A %j %H:%M:%S"), "01 Jan 1970 Thursday 001 00:00:00");
        assert_eq!(strftime(1_733_616_000, "%d %b %Y"), "08 Dec 2024");
        assert_eq!(strftime(951_827_696, "%Y-%m-%d %a %I%p %B %y %% %q"), "2000-02-29 Tue 12PM February 00 % %q");
        assert_eq!(strftime(-86_400, "%d %b %Y"), "31 Dec 1969");
        assert_eq!(strftime(1_733_616_000, "%-d/%-m %e|%Z %-j %-q"), "8/12  8|UTC 343 %-q");
        for days in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    /// `json.dumps("\x7f", ensure_ascii=True)` escapes DEL; without ensure_ascii it stays.
    #[test]
    fn ensure_ascii_escapes_from_del_up() {
        let style = |ensure_ascii| JsonStyle {
            indent: None,
            item: ", ".into(),
            key: ": ".into(),
            ensure_ascii,
            sort_keys: false,
        };
        let (mut strict, mut plain) = (String::new(), String::new());
        style(true).string("a\u{7f}é😀", &mut strict);
        style(false).string("a\u{7f}é😀", &mut plain);
        assert_eq!(strict, "\"a\\u007f\\u00e9\\ud83d\\ude00\"");
        assert_eq!(plain, "\"a\u{7f}é😀\"");
    }

    /// The same text is the same template wherever it is read from; other text is not.
    #[test]
    fn identity_is_the_file_name_and_its_text() {
        let a = ChatTemplate::new("{{ x }}", "dir/t.jinja", "(template)");
        let b = ChatTemplate::new("{{ x }}", "./other/../dir/t.jinja", "(template)");
        let edited = ChatTemplate::new("{{ y }}", "dir/t.jinja", "(template)");
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.identity(), edited.identity());
        assert!(a.identity().starts_with("t.jinja ("), "{}", a.identity());
    }

    /// Each against Python: `json.dumps(x)`.
    #[test]
    fn floats_are_written_as_python_writes_them() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1.2345e100, "1.2345e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float(x), want, "{x}");
        }
    }
}
