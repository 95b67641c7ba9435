//! The distillation losses (clover2.md §8, eagle.md §5) with their backward fused in: each returns
//! Σ_rows weight_r · loss_r and writes the gradient of that sum. f32 throughout, row sums in f64.
//! The row weight carries the mask, the `/(Σ mask + 1)` denominator and the per-head factor, so
//! one call covers one head's term of the total loss.

use rayon::prelude::*;

use crate::vexp::{exp_lanes, sum_lanes, LANES};

/// Soft cross-entropy of the student logits z against the teacher distribution p = softmax(t) of
/// the teacher logits, per row of width V = `logits.len() / rows`:
/// loss_r = −Σ_v p_v·log_softmax(z)_v = logsumexp(z) − Σ_v p_v·z_v (Σ p = 1), and
/// d_logits_r = w_r·(softmax(z) − p). Both softmaxes subtract their row max. Rows of weight 0
/// (masked) get a zero gradient and cost nothing else.
pub fn soft_cross_entropy(logits: &[f32], teacher: &[f32], row_weight: &[f32], d_logits: &mut [f32]) -> f32 {
    let rows = row_weight.len();
    if rows == 0 {
        return 0.0;
    }
    let v = logits.len() / rows;
    assert!(v > 0 && logits.len() == rows * v, "soft_cross_entropy: logits are not {rows} rows");
    assert!(teacher.len() == rows * v && d_logits.len() == rows * v, "soft_cross_entropy: shapes differ");
    // The row losses are collected and summed in row order: a parallel sum's association depends
    // on work stealing, and a resumed training run must replay the same loss values bit for bit.
    let row_losses: Vec<f64> = d_logits
        .par_chunks_mut(v)
        .zip(logits.par_chunks(v).zip(teacher.par_chunks(v)))
        .zip(row_weight.par_iter())
        .map_init(Vec::new, |teacher_exp, ((dz, (z, t)), &w)| {
            if w == 0.0 {
                dz.fill(0.0);
                return 0.0;
            }
            row_with_widest_vectors(dz, z, t, w, teacher_exp)
        })
        .collect();
    row_losses.iter().sum::<f64>() as f32
}

/// `soft_cross_entropy_row` compiled for the widest vectors the CPU has. The code has no fused
/// multiply-adds for the compiler to form, so every instruction set gives the same bits.
fn row_with_widest_vectors(dz: &mut [f32], z: &[f32], t: &[f32], w: f32, teacher_exp: &mut Vec<f32>) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(dz: &mut [f32], z: &[f32], t: &[f32], w: f32, scratch: &mut Vec<f32>) -> f64 {
            soft_cross_entropy_row(dz, z, t, w, scratch)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(dz: &mut [f32], z: &[f32], t: &[f32], w: f32, scratch: &mut Vec<f32>) -> f64 {
            soft_cross_entropy_row(dz, z, t, w, scratch)
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked above).
            return unsafe { avx512(dz, z, t, w, teacher_exp) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above).
            return unsafe { avx2(dz, z, t, w, teacher_exp) };
        }
    }
    soft_cross_entropy_row(dz, z, t, w, teacher_exp)
}

/// One row: 16-lane partial sums (a fixed order, so results do not depend on threads), the
/// student's unnormalised probabilities parked in `dz` and the teacher's in `teacher_exp`, then
/// both scaled into the gradient.
#[inline(always)]
fn soft_cross_entropy_row(dz: &mut [f32], z: &[f32], t: &[f32], w: f32, teacher_exp: &mut Vec<f32>) -> f64 {
    let v = z.len();
    let (zmax, tmax) = (row_max(z), row_max(t));
    teacher_exp.resize(v.next_multiple_of(LANES), 0.0);
    let (mut zsum, mut tsum, mut tz) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    for start in (0..v).step_by(LANES) {
        let n = LANES.min(v - start);
        // The last chunk is padded with entries whose exponentials are dropped below.
        let (mut zl, mut tl) = ([zmax; LANES], [tmax; LANES]);
        zl[..n].copy_from_slice(&z[start..start + n]);
        tl[..n].copy_from_slice(&t[start..start + n]);
        let ze = exp_lanes(std::array::from_fn(|l| zl[l] - zmax));
        let mut te = exp_lanes(std::array::from_fn(|l| tl[l] - tmax));
        let mut ze_kept = ze;
        ze_kept[n..].fill(0.0);
        te[n..].fill(0.0);
        for l in 0..LANES {
            zsum[l] += ze_kept[l];
            tsum[l] += te[l];
            tz[l] += te[l] * zl[l];
        }
        dz[start..start + n].copy_from_slice(&ze[..n]);
        teacher_exp[start..start + LANES].copy_from_slice(&te);
    }
    let (zsum, tsum, tz) = (sum_lanes(zsum), sum_lanes(tsum), sum_lanes(tz));
    let (zscale, tscale) = (w / zsum, w / tsum);
    for (d, &e) in dz.iter_mut().zip(teacher_exp.iter()) {
        *d = *d * zscale - e * tscale;
    }
    (w * (zmax + zsum.ln() - tz / tsum)) as f64
}

/// The row's largest value, by 16-lane maxima (NaN entries are skipped, as by `f32::max`; their
/// exponentials then make the loss NaN).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in row.chunks(LANES) {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    lanes.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
}

/// SmoothL1 with β = 1 (`0.5·d²` for |d| < 1, else `|d| − 0.5`) of `pred − target`, averaged over
/// the row's H elements: returns Σ_r w_r · mean(SmoothL1) and writes d_pred = w_r·clip(d, −1, 1)/H.
pub fn smooth_l1(pred: &[f32], target: &[f32], row_weight: &[f32], d_pred: &mut [f32]) -> f32 {
    let rows = row_weight.len();
    if rows == 0 {
        return 0.0;
    }
    let h = pred.len() / rows;
    assert!(h > 0 && pred.len() == rows * h, "smooth_l1: pred is not {rows} rows");
    assert!(target.len() == rows * h && d_pred.len() == rows * h, "smooth_l1: shapes differ");
    let mut total = 0.0f64;
    for ((dp, (p, t)), &w) in
        d_pred.chunks_exact_mut(h).zip(pred.chunks_exact(h).zip(target.chunks_exact(h))).zip(row_weight)
    {
        let scale = w / h as f32;
        let mut sum = 0.0f32;
        for ((g, &pv), &tv) in dp.iter_mut().zip(p).zip(t) {
            let d = pv - tv;
            sum += if d.abs() < 1.0 { 0.5 * d * d } else { d.abs() - 0.5 };
            *g = d.clamp(-1.0, 1.0) * scale;
        }
        total += (sum * scale) as f64;
    }
    total as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};

    fn ce_reference(z: &[f64], t: &[f64], w: &[f64]) -> f64 {
        let v = z.len() / w.len();
        let lse = |r: &[f64]| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        };
        z.chunks(v)
            .zip(t.chunks(v))
            .zip(w)
            .map(|((zr, tr), wr)| {
                let (lz, lt) = (lse(zr), lse(tr));
                -wr * zr.iter().zip(tr).map(|(a, b)| (b - lt).exp() * (a - lz)).sum::<f64>()
            })
            .sum()
    }

    fn smooth_l1_reference(p: &[f64], t: &[f64], w: &[f64]) -> f64 {
        let h = p.len() / w.len();
        p.chunks(h)
            .zip(t.chunks(h))
            .zip(w)
            .map(|((pr, tr), wr)| {
                let s: f64 = pr
                    .iter()
                    .zip(tr)
                    .map(|(a, b)| (a - b).abs())
                    .map(|d| if d < 1.0 { 0.5 * d * d } else { d - 0.5 })
                    .sum();
                wr * s / h as f64
            })
            .sum()
    }

    #[test]
    fn soft_cross_entropy_matches_finite_differences() {
        // V = 7: one padded chunk of 16 lanes; V = 53: three whole chunks and a padded one.
        for v in [7, 53] {
            soft_cross_entropy_against_f64(v);
        }
    }

    fn soft_cross_entropy_against_f64(v: usize) {
        let rows = 3;
        let mut rng = crate::rng::Rng::new(17);
        // Large logits: the max subtraction is what keeps exp finite here.
        let z: Vec<f32> = gc::random(&mut rng, rows * v, 3.0).iter().map(|x| x + 100.0).collect();
        let t = gc::random(&mut rng, rows * v, 3.0);
        let w = [0.5, 0.0, 1.25];
        let mut dz = vec![f32::NAN; rows * v];
        let loss = soft_cross_entropy(&z, &t, &w, &mut dz);
        let (t64, w64) = (to_f64(&t), to_f64(&w));
        let want = ce_reference(&to_f64(&z), &t64, &w64);
        assert!((loss as f64 - want).abs() < 1e-4 * want.abs(), "{loss} vs {want}");
        assert!(dz[v..2 * v].iter().all(|&g| g == 0.0), "a masked row has a zero gradient");
        let num = numeric(&to_f64(&z), |x| ce_reference(x, &t64, &w64));
        assert_grad("dz (rows 0, 2)", &[&dz[..v], &dz[2 * v..]].concat(), &[&num[..v], &num[2 * v..]].concat());
    }

    #[test]
    fn smooth_l1_matches_finite_differences() {
        let (rows, h) = (3, 6);
        let mut rng = crate::rng::Rng::new(18);
        // Differences up to ±3 reach both branches; none lands within h of the kinks at ±1.
        let (p, t) = (gc::random(&mut rng, rows * h, 1.5), gc::random(&mut rng, rows * h, 1.5));
        let w = [1.0, 0.25, 2.0];
        let mut dp = vec![0.0; rows * h];
        let loss = smooth_l1(&p, &t, &w, &mut dp);
        let (t64, w64) = (to_f64(&t), to_f64(&w));
        let want = smooth_l1_reference(&to_f64(&p), &t64, &w64);
        assert!((loss as f64 - want).abs() < 1e-5 * want.abs(), "{loss} vs {want}");
        assert_grad("d_pred", &dp, &numeric(&to_f64(&p), |x| smooth_l1_reference(x, &t64, &w64)));
    }

    /// clover2.md §17 test 4 style: two positions, V = 4, by hand. Position 0 is a response token
    /// (mask 1), position 1 is masked; the denominator is Σ mask + 1 = 2 and the head is i = 1,
    /// so every row weight is mask · 0.7 / 2.
    #[test]
    fn hand_computed_two_positions() {
        let w = [0.7 / 2.0, 0.0];
        // Student logits ln[1, 2, 3, 2] → softmax q = [1, 2, 3, 2]/8; teacher logits ln[1, 1, 1, 1]
        // → p = 1/4 each. loss_0 = −Σ p·ln q = −¼·(ln ⅛ + 2 ln ¼ + ln ⅜) = 1.4582148792;
        // row 1 holds garbage that must not count.
        let z = [0.0, 2f32.ln(), 3f32.ln(), 2f32.ln(), 9.0, -9.0, 0.0, 5.0];
        let t = [0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 3.0, 4.0];
        let mut dz = [0.0; 8];
        let ce = soft_cross_entropy(&z, &t, &w, &mut dz);
        assert!((ce - 0.35 * 1.458_214_9).abs() < 1e-6, "ploss {ce}");
        // dz_0 = 0.35 · (q − p) = 0.35 · [−⅛, 0, ⅛, 0].
        let want = [-0.35 / 8.0, 0.0, 0.35 / 8.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert!(dz.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-7), "{dz:?}");

        // SmoothL1 on H = 4: d = [0.5, −2, 0, 1.5] → [0.125, 1.5, 0, 1.0], mean 0.65625.
        let pred = [1.5, -1.0, 3.0, 2.5, 0.0, 0.0, 0.0, 0.0];
        let target = [1.0, 1.0, 3.0, 1.0, 7.0, 7.0, 7.0, 7.0];
        let mut dp = [0.0; 8];
        let vl = smooth_l1(&pred, &target, &w, &mut dp);
        assert!((vl - 0.35 * 0.65625).abs() < 1e-7, "vloss {vl}");
        // d_pred_0 = 0.35/4 · clip(d) = 0.0875 · [0.5, −1, 0, 1].
        let want = [0.04375, -0.0875, 0.0, 0.0875, 0.0, 0.0, 0.0, 0.0];
        assert!(dp.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-7), "{dp:?}");
    }
}
