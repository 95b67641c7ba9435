use super::*;

fn calibration(accepted_by_rank: Vec<usize>, off_chain_calls_by_rank: Vec<usize>) -> Calibration {
    Calibration {
        family: TreeFamily::Eagle2,
        steps: 10,
        accepted_by_rank,
        off_chain_calls_by_rank,
        begin_ms: 0.5,
        expand_ms: 1.2,
        // A level of 2 rows takes 0.4 ms, of 3 rows 0.6 ms.
        level_ms: vec![0.3, 0.4, 0.6],
        bookkeeping_ms_per_row: 0.0,
        accept_ms: 0.5,
        off_chain_call_ms: 0.0,
        walk_row_ms: 0.0,
        rejection_ms: 0.0,
    }
}

#[test]
fn plan_takes_tau_from_ranks_and_maximises_tokens_per_second() {
    // 10 steps; rank 1 accepted 6 times, rank 2 three times, rank 3 once.
    let verify = [10.0, 11.0, 12.0, 20.0];
    // Budgets 1, 2, 3 expand no level, one level of 2 rows, two levels of 3 rows.
    assert_eq!([1, 2, 3].map(|b| (expansion_levels(eagle2_tree(b)), eagle2_tree(b).top_k)), [(0, 1), (1, 2), (2, 3)]);
    let plan = BudgetPlan::new(&verify, calibration(vec![0, 6, 3, 1], vec![]));
    let taus: Vec<f64> = plan.rows.iter().map(|r| r.tau).collect();
    assert!(taus.iter().zip([1.0, 1.6, 1.9, 2.0]).all(|(t, want)| (t - want).abs() < 1e-12), "{taus:?}");
    let drafts: Vec<f64> = plan.rows.iter().map(|r| r.draft_ms).collect();
    assert!((drafts[1] - 0.5).abs() < 1e-12 && (drafts[2] - 0.9).abs() < 1e-12 && (drafts[3] - 1.7).abs() < 1e-12);
    // No call off the main chain: accept takes 0.5 ms at every budget.
    // Budget 1: 1.6 / 12 ms = 133.3 tok/s; 2: 1.9 / 13.4 = 141.8; 3: 2.0 / 22.2 = 90; plain 100.
    assert_eq!(plan.budget, 2);
    assert!((plan.rows[2].tokens_per_s - 1900.0 / 13.4).abs() < 1e-9);
    assert!(plan.table().contains("← chosen"));
    // A head that is never right: plain decoding wins and is chosen.
    let plan = BudgetPlan::new(&verify, calibration(vec![0, 0, 0, 0], vec![]));
    assert_eq!(plan.budget, 0);
    assert!(plan.table().contains("chosen: plain decoding, expected 100.00 tok/s (the best tree, budget 1"));
}

#[test]
fn a_larger_calibration_runs_only_when_a_larger_tree_may_pay() {
    // Calibrated at budget 3 (10 steps: ranks 1–3 accepted 6, 3, 1 times); verification of
    // 1–6 nodes known. Budget 2 is best: 1.9 / 13.4 ms = 141.8 tok/s.
    let plan = |verify: &[f64]| BudgetPlan::new(&verify[..4], calibration(vec![0, 6, 3, 1], vec![]));
    // Where a 5-node verification costs 20 ms, budget 4 could reach τ 2.0 + 0.3 (the rank-2
    // rate, the largest of ranks 2–3) over 2.3 (draft: 0.5 + 3 levels of 0.6) + 20 + 0.5 ms:
    // 100.9 tok/s; budget 5 τ 2.6 over 27.4 ms: 94.9. No threat.
    let cpu_like = [10.0, 11.0, 12.0, 13.0, 20.0, 24.0];
    assert!(!larger_budget_may_win(&plan(&cpu_like), &cpu_like));
    // Where verification barely grows with the tree (a GPU), budget 4 at τ 2.3 over
    // 2.3 + 12.1 + 0.5 ms (154 tok/s) would beat it: calibrate larger.
    let gpu_like = [10.0, 11.0, 12.0, 12.1, 12.1, 12.2];
    assert!(larger_budget_may_win(&plan(&gpu_like), &gpu_like));
    // Nothing larger to consider.
    assert!(!larger_budget_may_win(&plan(&gpu_like), &gpu_like[..4]));
}

#[test]
fn expansion_beyond_its_levels_is_charged_per_drafted_row() {
    // 10 steps at budget 3 (two levels of 3 rows): 10 ms of drafting a step, 2 of them the
    // head's update, so 8 ms growing trees, of which the levels account for 2 × 0.6 ms.
    let mut stats = SpecStats { draft_secs: 0.1, begin_secs: 0.02, ..Default::default() };
    stats.base.steps = 10;
    let c = Calibration::eagle2(&stats, 3, vec![0.3, 0.4, 0.6]);
    assert!((c.expand_ms - 8.0).abs() < 1e-9 && (c.begin_ms - 2.0).abs() < 1e-9);
    // 7 rows drafted (the root's and 3 per level): (8 − 1.2) / 7 ms each.
    let per_row = 6.8 / 7.0;
    assert!((c.bookkeeping_ms_per_row - per_row).abs() < 1e-9, "{}", c.bookkeeping_ms_per_row);
    // The largest budget's drafting comes back whole; budget 2: one level of 2 rows, 3 rows.
    assert!((c.draft_ms_at(3) - 10.0).abs() < 1e-9);
    assert!((c.draft_ms_at(2) - (2.0 + 0.4 + 3.0 * per_row)).abs() < 1e-9);
    assert!((c.draft_ms_at(1) - (2.0 + per_row)).abs() < 1e-9);
}

#[test]
fn near_ties_go_to_the_smaller_budget() {
    // Budget 2 is expected 1.5% faster than budget 1 (within TIE): budget 1 is chosen; 3%
    // faster: budget 2 is.
    // Budget 1: 1.6 tokens in 0.5 + 11 + 0.5 ms; budget 2: 1.9 tokens in 0.9 + v + 0.5 ms.
    for (ratio, want) in [(1.015, 1), (1.03, 2)] {
        let verify2 = 1.9 * 12.0 / (1.6 * ratio) - 1.4;
        let verify = [10.0, 11.0, verify2, 30.0];
        let plan = BudgetPlan::new(&verify, calibration(vec![0, 6, 3, 1], vec![]));
        assert!((plan.rows[2].tokens_per_s / plan.rows[1].tokens_per_s - ratio).abs() < 1e-9);
        assert_eq!(plan.budget, want, "budget 2 expected at {ratio}× budget 1");
        assert_eq!(
            plan.table().contains("budget 2 was expected 1.5% faster, within the 2% that counts as a tie"),
            want == 1
        );
    }
}

#[test]
fn off_chain_calls_are_charged_to_the_budgets_whose_trees_make_them() {
    // Over 10 steps nodes of rank 2 made 5 calls and nodes of rank 3 made 2, at 2 ms a call.
    let verify = [10.0, 11.0, 12.0, 20.0];
    let plan = BudgetPlan::new(
        &verify,
        Calibration { off_chain_call_ms: 2.0, ..calibration(vec![0, 6, 3, 1], vec![0, 0, 5, 2]) },
    );
    let accept: Vec<f64> = plan.rows.iter().map(|r| r.accept_ms).collect();
    // Budget 1's tree is a chain: no call. Budget 2: 0.5 calls a step; budget 3: 0.7.
    assert!(accept.iter().zip([0.0, 0.5, 1.5, 1.9]).all(|(a, want)| (a - want).abs() < 1e-12), "{accept:?}");
    // Budget 2 now costs 0.9 + 12 + 1.5 = 14.4 ms for 1.9 tokens (131.9 tok/s): budget 1 wins.
    assert_eq!(plan.budget, 1);
    assert!(plan.table().contains("0.70 projections off the main chain of 2.00 ms each"), "{}", plan.table());
}

/// Grows an EAGLE-2 tree whose rows are a fixed pseudo-random function of each node's path,
/// and returns its nodes as (token path) sets.
fn grow(params: Eagle2Params) -> Vec<Vec<u32>> {
    use crate::spec::tree::Eagle2Expander;
    let row = |path: &[u32]| -> Vec<f32> {
        let mut rng =
            crate::rng::Rng::new(path.iter().fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64 + 1)));
        let raw: Vec<f32> = (0..12).map(|_| rng.uniform_f32().powi(3)).collect();
        let sum: f32 = raw.iter().sum();
        raw.iter().map(|x| x / sum).collect()
    };
    let mut e = Eagle2Expander::new(0, params).unwrap();
    let mut paths: Vec<Vec<u32>> = vec![vec![]];
    loop {
        let rows: Vec<Vec<f32>> = paths.iter().map(|p| row(p)).collect();
        let f = e.expand_level(&rows).unwrap();
        if f.is_empty() {
            break;
        }
        paths = f.parent_slots.iter().zip(&f.tokens).map(|(&s, &t)| [paths[s].clone(), vec![t]].concat()).collect();
    }
    let tree = e.finish();
    let mut nodes: Vec<Vec<u32>> = (1..tree.buffers().num_nodes())
        .map(|mut n| {
            let mut path = Vec::new();
            while let Some(p) = tree.buffers().parents()[n] {
                path.push(tree.tokens()[n]);
                n = p;
            }
            path.reverse();
            path
        })
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn narrowed_expansions_find_the_same_tree() {
    for budget in 1..=24 {
        let full = Eagle2Params { top_k: 10, max_depth: 5, total_tokens: budget + 1 };
        assert_eq!(grow(eagle2_tree(budget)), grow(full), "budget {budget}");
    }
}
