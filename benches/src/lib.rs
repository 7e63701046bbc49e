//! Benches and load tools: see benches/. `shim` drives a shim daemon through containerd's
//! shim protocol (front `start`, the ttrpc Task API), for the shim-level benches and the
//! stress tool `wshim-stress`.

pub mod shim;

/// The `p`-th percentile (0..=100) of sorted `values`, nearest-rank; None if empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7u32], 1.0), Some(7));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }
}
