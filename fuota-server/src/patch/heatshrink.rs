//! Heatshrink encoder with optimal parsing.
//!
//! The stream is the standard one (any heatshrink decoder reads it), but where the C encoder
//! greedily takes the longest match at each position, this one finds the cheapest sequence of
//! literals and back-references for the whole input by dynamic programming: a literal costs
//! 9 bits and a back-reference `1 + W + L` bits whatever its offset and length, so knowing the
//! longest match at each position is enough to find the optimum.

use fuota_codec::patch::heatshrink::{Decoder, HeatshrinkError, Params};

/// Longest match at every position, over offsets 1..=min(i, 2^W) and lengths up to
/// `max_len`. Exact: for each offset `o` the match length at `i` is one more than at `i + 1`
/// when `data[i] == data[i - o]`, so a right-to-left sweep keeps one counter per offset. That
/// is n * 2^W byte compares, in a loop the compiler vectorizes; hash chains would be faster on
/// typical data but slow to a crawl on the zero-heavy bsdiff stream unless cut short, and a
/// cut-short search costs several percent of patch size.
pub fn longest_matches(data: &[u8], window_bits: u8, max_len: usize) -> Vec<u16> {
    let window = 1usize << window_bits;
    // i16 so that the running maximum vectorizes on baseline x86-64 (SSE2 has pmaxsw).
    let cap = max_len.min(i16::MAX as usize) as i16;
    let n = data.len();
    let mut best = vec![0u16; n];
    // run[k]: match length at the current position with offset `window - k`, so that the
    // counters and the earlier bytes they compare with are walked in the same direction.
    let mut run = vec![0i16; window];
    for i in (0..n).rev() {
        let reach = window.min(i);
        let byte = data[i];
        let mut longest = 0i16;
        for (r, &p) in run[window - reach..].iter_mut().zip(&data[i - reach..i]) {
            let next = if p == byte { (*r + 1).min(cap) } else { 0 };
            *r = next;
            longest = longest.max(next);
        }
        best[i] = longest as u16;
    }
    best
}

/// The nearest offset at which `len` bytes at `i` repeat (overlap allowed).
fn find_offset(data: &[u8], i: usize, len: usize, window: usize) -> Option<usize> {
    (1..=window.min(i)).find(|&o| (0..len).all(|t| data[i - o + t] == data[i + t]))
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
pub fn compress_with(data: &[u8], matches: &[u16], params: Params) -> Vec<u8> {
    let (_, choice) = parse(data, matches, params);
    emit(data, &choice, params)
}

/// The optimal parse: its size in bits, and at each position 0 (literal) or the length of
/// the back-reference that starts there.
pub fn parse(data: &[u8], matches: &[u16], params: Params) -> (u64, Vec<u16>) {
    let n = data.len();
    let max_len = 1usize << params.lookahead_bits;
    let literal = 9u32;
    let backref = 1 + u32::from(params.window_bits) + u32::from(params.lookahead_bits);
    // Shortest back-reference cheaper than literals.
    let min_len = (backref / literal + 1) as usize;
    // cost[i]: bits to encode data[i..]; choice[i]: 0 literal, else length of the backref.
    // The best back-reference at i takes the cheapest cost[j] for j in [i + min_len, i +
    // len(i)]. Going right to left both ends of that window move left (the longest match
    // at i+1 is at least len(i) - 1), so a monotonic deque gives each minimum in O(1)
    // amortized; where the right end does move right (a shorter match found by the short-match
    // tables), that position is scanned directly.
    let mut cost = vec![0u32; n + 1];
    let mut choice = vec![0u16; n];
    // Positions, increasing from front to back, with costs decreasing from front to back.
    let mut window: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut right_cut = usize::MAX;
    for i in (0..n).rev() {
        let mut best = cost[i + 1] + literal;
        let mut pick = 0u16;
        let entering = i + min_len;
        if entering <= n && entering <= right_cut {
            let c = cost[entering];
            while window.front().is_some_and(|&j| cost[j] >= c) {
                window.pop_front();
            }
            window.push_front(entering);
        }
        let len = usize::from(matches[i]).min(max_len).min(n - i);
        if len >= min_len {
            let right = i + len;
            let found = if right <= right_cut {
                while window.back().is_some_and(|&j| j > right) {
                    window.pop_back();
                }
                right_cut = right;
                window.back().map(|&j| (j, cost[j]))
            } else {
                (i + min_len..=right)
                    .map(|j| (j, cost[j]))
                    .min_by_key(|&(_, c)| c)
            };
            if let Some((j, c)) = found {
                if c + backref < best {
                    best = c + backref;
                    pick = (j - i) as u16;
                }
            }
        }
        cost[i] = best;
        choice[i] = pick;
    }
    (u64::from(cost[0]), choice)
}

/// Writes the stream for a parse from [`parse`].
pub fn emit(data: &[u8], choice: &[u16], params: Params) -> Vec<u8> {
    let n = data.len();
    let mut w = BitWriter {
        out: Vec::with_capacity(n / 2 + 1),
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
                // The parse only knew lengths; any offset with this match will do.
                let Some(offset) = find_offset(data, i, usize::from(len), 1 << params.window_bits)
                else {
                    unreachable!("a match of this length was found at {i}");
                };
                let offset = offset as u32;
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

/// Decompresses a whole heatshrink stream (the inverse of [`compress`]), with the device's
/// streaming decoder.
pub fn decompress(stream: &[u8], params: Params) -> Result<Vec<u8>, HeatshrinkError> {
    let mut decoder = Decoder::<{ 1 << 15 }>::new(params)?;
    let mut out = Vec::with_capacity(stream.len() * 2);
    let mut buf = [0u8; 256];
    decoder.decode_into(stream, &mut buf, |bytes| {
        out.extend_from_slice(bytes);
        Ok::<_, HeatshrinkError>(())
    })?;
    decoder.finish()?;
    Ok(out)
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
    let per_window: Vec<(u8, Vec<u16>)> = windows
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
    let matches_for = |w: u8| {
        per_window
            .iter()
            .find(|(pw, _)| *pw == w)
            .map(|(_, m)| m.as_slice())
            .unwrap_or(&[])
    };
    // Sizes come from the parses; only the winner is written out.
    let (best, _) = candidates
        .par_iter()
        .map(|&p| (p, parse(data, matches_for(p.window_bits), p).0.div_ceil(8)))
        .min_by_key(|&(p, bytes)| (bytes, p.window_bits, p.lookahead_bits))?;
    Some((
        best,
        compress_with(data, matches_for(best.window_bits), best),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            assert_eq!(decompress(&c, p).unwrap(), data, "{p:?}");
        }
        assert!(compress(&[], Params::new(8, 4).unwrap()).is_empty());
    }
}
