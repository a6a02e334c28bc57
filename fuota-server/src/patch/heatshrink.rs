//! Heatshrink encoder with optimal parsing.
//!
//! The stream is the standard one (any heatshrink decoder reads it), but where the C encoder
//! greedily takes the longest match at each position, this one finds the cheapest sequence of
//! literals and back-references for the whole input by dynamic programming: a literal costs
//! 9 bits and a back-reference `1 + W + L` bits whatever its offset and length, so knowing the
//! longest match at each position is enough to find the optimum.

use fuota_codec::patch::heatshrink::Params;

/// Longest match at every position, for offsets up to `2^W` and lengths up to `max_len`.
pub fn longest_matches(data: &[u8], window_bits: u8, max_len: usize) -> Vec<(u16, u16)> {
    let window = 1usize << window_bits;
    let n = data.len();
    let mut best = vec![(0u16, 0u16); n];
    // Hash chains over 3-byte prefixes for the long matches; the last position of each
    // 1- and 2-byte value for the short ones, which pay with small windows (a 4/3
    // back-reference is 8 bits, less than one literal).
    const HASH_BITS: u32 = 15;
    let mut last1 = [u32::MAX; 256];
    let mut last2 = vec![u32::MAX; 1 << 16];
    let mut head = vec![u32::MAX; 1 << HASH_BITS];
    let mut prev = vec![u32::MAX; n];
    let hash = |i: usize| -> usize {
        let v = u32::from(data[i]) | u32::from(data[i + 1]) << 8 | u32::from(data[i + 2]) << 16;
        (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
    };
    let short = |i: usize, last1: &[u32; 256], last2: &[u32]| -> (u16, u16) {
        if i + 1 < n {
            let p = last2[usize::from(data[i]) << 8 | usize::from(data[i + 1])];
            if p != u32::MAX && i - p as usize <= window {
                return ((i - p as usize) as u16, 2);
            }
        }
        let p = last1[usize::from(data[i])];
        if p != u32::MAX && i - p as usize <= window {
            return ((i - p as usize) as u16, 1);
        }
        (0, 0)
    };
    for i in 0..n {
        if i + 3 > n {
            best[i] = short(i, &last1, &last2);
            last1[usize::from(data[i])] = i as u32;
            if i + 1 < n {
                last2[usize::from(data[i]) << 8 | usize::from(data[i + 1])] = i as u32;
            }
            continue;
        }
        let h = hash(i);
        let limit = max_len.min(n - i);
        let mut cand = head[h];
        let (mut best_len, mut best_off) = (0usize, 0usize);
        while cand != u32::MAX {
            let c = cand as usize;
            let off = i - c;
            if off > window {
                break;
            }
            if data[c + best_len.min(limit - 1)] == data[i + best_len.min(limit - 1)] {
                let len = data[c..c + limit]
                    .iter()
                    .zip(&data[i..i + limit])
                    .take_while(|(a, b)| a == b)
                    .count();
                if len > best_len {
                    best_len = len;
                    best_off = off;
                    if len == limit {
                        break;
                    }
                }
            }
            cand = prev[c];
        }
        best[i] = if best_len >= 3 {
            (best_off as u16, best_len as u16)
        } else {
            short(i, &last1, &last2)
        };
        last1[usize::from(data[i])] = i as u32;
        last2[usize::from(data[i]) << 8 | usize::from(data[i + 1])] = i as u32;
        prev[i] = head[h];
        head[h] = i as u32;
    }
    best
}

/// Writes bits MSB first.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    nbits: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc = (self.acc << bits) | u64::from(value);
        self.nbits += bits;
        while self.nbits >= 8 {
            self.nbits -= 8;
            self.out.push((self.acc >> self.nbits) as u8);
        }
        self.acc &= (1u64 << self.nbits) - 1;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.nbits > 0 {
            self.out.push((self.acc << (8 - self.nbits)) as u8);
        }
        self.out
    }
}

/// Compresses `data` given the longest matches from [`longest_matches`] (computed for a
/// window of at least `2^W`... exactly `params.window_bits`).
pub fn compress_with(data: &[u8], matches: &[(u16, u16)], params: Params) -> Vec<u8> {
    let n = data.len();
    let max_len = 1usize << params.lookahead_bits;
    let literal = 9u32;
    let backref = 1 + u32::from(params.window_bits) + u32::from(params.lookahead_bits);
    // Shortest back-reference cheaper than literals.
    let min_len = (backref / literal + 1) as usize;
    // cost[i]: bits to encode data[i..]; choice[i]: 0 literal, else length of the backref.
    let mut cost = vec![0u32; n + 1];
    let mut choice = vec![0u16; n];
    for i in (0..n).rev() {
        let mut best = cost[i + 1] + literal;
        let mut pick = 0u16;
        let (_, len) = matches[i];
        let len = usize::from(len).min(max_len).min(n - i);
        if len >= min_len {
            let mut k = len;
            while k >= min_len {
                let c = cost[i + k] + backref;
                if c < best {
                    best = c;
                    pick = k as u16;
                }
                k -= 1;
            }
        }
        cost[i] = best;
        choice[i] = pick;
    }
    let mut w = BitWriter {
        out: Vec::with_capacity(cost[0] as usize / 8 + 1),
        acc: 0,
        nbits: 0,
    };
    let mut i = 0;
    while i < n {
        match choice[i] {
            0 => {
                w.put(0x100 | u32::from(data[i]), 9);
                i += 1;
            }
            len => {
                let offset = u32::from(matches[i].0);
                w.put(0, 1);
                w.put(offset - 1, u32::from(params.window_bits));
                w.put(u32::from(len) - 1, u32::from(params.lookahead_bits));
                i += usize::from(len);
            }
        }
    }
    w.finish()
}

/// Compresses `data` as a heatshrink stream with these parameters.
pub fn compress(data: &[u8], params: Params) -> Vec<u8> {
    let matches = longest_matches(data, params.window_bits, 1 << params.lookahead_bits);
    compress_with(data, &matches, params)
}

/// Every valid (window, lookahead) pair with a window of at most `2^max_window_bits` bytes.
pub fn candidate_params(max_window_bits: u8) -> Vec<Params> {
    let mut out = Vec::new();
    for w in 4..=max_window_bits.min(15) {
        for l in 3..w {
            if let Some(p) = Params::new(w, l) {
                out.push(p);
            }
        }
    }
    out
}

/// The smallest compression of `data` over `candidates`, in parallel: `(params, stream)`.
pub fn compress_best(data: &[u8], candidates: &[Params]) -> Option<(Params, Vec<u8>)> {
    use rayon::prelude::*;
    let mut windows: Vec<u8> = candidates.iter().map(|p| p.window_bits).collect();
    windows.sort_unstable();
    windows.dedup();
    // Matches depend on the window only; find them once per window, capped at the largest
    // lookahead tried with it.
    let per_window: Vec<(u8, Vec<(u16, u16)>)> = windows
        .par_iter()
        .map(|&w| {
            let max_l = candidates
                .iter()
                .filter(|p| p.window_bits == w)
                .map(|p| p.lookahead_bits)
                .max()
                .unwrap_or(3);
            (w, longest_matches(data, w, 1 << max_l))
        })
        .collect();
    candidates
        .par_iter()
        .map(|&p| {
            let matches = per_window
                .iter()
                .find(|(w, _)| *w == p.window_bits)
                .map(|(_, m)| m.as_slice())
                .unwrap_or(&[]);
            (p, compress_with(data, matches, p))
        })
        .min_by_key(|(p, out)| (out.len(), p.window_bits, p.lookahead_bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuota_codec::patch::heatshrink::Decoder;

    fn decode(stream: &[u8], params: Params) -> Vec<u8> {
        let mut d = Decoder::<{ 1 << 15 }>::new(params).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 100];
        let mut input = stream;
        loop {
            let (used, n) = d.decode(input, &mut buf);
            input = &input[used..];
            out.extend_from_slice(&buf[..n]);
            if n == 0 && input.is_empty() {
                break;
            }
        }
        d.finish().unwrap();
        out
    }

    #[test]
    fn round_trips_for_every_pair() {
        let mut data = Vec::new();
        for i in 0..5000u32 {
            data.extend_from_slice(&(i / 7).to_le_bytes());
            if i % 13 == 0 {
                data.extend_from_slice(&[0; 300]);
            }
        }
        for p in candidate_params(11) {
            let c = compress(&data, p);
            assert_eq!(decode(&c, p), data, "{p:?}");
        }
        assert!(compress(&[], Params::new(8, 4).unwrap()).is_empty());
    }
}
