//! The mutation engine: a seeded PRNG and byte-level mutations that know a little about the
//! formats (the safetensors 8-byte header length, JSON numbers and strings).
//!
//! Execution `i` of a run with seed `s` draws everything from `Rng::new(s, i)`, so a finding
//! replays from its (seed, execution) pair alone.

/// The project's SplitMix64 stream (`itera_data::rng`), with the draws the mutations use.
#[derive(Clone, Debug)]
pub struct Rng(itera_data::rng::Rng);

impl Rng {
    /// The stream of execution `exec` of a run seeded with `seed`.
    pub fn new(seed: u64, exec: u64) -> Rng {
        let mut r = Rng(itera_data::rng::Rng::new(seed ^ exec.wrapping_mul(0xD134_2543_DE82_EF95)));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Bytes that break parsers: zero, all ones, the signed edges.
const BYTES: [u8; 8] = [0x00, 0xff, 0x7f, 0x80, 0x01, b'"', b'\\', b'\n'];

/// Little-endian integers written over 2, 4 or 8 bytes.
const INTS: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 7,
];

/// Replacements for a JSON number: huge, negative, fractional, empty-ish.
const NUMBERS: [&str; 16] = [
    "0",
    "-1",
    "1",
    "-0",
    "2",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1.5",
    "-9223372036854775808",
    "100000000000",
];

/// Replacements for a JSON string's contents.
const STRINGS: [&str; 10] = [
    "",
    "..",
    "/",
    "../..",
    "\\u0000",
    "\\ud800",
    "<|endoftext|>",
    "F16",
    "x\\\"y",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

/// Applies 1 to 8 random mutations to `input`; `other` is another seed to splice from, `dict`
/// tokens of the format to insert.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        mutate_once(rng, input, other, dict);
    }
}

fn mutate_once(rng: &mut Rng, v: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let len = v.len();
    match rng.below(16) {
        // Bit flip.
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        // A byte set to an interesting value.
        2 if len > 0 => {
            let i = rng.below(len);
            v[i] = *rng.pick(&BYTES);
        }
        // A random byte.
        3 if len > 0 => {
            let i = rng.below(len);
            v[i] = rng.next_u64() as u8;
        }
        // An interesting integer over 2, 4 or 8 bytes.
        4 if len >= 8 => {
            let width = *rng.pick(&[2usize, 4, 8]);
            let i = rng.below(len - width + 1);
            let x = *rng.pick(&INTS);
            v[i..i + width].copy_from_slice(&x.to_le_bytes()[..width]);
        }
        // The safetensors header length (first 8 bytes): huge, zero, or off by a little.
        5 if len >= 8 => {
            let declared = u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]));
            let x = match rng.below(4) {
                0 => *rng.pick(&INTS),
                1 => declared.wrapping_add(rng.below(17) as u64).wrapping_sub(8),
                2 => (len as u64).wrapping_sub(8),
                _ => len as u64,
            };
            v[..8].copy_from_slice(&x.to_le_bytes());
        }
        // Truncation.
        6 if len > 0 => v.truncate(rng.below(len)),
        // Extension: random bytes or a repeated byte.
        7 => {
            let n = 1 + rng.below(64);
            if rng.chance(2) {
                v.extend((0..n).map(|_| rng.next_u64() as u8));
            } else {
                let b = *rng.pick(&BYTES);
                v.extend(std::iter::repeat_n(b, n));
            }
        }
        // A chunk of this input duplicated in place.
        8 if len > 0 => {
            let (start, n) = chunk(rng, len);
            let copy = v[start..start + n].to_vec();
            let at = rng.below(len + 1);
            v.splice(at..at, copy);
        }
        // A chunk deleted.
        9 if len > 0 => {
            let (start, n) = chunk(rng, len);
            v.drain(start..start + n);
        }
        // Splice: a chunk of another seed inserted or written over this one.
        10 if !other.is_empty() => {
            let (start, n) = chunk(rng, other.len());
            let piece = &other[start..start + n];
            let at = rng.below(len + 1);
            if rng.chance(2) {
                v.splice(at..at, piece.iter().copied());
            } else {
                let end = (at + n).min(len);
                v.splice(at..end, piece.iter().copied());
            }
        }
        // A JSON number replaced.
        11 | 12 => {
            if let Some((s, e)) = find_run(rng, v, |b| b.is_ascii_digit() || b == b'-' || b == b'.') {
                v.splice(s..e, rng.pick(&NUMBERS).bytes());
            }
        }
        // A JSON string's contents replaced.
        13 => {
            if let Some((s, e)) = find_string(rng, v) {
                let with: Vec<u8> = if rng.chance(8) {
                    std::iter::repeat_n(b'a', 1 + rng.below(4096)).collect()
                } else {
                    rng.pick(&STRINGS).bytes().collect()
                };
                v.splice(s..e, with);
            }
        }
        // A token of the format inserted.
        14 if !dict.is_empty() => {
            let at = rng.below(len + 1);
            v.splice(at..at, rng.pick(dict).iter().copied());
        }
        // An array emptied or filled with huge values (tensor shapes, offsets, contexts).
        15 => {
            if let Some((s, e)) = find_run(rng, v, |b| b != b'[' && b != b']' && b != b'{' && b != b'}') {
                if s > 0 && v[s - 1] == b'[' && e < v.len() && v[e] == b']' {
                    let with = *rng.pick(&["", "0", "4294967296,4294967296", "1,1,1,1,1,1,1,1,1", "-1", "[]"]);
                    v.splice(s..e, with.bytes());
                }
            }
        }
        _ => {
            if len > 0 {
                let i = rng.below(len);
                v[i] = v[i].wrapping_add(1 + rng.below(3) as u8);
            }
        }
    }
}

/// A random chunk `(start, len)` of a buffer of `len` > 0 bytes, usually short.
fn chunk(rng: &mut Rng, len: usize) -> (usize, usize) {
    let start = rng.below(len);
    let max = (len - start).min(if rng.chance(4) { len } else { 64 });
    (start, 1 + rng.below(max))
}

/// A maximal run of bytes matching `is` that contains a random position, searched forward from
/// it (wrapping once); `(start, end)`.
fn find_run(rng: &mut Rng, v: &[u8], is: impl Fn(u8) -> bool) -> Option<(usize, usize)> {
    if v.is_empty() {
        return None;
    }
    let from = rng.below(v.len());
    let i = (from..v.len()).chain(0..from).find(|&i| is(v[i]))?;
    let mut s = i;
    while s > 0 && is(v[s - 1]) {
        s -= 1;
    }
    let mut e = i;
    while e < v.len() && is(v[e]) {
        e += 1;
    }
    Some((s, e))
}

/// The contents `(start, end)` of a JSON string literal near a random position.
fn find_string(rng: &mut Rng, v: &[u8]) -> Option<(usize, usize)> {
    if v.is_empty() {
        return None;
    }
    let from = rng.below(v.len());
    let q = (from..v.len()).chain(0..from).find(|&i| v[i] == b'"')?;
    let end = (q + 1..v.len()).find(|&i| v[i] == b'"' && v[i - 1] != b'\\')?;
    Some((q + 1, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_execution_give_the_same_mutant() {
        let seed = br#"{"shape":[4,8],"dtype":"F32","data_offsets":[0,128]}"#.to_vec();
        let run = |exec| {
            let mut v = seed.clone();
            mutate(&mut Rng::new(299792458, exec), &mut v, b"other", &[b"F16"]);
            v
        };
        assert_eq!(run(7), run(7));
        assert!((0..20).map(run).any(|v| v != seed));
    }
}
