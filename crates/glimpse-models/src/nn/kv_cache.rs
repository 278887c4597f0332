//! Keys and values of the tokens seen so far, for one attention layer.
//!
//! Stored in a buffer with spare room along the sequence axis so a decode
//! step writes one column instead of re-concatenating the whole history;
//! the buffer doubles when full (amortised O(1) per token).

use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// (B, H_kv, capacity, head_dim) each, once the first tokens arrive.
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvCache {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends new keys and values and returns all of them.
    ///
    /// # Shapes
    /// `k`, `v`: (B, H_kv, T, head_dim) -> (B, H_kv, len + T, head_dim) each,
    /// views into the buffer.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if k.track_op() || v.track_op() {
            return self.append_tracked(k, v);
        }
        let t = k.dim(2)?;
        let needed = self.len + t;
        let capacity = self.k.as_ref().map_or(0, |b| b.dims()[2]);
        if needed > capacity {
            let new_cap = needed.max(capacity * 2).max(64);
            self.k = Some(Self::grow(self.k.take(), k, self.len, new_cap)?);
            self.v = Some(Self::grow(self.v.take(), v, self.len, new_cap)?);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => candle_core::bail!("kv cache buffer missing after growth"),
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((kb.narrow(2, 0, needed)?, vb.narrow(2, 0, needed)?))
    }

    /// Training: the buffer's in-place writes would cut the graph, so keys
    /// and values are concatenated instead (no spare room kept).
    fn append_tracked(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let join = |old: Option<Tensor>, new: &Tensor, len: usize| -> Result<Tensor> {
            match old {
                Some(old) if len > 0 => Tensor::cat(&[&old.narrow(2, 0, len)?, new], 2),
                _ => Ok(new.clone()),
            }
        };
        let k = join(self.k.take(), k, self.len)?;
        let v = join(self.v.take(), v, self.len)?;
        self.len = k.dim(2)?;
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    /// A buffer of `capacity` columns holding the `len` old ones.
    fn grow(old: Option<Tensor>, like: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
        let (b, h, _, d) = like.dims4()?;
        let buf = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
        if let Some(old) = old {
            if len > 0 {
                buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
        }
        Ok(buf)
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn appends_across_growth() -> Result<()> {
        let mut cache = KvCache::default();
        let mut all = Vec::new();
        for step in 0..70 {
            let t = if step == 0 { 3 } else { 1 };
            let k = Tensor::full(step as f32, (1, 2, t, 4), &Device::Cpu)?;
            let (ks, vs) = cache.append(&k, &k)?;
            for _ in 0..t {
                all.push(step as f32);
            }
            assert_eq!(ks.dims(), &[1, 2, all.len(), 4]);
            let col: Vec<f32> = ks
                .get(0)?
                .get(1)?
                .narrow(1, 0, 1)?
                .flatten_all()?
                .to_vec1()?;
            assert_eq!(col, all);
            assert_eq!(vs.dims(), ks.dims());
        }
        Ok(())
    }
}
