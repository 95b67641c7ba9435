//! Where `--tree-budget auto` gets its tree: a plan made on the built-in chat prompts
//! (`auto_budget::plan_budget` over `CALIBRATION_CHATS`), or a choice saved earlier for the same
//! machine, model, head and settings (`saved_plan`). The commands only say what happened; what is
//! calibrated, reused and saved is decided here, so a program using the library gets the same tree
//! `generate` would.

use std::path::Path;

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::Result;
use crate::model::{ChatMessage, Llama, TextTokenizer};
use crate::spec::auto_budget::{
    plan_budget, BudgetPlan, CALIBRATION_CHATS, CALIBRATION_TOKENS, MAX_AUTO_BUDGET, PROBE_BUDGET,
};
use crate::spec::drafting::TreeSpec;
use crate::spec::engine::GenerationConfig;
use crate::spec::saved_plan::{self, PlanKey};

/// What a calibration runs, in words: the user is told before it starts (tens of seconds on a
/// CPU), and a saved choice is keyed by it, so that a change of method is a miss.
pub fn calibration_summary(cfg: &GenerationConfig) -> String {
    let runs = format!("{} chats x {CALIBRATION_TOKENS} tokens", CALIBRATION_CHATS.len());
    if cfg.sampling.is_greedy() {
        format!("{runs}, budget {PROBE_BUDGET} then up to {MAX_AUTO_BUDGET} if it may pay")
    } else {
        // Sampling plans over static trees since 2026-12-07: choices saved before (EAGLE-2
        // budgets) must not be reused, and this wording is part of their key.
        format!("{runs}, sampled static trees [[0],[1],[0,0]] then mc_sim_7b_63 if it may pay")
    }
}

/// The calibration prompts: each of `CALIBRATION_CHATS` as a user turn in the model's chat template.
/// A random-weight model (bench --random-weights) may have a smaller vocabulary than the tokenizer;
/// its ids are folded into it, as bench does with its prompts.
pub fn calibration_prompts<B: Backend>(model: &Llama<B>, tokenizer: &TextTokenizer) -> Result<Vec<Vec<u32>>> {
    let vocab = model.config.vocab_size as u32;
    CALIBRATION_CHATS
        .iter()
        .map(|chat| {
            let text = tokenizer.render_chat(&[ChatMessage::new("user", chat)], true)?;
            Ok(tokenizer.encode(&text, false)?.into_iter().map(|id| id % vocab).collect())
        })
        .collect()
}

/// Calibrates `head` on the chat prompts with `cfg`'s sampling and plans the budget. `notice` is
/// told what is about to run, before any of it does.
pub fn plan_on_chats<B: Backend>(
    model: &Llama<B>,
    head: &mut dyn DraftHead<B>,
    tokenizer: &TextTokenizer,
    cfg: &GenerationConfig,
    notice: &mut dyn FnMut(&str),
) -> Result<BudgetPlan> {
    let prompts = calibration_prompts(model, tokenizer)?;
    notice(&format!(
        "tree budget auto: timing verification and calibrating the head on this machine ({}; seconds to \
         tens of seconds on a CPU) ...",
        calibration_summary(cfg)
    ));
    let calibration = GenerationConfig { max_new_tokens: CALIBRATION_TOKENS, ..cfg.clone() };
    plan_budget(model, head, MAX_AUTO_BUDGET, &prompts, &calibration)
}

/// The tree for `--tree-budget auto`: the choice saved under `key` in `dir` unless `recalibrate`,
/// else a new plan (`plan_on_chats`), saved under `key`. Returns the tree and what to tell the
/// user: the reused choice, or the plan's table and where it was saved. A saved file that cannot
/// be used is calibrated over, and said so; a plan that cannot be saved is still used.
// The store (dir, key, recalibrate) and what `plan_on_chats` takes.
#[allow(clippy::too_many_arguments)]
pub fn saved_or_planned<B: Backend>(
    dir: &Path,
    key: &PlanKey,
    recalibrate: bool,
    model: &Llama<B>,
    head: &mut dyn DraftHead<B>,
    tokenizer: &TextTokenizer,
    cfg: &GenerationConfig,
    notice: &mut dyn FnMut(&str),
) -> Result<(TreeSpec, String)> {
    if !recalibrate {
        if let Some(saved) = saved_plan::load(dir, key, !cfg.sampling.is_greedy()) {
            return Ok((saved.tree()?, saved.report()));
        }
        let path = saved_plan::path_for(dir, key);
        if path.exists() {
            notice(&format!(
                "note: the saved choice in {} cannot be used (edited by hand?): calibrating again",
                path.display()
            ));
        }
    }
    let plan = plan_on_chats(model, head, tokenizer, cfg, notice)?;
    let mut report = plan.table();
    report += &match saved_plan::save(dir, key, &plan) {
        Ok(path) => format!(
            "(saved in {}: later runs with this model, head and settings reuse it; --recalibrate measures again)\n",
            path.display()
        ),
        Err(e) => format!("(the choice was not saved: {e})\n"),
    };
    Ok((plan.tree()?, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    /// Saved choices are keyed by this text: a change of wording would make every saved choice a
    /// miss. Change it on purpose only, with the method.
    #[test]
    fn the_calibration_summary_keeps_its_wording() {
        let cfg = |temperature| GenerationConfig {
            max_new_tokens: 1,
            sampling: SamplingParams::with_temperature(temperature),
            seed: 0,
            stop_ids: vec![],
        };
        assert_eq!(calibration_summary(&cfg(0.0)), "4 chats x 96 tokens, budget 8 then up to 32 if it may pay");
        assert_eq!(
            calibration_summary(&cfg(1.0)),
            "4 chats x 96 tokens, sampled static trees [[0],[1],[0,0]] then mc_sim_7b_63 if it may pay"
        );
    }
}
