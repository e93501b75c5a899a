//! A fixed-size resource vector: CPU, memory, GPUs in total and GPUs per model.

use std::fmt::Write as _;

/// GPU models admission tells apart (node GPU models beyond this are refused).
pub(crate) const MAX_MODELS: usize = 8;
pub(crate) const CPU: usize = 0;
pub(crate) const MEM: usize = 1;
pub(crate) const GPU: usize = 2;
const DIMS: usize = 3 + MAX_MODELS;

/// Amounts per dimension; `u64::MAX` means "not limited" in a limit vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct ResVec(pub(crate) [u64; DIMS]);

impl ResVec {
    pub(crate) const ZERO: ResVec = ResVec([0; DIMS]);
    pub(crate) const UNLIMITED: ResVec = ResVec([u64::MAX; DIMS]);

    pub(crate) fn model(i: usize) -> usize {
        3 + i
    }

    /// Whether `self + add <= limit` in every dimension.
    #[inline]
    pub(crate) fn fits_with(&self, add: &ResVec, limit: &ResVec) -> bool {
        self.0
            .iter()
            .zip(&add.0)
            .zip(&limit.0)
            .all(|((a, b), l)| *b == 0 || a.saturating_add(*b) <= *l)
    }

    #[inline]
    pub(crate) fn add(&mut self, other: &ResVec) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = a.saturating_add(*b);
        }
    }

    #[inline]
    pub(crate) fn sub(&mut self, other: &ResVec) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = a.saturating_sub(*b);
        }
    }

    pub(crate) fn plus(mut self, other: &ResVec) -> ResVec {
        self.add(other);
        self
    }

    pub(crate) fn minus(mut self, other: &ResVec) -> ResVec {
        self.sub(other);
        self
    }

    pub(crate) fn min(mut self, other: &ResVec) -> ResVec {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).min(*b);
        }
        self
    }

    /// CPU, memory and the GPU count (no model) as [`Resources`](ops_core::Resources).
    pub(crate) fn to_resources(self) -> ops_core::Resources {
        let gpus = self.0[GPU].min(u64::from(u32::MAX)) as u32;
        ops_core::Resources::new(self.0[CPU], self.0[MEM]).with_gpus(gpus, None)
    }

    /// The larger amount in every dimension.
    pub(crate) fn max(mut self, other: &ResVec) -> ResVec {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).max(*b);
        }
        self
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// Whether `other` has something in a dimension where `self` is positive.
    pub(crate) fn overlaps(&self, other: &ResVec) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| *a > 0 && *b > 0)
    }

    /// The dimensions where `self + add` exceeds `limit`, as readable text.
    pub(crate) fn excess(&self, add: &ResVec, limit: &ResVec, models: &[String]) -> String {
        let mut out = String::new();
        for d in 0..DIMS {
            let (have, need, max) = (self.0[d], add.0[d], limit.0[d]);
            if need == 0 || have.saturating_add(need) <= max {
                continue;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            let name = dim_name(d, models);
            let _ = write!(
                out,
                "{name} {} needed, {} of {} in use",
                fmt_amount(d, need),
                fmt_amount(d, have),
                fmt_amount(d, max)
            );
        }
        out
    }
}

pub(crate) fn dim_name(d: usize, models: &[String]) -> String {
    match d {
        CPU => "cpu".into(),
        MEM => "memory".into(),
        GPU => "gpus".into(),
        m => format!(
            "gpus ({})",
            models.get(m - 3).map(String::as_str).unwrap_or("?")
        ),
    }
}

pub(crate) fn fmt_amount(d: usize, v: u64) -> String {
    if v == u64::MAX {
        return "unlimited".into();
    }
    match d {
        CPU => format!("{v}m"),
        MEM if v >= 1 << 30 && v.is_multiple_of(1 << 20) => {
            format!("{:.1}Gi", v as f64 / (1u64 << 30) as f64)
        }
        MEM if v >= 1 << 20 => format!("{:.1}Mi", v as f64 / (1u64 << 20) as f64),
        MEM => format!("{v}B"),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_ignores_dimensions_not_requested() {
        let mut used = ResVec::ZERO;
        used.0[CPU] = 900;
        let mut limit = ResVec::UNLIMITED;
        limit.0[CPU] = 1000;
        limit.0[GPU] = 0;
        let mut add = ResVec::ZERO;
        add.0[CPU] = 100;
        assert!(used.fits_with(&add, &limit));
        add.0[CPU] = 101;
        assert!(!used.fits_with(&add, &limit));
        assert_eq!(
            used.excess(&add, &limit, &[]),
            "cpu 101m needed, 900m of 1000m in use"
        );
    }
}
