//! Checks of option values that clap's types do not make, each error naming the option, the
//! value given and what it takes.

use std::fmt::Display;
use std::path::Path;

use clover_engine::error::{Error, Result};

/// `Err` "OPTION VALUE: expected RULE" unless `ok`.
pub fn require(ok: bool, option: &str, value: impl Display, rule: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::input(format!("{option} {value}: expected {rule}")))
    }
}

/// `--temperature`: finite and ≥ 0 (NaN and inf would turn every weight into NaN).
pub fn temperature(t: f32) -> Result<()> {
    require(t.is_finite() && t >= 0.0, "--temperature", t, "a finite number ≥ 0 (0 = greedy)")
}

/// A probability threshold in (0, 1].
pub fn top_p(option: &str, p: f32) -> Result<()> {
    require(p > 0.0 && p <= 1.0, option, p, "a value in (0, 1]")
}

/// A count that must be at least 1.
pub fn at_least_one(option: &str, n: usize) -> Result<()> {
    require(n >= 1, option, n, "at least 1")
}

/// `--out` names a new or empty folder, so nothing an earlier run left there mixes with what
/// this one writes; `why` says what would (empty for the general case).
pub fn new_or_empty_out(out: &Path, why: &str) -> Result<()> {
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Error::input(format!(
            "--out {}: folder exists and is not empty{why}; remove it or choose another",
            out.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_option_and_the_value() {
        assert!(temperature(0.0).is_ok() && temperature(1.5).is_ok());
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let e = temperature(bad).unwrap_err().to_string();
            assert!(e.contains("--temperature") && e.contains(&bad.to_string()), "{e}");
        }
        assert!(top_p("--top-p", 1.0).is_ok());
        assert!(top_p("--top-p", 1.5).unwrap_err().to_string().contains("--top-p 1.5: expected a value in (0, 1]"));
        assert!(top_p("--top-p", f32::NAN).is_err());
        assert!(at_least_one("--steps", 0).unwrap_err().to_string().contains("--steps 0"));
    }
}
