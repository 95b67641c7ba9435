//! `--tree-budget auto` choices kept between runs. Calibrating takes 10–25 s on a 2-core CPU
//! (four chat prompts at budget 32, then verification timed at 1..=33 nodes), longer than many
//! whole generations, and its answer depends only on what the key below names: this machine and
//! build, the model's and the head's files, and the settings the head drafts with. So `generate`
//! and `eval` reuse a choice saved for the same key, and say so; `--recalibrate` measures again.
//! `bench` always measures (it is the measuring tool).
//!
//! One JSON file per key under `<cache>/auto-budget/`, named by a hash of the key; the file holds
//! the key itself, which must match exactly (a hash collision or a stale file is a miss).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::spec::auto_budget::{paths_json, BudgetPlan, TreeFamily, MAX_AUTO_BUDGET};
use crate::spec::drafting::TreeSpec;

/// Everything a saved choice depends on, as `name = value` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanKey(String);

impl PlanKey {
    /// `backend` is the backend's own description (device, threads, kernels); the executable,
    /// the CPU and the two folders' files are added here.
    pub fn new(backend: &str, model_dir: &Path, head_dir: &Path, settings: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().map(|p| file_identity(&p)).unwrap_or_else(|_| "unknown".into());
        let mut lines = vec![
            format!("engine = {} {exe}", env!("CARGO_PKG_VERSION")),
            format!("cpu = {}", cpu_identity()),
            format!("backend = {backend}"),
            format!("model = {}", folder_identity(model_dir)),
            format!("head = {}", folder_identity(head_dir)),
        ];
        lines.extend(settings.iter().map(|(name, value)| format!("{name} = {value}")));
        PlanKey(lines.join("\n"))
    }

    /// FNV-1a: stable across builds and platforms, unlike std's hasher.
    fn file_name(&self) -> String {
        let hash =
            self.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{hash:016x}.json")
    }
}

/// A choice read back from the store.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedPlan {
    pub budget: usize,
    /// The chosen tree's rank paths when the plan chose among sampled static trees (T > 0);
    /// None for the EAGLE-2 tree of `budget`.
    pub paths: Option<Vec<Vec<usize>>>,
    /// Expected tokens/s of the chosen budget over plain decoding's, at calibration.
    pub expected_speedup: f64,
    /// The calibration's table, as printed then.
    pub table: String,
    pub saved_unix: u64,
    pub path: PathBuf,
}

impl SavedPlan {
    /// The tree the saved choice decodes with.
    pub fn tree(&self) -> Result<TreeSpec> {
        match &self.paths {
            Some(paths) => TreeFamily::Sampled { paths: paths.clone() }.tree(self.budget),
            None => TreeFamily::Eagle2.tree(self.budget),
        }
    }

    /// One line for the user: what is reused, from when, and how to measure again.
    pub fn report(&self) -> String {
        let age = now_unix().saturating_sub(self.saved_unix);
        let choice = match (self.budget, &self.paths) {
            (0, _) => "plain decoding".to_string(),
            (b, None) => format!("budget {b} (expected {:.2}× plain decoding)", self.expected_speedup),
            (b, Some(paths)) => format!(
                "budget {b}, the static tree {} drawn by sampling (expected {:.2}× plain decoding)",
                paths_json(paths),
                self.expected_speedup
            ),
        };
        format!(
            "tree budget auto: {choice}, as calibrated {} ago on this machine for this model, head and \
             settings (saved in {}; --recalibrate measures again)\n",
            human_age(age),
            self.path.display()
        )
    }
}

/// The store's folder: `<cache>/auto-budget`.
pub fn default_dir() -> PathBuf {
    crate::paths::cache_dir().join("auto-budget")
}

/// Where the choice for `key` is (or would be) saved.
pub fn path_for(dir: &Path, key: &PlanKey) -> PathBuf {
    dir.join(key.file_name())
}

/// The choice saved under `key`, if there is one. A missing, unreadable or foreign file is a miss
/// (the caller then calibrates and overwrites it), never an error; so is one `auto` could not have
/// written: a budget above `MAX_AUTO_BUDGET`, or paths where the key's settings do not sample
/// (`sampled`: T > 0 plans a static tree and saves its paths, one per budget node; greedy plans
/// save none).
pub fn load(dir: &Path, key: &PlanKey, sampled: bool) -> Option<SavedPlan> {
    let path = path_for(dir, key);
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    if value.get("key")?.as_str()? != key.0 {
        return None;
    }
    let budget = usize::try_from(value.get("budget")?.as_u64()?).ok().filter(|&b| b <= MAX_AUTO_BUDGET)?;
    let paths = match value.get("paths") {
        None | Some(Value::Null) => None,
        Some(paths) => {
            let paths: Vec<Vec<usize>> = serde_json::from_value(paths.clone()).ok()?;
            // The tree must build: a file edited by hand is a miss, not an error later.
            TreeFamily::Sampled { paths: paths.clone() }.tree(budget).ok()?;
            Some(paths)
        }
    };
    if sampled != paths.is_some() || paths.as_ref().is_some_and(|p| p.len() != budget) {
        return None;
    }
    Some(SavedPlan {
        budget,
        paths,
        expected_speedup: value.get("expected_speedup")?.as_f64()?,
        table: value.get("table")?.as_str()?.to_string(),
        saved_unix: value.get("saved_unix")?.as_u64()?,
        path,
    })
}

/// Saves `plan` under `key` (written whole, then renamed into place); returns the file.
pub fn save(dir: &Path, key: &PlanKey, plan: &BudgetPlan) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = path_for(dir, key);
    let plain = plan.rows[0].tokens_per_s;
    let paths = match &plan.calibration.family {
        TreeFamily::Sampled { paths } => Some(&paths[..plan.budget]),
        TreeFamily::Eagle2 => None,
    };
    let value = json!({
        "key": key.0,
        "budget": plan.budget,
        "paths": paths,
        "expected_speedup": plan.rows[plan.budget].tokens_per_s / plain,
        "table": plan.table(),
        "saved_unix": now_unix(),
    });
    let text = serde_json::to_string_pretty(&value).map_err(|e| Error::format(&path, "(json)", e.to_string()))?;
    crate::fsutil::write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// Canonical path, size and modification time: a file rewritten in place (a retrained head, a
/// rebuilt binary) gets a new identity.
fn file_identity(path: &Path) -> String {
    let shown = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            format!("{} ({} bytes, modified {mtime})", shown.display(), m.len())
        }
        Err(_) => format!("{} (missing)", shown.display()),
    }
}

/// Every file directly in a model or head folder, in name order.
fn folder_identity(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let listed: Vec<String> = files.iter().map(|f| file_identity(f)).collect();
    format!("{}: [{}]", shown.display(), listed.join(", "))
}

/// Vendor, family, model and name of the first CPU (Linux); two machine kinds of one vendor can
/// share a model name ("AMD EPYC" for a Zen 4 and a Zen 5).
fn cpu_identity() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return std::env::consts::ARCH.to_string();
    };
    let first = info.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map_or("", |(_, v)| v.trim())
            .to_string()
    };
    format!("{} family {} model {} ({})", field("vendor_id"), field("cpu family"), field("model"), field("model name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::auto_budget::Calibration;

    fn plan(budget_wins: bool) -> BudgetPlan {
        let calibration = Calibration {
            family: crate::spec::auto_budget::TreeFamily::Eagle2,
            steps: 10,
            accepted_by_rank: vec![0, if budget_wins { 6 } else { 0 }],
            off_chain_calls_by_rank: vec![],
            begin_ms: 0.5,
            expand_ms: 0.5,
            level_ms: vec![0.3],
            bookkeeping_ms_per_row: 0.0,
            accept_ms: 0.1,
            off_chain_call_ms: 0.0,
            walk_row_ms: 0.0,
            rejection_ms: 0.0,
        };
        BudgetPlan::new(&[10.0, 11.0], calibration)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("clover-saved-plan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_saved_choice_comes_back_only_for_its_own_key() {
        let dir = temp_dir("roundtrip");
        let folder = dir.join("head");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("model.safetensors"), b"weights").unwrap();
        let key = PlanKey::new("cpu (2 threads)", &folder, &folder, &[("temperature", "0".into())]);
        assert!(load(&dir, &key, false).is_none(), "nothing saved yet");
        let plan = plan(true);
        assert_eq!(plan.budget, 1);
        let path = save(&dir, &key, &plan).unwrap();
        let saved = load(&dir, &key, false).expect("saved");
        assert_eq!((saved.budget, saved.path.clone(), saved.table.clone()), (1, path, plan.table()));
        assert!((saved.expected_speedup - plan.rows[1].tokens_per_s / plan.rows[0].tokens_per_s).abs() < 1e-12);
        assert!(saved.report().contains("budget 1 (expected 1.38× plain decoding)"), "{}", saved.report());

        // Another setting, another backend, or a head file rewritten: a miss.
        let other = PlanKey::new("cpu (2 threads)", &folder, &folder, &[("temperature", "1".into())]);
        assert!(load(&dir, &other, false).is_none());
        assert!(load(&dir, &PlanKey::new("cpu (1 thread)", &folder, &folder, &[("temperature", "0".into())]), false)
            .is_none());
        std::fs::write(folder.join("model.safetensors"), b"retrained weights").unwrap();
        let after = PlanKey::new("cpu (2 threads)", &folder, &folder, &[("temperature", "0".into())]);
        assert_ne!(after, key);
        assert!(load(&dir, &after, false).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A plan over sampled static trees saves its chosen tree's paths, and the tree comes back.
    #[test]
    fn a_sampled_choice_keeps_its_tree() {
        let dir = temp_dir("sampled");
        let key = PlanKey::new("cpu", &dir, &dir, &[("temperature", "1".into())]);
        let mut plan = plan(true);
        plan.calibration.family = TreeFamily::Sampled { paths: vec![vec![0], vec![0, 0]] };
        assert_eq!(plan.budget, 1);
        save(&dir, &key, &plan).unwrap();
        let saved = load(&dir, &key, true).expect("saved");
        assert_eq!(saved.paths, Some(vec![vec![0]]));
        match saved.tree().unwrap() {
            TreeSpec::Static(tree) => assert_eq!(tree.paths(), &[vec![], vec![0]]),
            other => panic!("expected a static tree, got {other:?}"),
        }
        assert!(saved.report().contains("budget 1, the static tree [[0]] drawn by sampling"), "{}", saved.report());
        // Paths that are not a tree (a file edited by hand): a miss.
        let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&saved.path).unwrap()).unwrap();
        value["paths"] = json!([[1]]);
        std::fs::write(&saved.path, value.to_string()).unwrap();
        assert!(load(&dir, &key, true).is_none());
        // Paths that do not match the budget, paths where the settings are greedy, none where they
        // sample, a budget auto never chooses: misses.
        for (paths, budget, sampled) in
            [(json!([[0], [1]]), 1, true), (json!([[0]]), 1, false), (json!(null), 1, true), (json!(null), 64, false)]
        {
            value["paths"] = paths;
            value["budget"] = budget.into();
            std::fs::write(&saved.path, value.to_string()).unwrap();
            assert!(load(&dir, &key, sampled).is_none(), "{value}");
        }
        value["paths"] = json!([[0]]);
        value["budget"] = 1.into();
        std::fs::write(&saved.path, value.to_string()).unwrap();
        assert!(load(&dir, &key, true).is_some(), "the file as saved loads again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_with_another_key_or_garbage_is_a_miss() {
        let dir = temp_dir("foreign");
        let key = PlanKey::new("cpu", &dir, &dir, &[]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(key.file_name()), "not json").unwrap();
        assert!(load(&dir, &key, false).is_none());
        let foreign = json!({"key": "another", "budget": 3, "expected_speedup": 1.0, "table": "", "saved_unix": 0});
        std::fs::write(dir.join(key.file_name()), foreign.to_string()).unwrap();
        assert!(load(&dir, &key, false).is_none());
        // Plain decoding chosen: the report says so.
        save(&dir, &key, &plan(false)).unwrap();
        assert!(load(&dir, &key, false).unwrap().report().contains("tree budget auto: plain decoding, as calibrated"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
