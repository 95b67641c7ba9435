//! A tree fixed ahead of time as rank paths (eagle.md §6): parsed from JSON or given in code,
//! checked to be a tree whose children are ranks 0..m−1 of their parent's row.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::{check_row_width, NodeId, TreeBuffers};
use crate::error::{Error, Result};

/// A tree fixed ahead of time as rank paths (eagle.md §6).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticTree {
    paths: Vec<Vec<usize>>,
    top_k: usize,
    buffers: TreeBuffers,
}

/// Why a list of paths is not a tree: `field` locates the offending entry in the caller's input.
struct Invalid {
    field: String,
    msg: String,
}

impl Invalid {
    fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Invalid { field: field.into(), msg: msg.into() }
    }
}

impl StaticTree {
    /// `paths` lists the draft nodes (the root is implicit); `top_k` is the draft row width.
    pub fn from_paths(paths: Vec<Vec<usize>>, top_k: usize) -> Result<Self> {
        check_row_width("top_k", top_k)?;
        Self::build(paths, top_k).map_err(|e| Error::input(format!("static tree: {}: {}", e.field, e.msg)))
    }

    /// A JSON list of rank paths, e.g. `[[0],[1],[0,0]]`.
    pub fn from_json_file(path: impl AsRef<Path>, top_k: usize) -> Result<Self> {
        let path = path.as_ref();
        check_row_width("top_k", top_k)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, "paths", format!("malformed JSON: {e}")))?;
        parse_paths(&value).and_then(|paths| Self::build(paths, top_k)).map_err(|e| Error::format(path, e.field, e.msg))
    }

    /// The EAGLE-1 / Clover-2 default: 25 draft nodes, depth 5, top-10 rows.
    #[rustfmt::skip]
    pub fn mc_sim_7b_63() -> Self {
        let paths = [
            &[0][..], &[1], &[2], &[3],
            &[0, 0], &[0, 1], &[0, 2], &[1, 0], &[1, 1], &[2, 0], &[2, 1], &[3, 0],
            &[0, 0, 0], &[0, 0, 1], &[0, 0, 2], &[0, 1, 0], &[0, 1, 1], &[0, 2, 0], &[0, 2, 1],
            &[1, 0, 0],
            &[0, 0, 0, 0], &[0, 0, 0, 1], &[0, 0, 0, 2],
            &[0, 0, 0, 0, 0], &[0, 0, 0, 0, 1],
        ];
        let paths = paths.iter().map(|p| p.to_vec()).collect();
        // A constant known to be valid (the golden-vector test builds it), not user input.
        Self::build(paths, 10).unwrap_or_else(|e| unreachable!("mc_sim_7b_63: {}", e.msg))
    }

    /// Rank paths in node order; `paths()[0]` is the root's empty path.
    pub fn paths(&self) -> &[Vec<usize>] {
        &self.paths
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Draft depth the tree needs; a head with fewer levels cannot run it.
    pub fn max_depth(&self) -> usize {
        self.buffers.max_depth()
    }

    pub fn buffers(&self) -> &TreeBuffers {
        &self.buffers
    }

    fn build(paths: Vec<Vec<usize>>, top_k: usize) -> Result<Self, Invalid> {
        validate_paths(&paths, top_k)?;
        let mut paths = paths;
        paths.push(Vec::new());
        paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        let index: HashMap<&[usize], NodeId> = paths.iter().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
        let parents = paths.iter().map(|p| p.split_last().map(|(_, pre)| index[pre])).collect();
        let ranks = paths.iter().map(|p| p.last().copied().unwrap_or(0)).collect();
        let buffers = TreeBuffers::new(parents, ranks, top_k);
        Ok(StaticTree { paths, top_k, buffers })
    }
}

fn parse_paths(value: &Value) -> Result<Vec<Vec<usize>>, Invalid> {
    let list = value.as_array().ok_or_else(|| {
        Invalid::new("paths", format!("expected a list of rank paths such as [[0],[1],[0,0]], got {value}"))
    })?;
    list.iter().enumerate().map(|(i, path)| parse_path(i, path)).collect()
}

fn parse_path(i: usize, path: &Value) -> Result<Vec<usize>, Invalid> {
    let ranks = path.as_array().ok_or_else(|| {
        Invalid::new(format!("paths[{i}]"), format!("expected a list of non-negative integers, got {path}"))
    })?;
    ranks
        .iter()
        .enumerate()
        .map(|(j, rank)| {
            rank.as_u64().and_then(|r| usize::try_from(r).ok()).ok_or_else(|| {
                Invalid::new(format!("paths[{i}][{j}]"), format!("expected a non-negative integer rank, got {rank}"))
            })
        })
        .collect()
}

/// Children must be ranks 0..m−1 of their parent's row: the T > 0 verifier relies on earlier
/// siblings being earlier draws (eagle.md §6, clover2.md §16).
fn validate_paths(paths: &[Vec<usize>], top_k: usize) -> Result<(), Invalid> {
    if paths.is_empty() {
        return Err(Invalid::new("paths", "the tree has no draft nodes"));
    }
    let mut seen = HashSet::new();
    for (i, path) in paths.iter().enumerate() {
        if path.is_empty() {
            return Err(Invalid::new(format!("paths[{i}]"), "empty path (the root is implicit)"));
        }
        if let Some(j) = path.iter().position(|&r| r >= top_k) {
            let msg = format!("rank {} is not below top_k = {top_k}", path[j]);
            return Err(Invalid::new(format!("paths[{i}][{j}]"), msg));
        }
        if !seen.insert(path.as_slice()) {
            return Err(Invalid::new(format!("paths[{i}]"), format!("duplicate path {path:?}")));
        }
    }
    for (i, path) in paths.iter().enumerate() {
        let Some((&last, prefix)) = path.split_last() else {
            continue;
        };
        if !prefix.is_empty() && !seen.contains(prefix) {
            let msg = format!("path {path:?} lacks its prefix {prefix:?}");
            return Err(Invalid::new(format!("paths[{i}]"), msg));
        }
        if last == 0 {
            continue;
        }
        let sibling = [prefix, &[last - 1]].concat();
        if !seen.contains(sibling.as_slice()) {
            let msg = format!(
                "path {path:?} has rank {last} but its sibling {sibling:?} is missing \
                 (children must be ranks 0..m-1)"
            );
            return Err(Invalid::new(format!("paths[{i}]"), msg));
        }
    }
    Ok(())
}
