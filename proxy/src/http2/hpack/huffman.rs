//! Huffman decoding of HPACK string literals (RFC 7541 §5.2 and Appendix B).
//!
//! The code is canonical: the codes of one bit length are consecutive
//! numbers, and each length's first code follows from the previous length's
//! last. Decoding exploits that twice. A 2048-entry table indexed by the
//! next 11 input bits resolves up to two symbols per lookup whenever their
//! codes fit in those bits (every letter, digit and common punctuation mark
//! has a code of 5 to 8 bits). Longer codes, and the last bits of a string,
//! go to a per-length range check over the canonical layout, which needs no
//! tree. Both tables are built at compile time from [`CODES`], the
//! standard's table, and the build fails if the data is not canonical.
//!
//! Only decoding lives here: Keel's encoder never Huffman-codes.

/// Why a Huffman-coded string is invalid (RFC 7541 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HuffmanError {
    /// More than 7 bits are left after the last complete code.
    PaddingTooLong,
    /// The bits after the last complete code are not a prefix of EOS.
    PaddingNotOnes,
    /// The string contains the EOS code.
    Eos,
}

/// `(code, bit length)` of every symbol, indexed by symbol; 256 is EOS.
/// RFC 7541 Appendix B.
#[rustfmt::skip]
pub(super) const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28),
    (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24),
    (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28),
    (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), (0xffffff4, 28),
    (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10), (0xf9, 8),
    (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), (0x0, 5), (0x1, 5), (0x2, 5),
    (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7),
    (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), (0x63, 7), (0x64, 7),
    (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7),
    (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), (0x7ffd, 15),
    (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), (0x27, 6),
    (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6),
    (0x76, 7), (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), (0x79, 7),
    (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13),
    (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22),
    (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23),
    (0xffffeb, 24), (0x7fffdf, 23), (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22),
    (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), (0x3fffd9, 22),
    (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21),
    (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23),
    (0x1fffde, 21), (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), (0x1fffe0, 21),
    (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), (0x7fffed, 23), (0x3fffe1, 22),
    (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22),
    (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22),
    (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26),
    (0x3ffffe4, 26), (0x7ffffde, 27), (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24),
    (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), (0x1fffe4, 21),
    (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27),
    (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20),
    (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24),
    (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), (0x3ffffeb, 26), (0x7ffffe6, 27),
    (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27),
    (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), (0x3fffffff, 30),
];

/// The EOS symbol.
const EOS: u16 = 256;
/// The longest code (EOS and a few control characters).
const MAX_CODE_LEN: usize = 30;
/// How many input bits the fast table looks at.
const PEEK_BITS: u32 = 11;
const PEEK_SIZE: usize = 1 << PEEK_BITS;

/// Fast-table entry layout: bits 0..8 first symbol, 8..16 second symbol,
/// 16..20 bits consumed, 20..22 number of symbols (0: the code starting here
/// is longer than [`PEEK_BITS`]).
const COUNT_SHIFT: u32 = 20;
const USED_SHIFT: u32 = 16;

/// The fast table: entry `i` decodes the symbols whose codes prefix the
/// [`PEEK_BITS`]-bit number `i`.
static PEEK: [u32; PEEK_SIZE] = build_peek();

/// For each [`PEEK_BITS`]-bit number, the one symbol whose code prefixes it,
/// as `length << 8 | symbol` (0 when that code is longer).
const fn build_single() -> [u16; PEEK_SIZE] {
    let mut table = [0u16; PEEK_SIZE];
    let mut symbol = 0;
    while symbol < 256 {
        let (code, len) = CODES[symbol];
        let len = len as u32;
        if len <= PEEK_BITS {
            let start = (code as usize) << (PEEK_BITS - len);
            let end = (code as usize + 1) << (PEEK_BITS - len);
            let mut i = start;
            while i < end {
                table[i] = (len as u16) << 8 | symbol as u16;
                i += 1;
            }
        }
        symbol += 1;
    }
    table
}

const fn build_peek() -> [u32; PEEK_SIZE] {
    let single = build_single();
    let mut table = [0u32; PEEK_SIZE];
    let mut i = 0;
    while i < PEEK_SIZE {
        let first = single[i] as u32;
        let len1 = first >> 8;
        if len1 != 0 {
            // The bits after the first code, moved to the top (zero-filled).
            let rest = (i << len1) & (PEEK_SIZE - 1);
            let second = single[rest] as u32;
            let len2 = second >> 8;
            table[i] = if len2 != 0 && len1 + len2 <= PEEK_BITS {
                (first & 0xff)
                    | (second & 0xff) << 8
                    | (len1 + len2) << USED_SHIFT
                    | 2 << COUNT_SHIFT
            } else {
                (first & 0xff) | len1 << USED_SHIFT | 1 << COUNT_SHIFT
            };
        }
        i += 1;
    }
    table
}

/// The canonical layout: for each bit length, its first code, how many
/// codes it has, and where its symbols start in `symbols` (ordered by code).
struct Canonical {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    offset: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

static CANONICAL: Canonical = build_canonical();

const fn build_canonical() -> Canonical {
    let mut count = [0u32; MAX_CODE_LEN + 1];
    let mut symbol = 0;
    while symbol < CODES.len() {
        count[CODES[symbol].1 as usize] += 1;
        symbol += 1;
    }
    let mut first = [0u32; MAX_CODE_LEN + 1];
    let mut offset = [0u16; MAX_CODE_LEN + 1];
    let mut len = 1;
    while len <= MAX_CODE_LEN {
        first[len] = (first[len - 1] + count[len - 1]) << 1;
        offset[len] = offset[len - 1] + count[len - 1] as u16;
        len += 1;
    }
    // The code space must be exactly used up: the code is complete, so any
    // 30 bits start with some code.
    assert!(first[MAX_CODE_LEN] + count[MAX_CODE_LEN] == 1 << MAX_CODE_LEN);
    let mut symbols = [u16::MAX; 257];
    let mut symbol = 0;
    while symbol < CODES.len() {
        let (code, len) = CODES[symbol];
        let len = len as usize;
        assert!(
            code >= first[len] && code - first[len] < count[len],
            "not canonical"
        );
        let slot = offset[len] as usize + (code - first[len]) as usize;
        assert!(symbols[slot] == u16::MAX, "two symbols share a code");
        symbols[slot] = symbol as u16;
        symbol += 1;
    }
    Canonical {
        first,
        count,
        offset,
        symbols,
    }
}

/// Decodes the one code at the top of `acc` (of which `bits` are input),
/// whatever its length: `(symbol, length)`, or `None` when `bits` end
/// inside a code.
fn decode_one(acc: u64, bits: u32) -> Option<(u16, u32)> {
    let table = &CANONICAL;
    let max = (bits as usize).min(MAX_CODE_LEN);
    for len in 1..=max {
        let code = (acc >> (64 - len)) as u32;
        let rank = code.wrapping_sub(table.first[len]);
        if rank < table.count[len] {
            let symbol = table.symbols[table.offset[len] as usize + rank as usize];
            return Some((symbol, len as u32));
        }
    }
    None
}

/// The output length [`decode`] needs for `encoded` input bytes: every
/// code is at least 5 bits, plus one byte of slack for two-symbol writes.
pub(super) fn max_decoded_len(encoded: usize) -> usize {
    encoded / 5 * 8 + (encoded % 5) * 8 / 5 + 1
}

/// Decodes `src` into the start of `out` (at least
/// [`max_decoded_len`]`(src.len())` bytes) and returns the decoded length.
pub(super) fn decode(src: &[u8], out: &mut [u8]) -> Result<usize, HuffmanError> {
    // `acc` holds the next input bits, most significant first; the top
    // `bits` of it are valid. Bits below may hold input not yet counted,
    // which a later refill ORs in again at the same place.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut pos = 0;
    let mut len = 0;
    loop {
        if bits < MAX_CODE_LEN as u32 {
            if let Some(word) = src.get(pos..).and_then(|rest| rest.first_chunk::<8>()) {
                acc |= u64::from_be_bytes(*word) >> bits;
                pos += ((63 - bits) >> 3) as usize;
                bits |= 56;
            } else {
                while bits <= 56 {
                    let Some(&byte) = src.get(pos) else { break };
                    acc |= u64::from(byte) << (56 - bits);
                    pos += 1;
                    bits += 8;
                }
                if bits == 0 {
                    return Ok(len);
                }
            }
        }
        let entry = PEEK[(acc >> (64 - PEEK_BITS)) as usize];
        let used = (entry >> USED_SHIFT) & 0xf;
        if entry >> COUNT_SHIFT != 0 && used <= bits {
            out[len] = entry as u8;
            out[len + 1] = (entry >> 8) as u8;
            len += (entry >> COUNT_SHIFT) as usize;
            acc <<= used;
            bits -= used;
            continue;
        }
        match decode_one(acc, bits) {
            Some((EOS, _)) => return Err(HuffmanError::Eos),
            Some((symbol, code_len)) => {
                out[len] = symbol as u8;
                len += 1;
                acc <<= code_len;
                bits -= code_len;
            }
            // Only at the end of the input (a refill leaves at least 30
            // bits otherwise): what is left is padding.
            None if bits > 7 => return Err(HuffmanError::PaddingTooLong),
            None if acc >> (64 - bits) != (1 << bits) - 1 => {
                return Err(HuffmanError::PaddingNotOnes);
            }
            None => return Ok(len),
        }
    }
}
