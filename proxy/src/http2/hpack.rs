//! HPACK (RFC 7541) for Keel's HTTP/2 server: the [`Decoder`] that turns a
//! complete request header block (or trailer block) into [`Field`]s, with
//! the static and dynamic tables, prefix integers, Huffman strings and the
//! header-list size limit of RFC 9113 §6.5.2; and the encoder for response
//! heads and trailers ([`encode_response_head`], [`encode_trailers`]), which
//! needs no state because it never Huffman-codes and never inserts into the
//! peer's dynamic table. Field names are checked here (lowercase, valid
//! characters, known pseudo-headers); everything else about a field — value
//! characters, which pseudo-headers a request needs, connection-specific
//! headers, `cookie` joining — is the server's business, as are framing
//! (joining CONTINUATION frames into one block) and turning a
//! [`DecodeError`] into a COMPRESSION_ERROR.
//!
//! Decoding avoids work per field: literal values that are not
//! Huffman-coded are [`Bytes`] slices of the block; Huffman-coded strings
//! are decoded into a shared scratch buffer and split off it, so most blocks
//! allocate at most once; static-table names are `http` constants picked by
//! index. Dynamic-table entries copy their value out of the block, so a
//! small entry never keeps a large block alive.

mod huffman;

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, StatusCode};

use huffman::HuffmanError;

/// A decoded field's name: a request/response pseudo-header or a regular header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// `:authority`
    Authority,
    /// `:method`
    Method,
    /// `:path`
    Path,
    /// `:scheme`
    Scheme,
    /// `:status`
    Status,
    /// `:protocol` (extended CONNECT, RFC 8441)
    Protocol,
    /// A regular header (always lowercase).
    Header(HeaderName),
    /// A name HTTP/2 forbids (uppercase, invalid characters, an unknown
    /// pseudo-header), as sent: valid HPACK, so decoding goes on and the
    /// dynamic table stays in sync, but the request carrying it is
    /// malformed (RFC 9113 §8.2.1, §8.3) — a stream error, not a
    /// connection error.
    Malformed(Bytes),
}

impl Name {
    /// The name's length on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Name::Malformed(raw) => raw.len(),
            other => other.as_str().len(),
        }
    }

    /// The name as it appears on the wire (pseudo-headers with their colon;
    /// empty for a malformed name).
    pub fn as_str(&self) -> &str {
        match self {
            Name::Authority => ":authority",
            Name::Method => ":method",
            Name::Path => ":path",
            Name::Scheme => ":scheme",
            Name::Status => ":status",
            Name::Protocol => ":protocol",
            Name::Header(name) => name.as_str(),
            Name::Malformed(_) => "",
        }
    }

    /// A static-table name (compile time; panics on a name that is neither
    /// a known pseudo-header nor a valid lowercase header name).
    const fn from_static(name: &'static str) -> Name {
        match name.as_bytes() {
            b":authority" => Name::Authority,
            b":method" => Name::Method,
            b":path" => Name::Path,
            b":scheme" => Name::Scheme,
            b":status" => Name::Status,
            _ => Name::Header(HeaderName::from_static(name)),
        }
    }

    /// A literal name from the peer.
    fn parse(raw: &[u8]) -> Option<Name> {
        if let Some(pseudo) = raw.strip_prefix(b":") {
            return match pseudo {
                b"authority" => Some(Name::Authority),
                b"method" => Some(Name::Method),
                b"path" => Some(Name::Path),
                b"scheme" => Some(Name::Scheme),
                b"status" => Some(Name::Status),
                b"protocol" => Some(Name::Protocol),
                _ => None,
            };
        }
        // `HeaderName::from_bytes` would lowercase; RFC 9113 §8.2.1 makes
        // uppercase malformed instead.
        if raw.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        HeaderName::from_bytes(raw).ok().map(Name::Header)
    }
}

/// One decoded field. `value` is raw octets (the server validates them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Name,
    pub value: Bytes,
}

/// A malformed header block. Every one is a connection error of type
/// COMPRESSION_ERROR (RFC 9113 §4.3), except that the caller may treat the
/// name errors as malformed requests instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("HPACK integer overflow (limit 2^32 - 1)")]
    IntegerOverflow,
    #[error("HPACK integer cut off by the end of the header block")]
    IntegerTruncated,
    #[error("HPACK index 0 in an indexed field")]
    IndexZero,
    #[error("HPACK index {index} out of range (table has {entries} entries)")]
    IndexOutOfRange { index: usize, entries: usize },
    #[error("invalid Huffman string: padding longer than 7 bits")]
    HuffmanPaddingTooLong,
    #[error("invalid Huffman string: padding not all ones")]
    HuffmanPaddingNotOnes,
    #[error("invalid Huffman string: EOS symbol")]
    HuffmanEos,
    #[error("HPACK string length {len} past the end of the header block ({remaining} bytes left)")]
    StringPastEnd { len: usize, remaining: usize },
    #[error(
        "HPACK dynamic table size update to {size} above the SETTINGS_HEADER_TABLE_SIZE limit {limit}"
    )]
    TableSizeAboveLimit { size: usize, limit: usize },
    #[error("HPACK dynamic table size update not at the start of the header block")]
    TableSizeUpdateNotFirst,
}

impl From<HuffmanError> for DecodeError {
    fn from(error: HuffmanError) -> Self {
        match error {
            HuffmanError::PaddingTooLong => DecodeError::HuffmanPaddingTooLong,
            HuffmanError::PaddingNotOnes => DecodeError::HuffmanPaddingNotOnes,
            HuffmanError::Eos => DecodeError::HuffmanEos,
        }
    }
}

/// Defines the static table (RFC 7541 Appendix A) twice from one list: as
/// strings for compile-time tables, and as decoded [`Name`]s.
macro_rules! static_table {
    ($(($name:literal, $value:literal),)*) => {
        /// `(name, value)` of static index `i + 1`.
        const STATIC_STRS: [(&str, &str); STATIC_LEN] = [$(($name, $value),)*];
        /// `(name, value)` of static index `i + 1`, as decoded.
        static STATIC: [(Name, &[u8]); STATIC_LEN] = [$((Name::from_static($name), $value.as_bytes()),)*];
    };
}

const STATIC_LEN: usize = 61;

static_table! {
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
}

/// Per-entry overhead in table and header-list sizes (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The decoder's dynamic table (RFC 7541 §2.3.2, §4): newest entry first,
/// so dynamic index `62 + i` is `entries[i]`.
struct Table {
    entries: VecDeque<(Name, Bytes)>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The size the peer last set (at most the advertised limit).
    max_size: usize,
}

fn entry_size(name: &Name, value: &[u8]) -> usize {
    name.wire_len() + value.len() + ENTRY_OVERHEAD
}

impl Table {
    fn entries(&self) -> usize {
        STATIC_LEN + self.entries.len()
    }

    fn out_of_range(&self, index: usize) -> DecodeError {
        DecodeError::IndexOutOfRange {
            index,
            entries: self.entries(),
        }
    }

    /// The field at `index` (1-based over static then dynamic entries).
    fn field(&self, index: usize) -> Result<Field, DecodeError> {
        if index == 0 {
            return Err(DecodeError::IndexZero);
        }
        if let Some((name, value)) = STATIC.get(index - 1) {
            return Ok(Field {
                name: name.clone(),
                value: Bytes::from_static(value),
            });
        }
        match self.entries.get(index - 1 - STATIC_LEN) {
            Some((name, value)) => Ok(Field {
                name: name.clone(),
                value: value.clone(),
            }),
            None => Err(self.out_of_range(index)),
        }
    }

    /// The name at `index` (at least 1).
    fn name(&self, index: usize) -> Result<Name, DecodeError> {
        if let Some((name, _)) = STATIC.get(index.wrapping_sub(1)) {
            return Ok(name.clone());
        }
        match self.entries.get(index.wrapping_sub(1 + STATIC_LEN)) {
            Some((name, _)) => Ok(name.clone()),
            None => Err(self.out_of_range(index)),
        }
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some((name, value)) = self.entries.pop_back() else {
                break;
            };
            self.size -= entry_size(&name, &value);
        }
    }

    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn insert(&mut self, name: Name, value: Bytes) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // Not an error: the table just ends up empty (RFC 7541 §4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front((name, value));
    }
}

/// Minimum allocation for the Huffman scratch buffer, so that small strings
/// of many blocks share one allocation.
const SCRATCH_CHUNK: usize = 4096;

/// An HPACK decoder: one per connection, fed every header block in order.
pub struct Decoder {
    table: Table,
    /// The SETTINGS_HEADER_TABLE_SIZE this endpoint advertised.
    max_table_size: usize,
    /// Huffman output; decoded strings are split off it.
    scratch: BytesMut,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE this endpoint advertised (4096 by default).
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            table: Table {
                entries: VecDeque::new(),
                size: 0,
                max_size: max_table_size,
            },
            max_table_size,
            scratch: BytesMut::new(),
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads joined), calling `f`
    /// for each field in order while the running header-list size (RFC 9113 §6.5.2: name len +
    /// value len + 32 per field) stays within `max_list_size`. Once it would exceed it, `f` is no
    /// longer called, but the whole block is still decoded so the dynamic table stays in sync;
    /// the result is then `Ok(false)`. `Ok(true)` = every field was delivered. Any malformed
    /// input is `Err` (a connection error COMPRESSION_ERROR for the caller).
    pub fn decode(
        &mut self,
        block: Bytes,
        max_list_size: usize,
        mut f: impl FnMut(Field),
    ) -> Result<bool, DecodeError> {
        let buf: &[u8] = &block;
        let mut pos = 0;
        let mut list_size = 0usize;
        let mut complete = true;
        let mut at_start = true;
        while let Some(&first) = buf.get(pos) {
            let field = if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = decode_int(buf, &mut pos, 7)?;
                self.table.field(index)?
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                let field = self.literal(&block, &mut pos, 6)?;
                let value = Bytes::copy_from_slice(&field.value);
                self.table.insert(field.name.clone(), value);
                field
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3).
                if !at_start {
                    return Err(DecodeError::TableSizeUpdateNotFirst);
                }
                let size = decode_int(buf, &mut pos, 5)?;
                if size > self.max_table_size {
                    return Err(DecodeError::TableSizeAboveLimit {
                        size,
                        limit: self.max_table_size,
                    });
                }
                self.table.set_max_size(size);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001),
                // §6.2.2 and §6.2.3: the same to a decoder that forwards
                // nothing as HPACK.
                self.literal(&block, &mut pos, 4)?
            };
            at_start = false;
            if complete {
                let size = field.name.wire_len() + field.value.len() + ENTRY_OVERHEAD;
                list_size = list_size.saturating_add(size);
                if list_size <= max_list_size {
                    f(field);
                } else {
                    complete = false;
                }
            }
        }
        Ok(complete)
    }

    /// A literal field whose name index has a `prefix`-bit prefix.
    fn literal(
        &mut self,
        block: &Bytes,
        pos: &mut usize,
        prefix: u32,
    ) -> Result<Field, DecodeError> {
        let index = decode_int(block, pos, prefix)?;
        let name = if index == 0 {
            let raw = self.string(block, pos)?;
            Name::parse(&raw).unwrap_or(Name::Malformed(raw))
        } else {
            self.table.name(index)?
        };
        let value = self.string(block, pos)?;
        Ok(Field { name, value })
    }

    /// A string literal (§5.2).
    fn string(&mut self, block: &Bytes, pos: &mut usize) -> Result<Bytes, DecodeError> {
        let huffman = block.get(*pos).is_some_and(|&b| b & 0x80 != 0);
        let len = decode_int(block, pos, 7)?;
        let start = *pos;
        let remaining = block.len() - start;
        if len > remaining {
            return Err(DecodeError::StringPastEnd { len, remaining });
        }
        let end = start + len;
        *pos = end;
        if !huffman {
            Ok(block.slice(start..end))
        } else if len == 0 {
            Ok(Bytes::new())
        } else {
            self.huffman(&block[start..end])
        }
    }

    fn huffman(&mut self, src: &[u8]) -> Result<Bytes, DecodeError> {
        let bound = huffman::max_decoded_len(src.len());
        if self.scratch.capacity() < bound {
            // Reuses the allocation in place when nothing split off it is
            // still alive.
            self.scratch.reserve(bound.max(SCRATCH_CHUNK));
        }
        self.scratch.resize(bound, 0);
        match huffman::decode(src, &mut self.scratch) {
            Ok(len) => {
                self.scratch.truncate(len);
                Ok(self.scratch.split().freeze())
            }
            Err(error) => {
                self.scratch.clear();
                Err(error.into())
            }
        }
    }
}

/// Decodes a prefix integer (§5.1) whose first byte is at `*pos` and has a
/// `prefix`-bit prefix; values above 2^32 are refused.
#[inline]
fn decode_int(buf: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, DecodeError> {
    let mask = (1u8 << prefix) - 1;
    let Some(&first) = buf.get(*pos) else {
        return Err(DecodeError::IntegerTruncated);
    };
    *pos += 1;
    let prefix_value = first & mask;
    if prefix_value < mask {
        return Ok(usize::from(prefix_value));
    }
    let mut value = u64::from(mask);
    let mut shift = 0;
    loop {
        let Some(&byte) = buf.get(*pos) else {
            return Err(DecodeError::IntegerTruncated);
        };
        *pos += 1;
        value += u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(DecodeError::IntegerOverflow);
        }
    }
    if value > u64::from(u32::MAX) {
        return Err(DecodeError::IntegerOverflow);
    }
    usize::try_from(value).map_err(|_| DecodeError::IntegerOverflow)
}

/// Appends a prefix integer (§5.1): `flags` are the bits above the prefix.
fn encode_int(dst: &mut BytesMut, flags: u8, prefix: u32, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// Appends a raw (not Huffman-coded) string literal.
fn encode_string(dst: &mut BytesMut, value: &[u8]) {
    encode_int(dst, 0, 7, value.len());
    dst.put_slice(value);
}

/// Slot of a regular static-table name in [`NAME_SLOTS`]: collision-free
/// over the 47 regular names (checked when the table is built).
const fn name_slot(name: &[u8]) -> usize {
    let len = name.len();
    if len == 0 {
        return 0;
    }
    (len * 2 + name[0] as usize + name[len - 1] as usize * 50) & 0xff
}

/// For each [`name_slot`], the static index of the regular header name in
/// that slot (0 = none).
static NAME_SLOTS: [u8; 256] = build_name_slots();

const fn build_name_slots() -> [u8; 256] {
    let mut slots = [0u8; 256];
    let mut i = 0;
    while i < STATIC_LEN {
        let name = STATIC_STRS[i].0.as_bytes();
        if name[0] != b':' {
            let slot = name_slot(name);
            assert!(slots[slot] == 0, "static name slots collide");
            slots[slot] = (i + 1) as u8;
        }
        i += 1;
    }
    slots
}

/// The static-table index of a regular header name, if it has one.
#[inline]
fn static_name_index(name: &str) -> Option<usize> {
    let index = usize::from(NAME_SLOTS[name_slot(name.as_bytes())]);
    let (candidate, _) = STATIC_STRS.get(index.checked_sub(1)?)?;
    (*candidate == name).then_some(index)
}

/// Static index of `:status` with the given code, for the codes that have one.
fn static_status_index(status: StatusCode) -> Option<u8> {
    Some(match status.as_u16() {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => return None,
    })
}

/// Static index of the `:status` name.
const STATUS_NAME_INDEX: usize = 8;

/// Encodes a response head: `:status` then every header of `headers`, into `dst` as one HPACK block.
/// No Huffman coding and no dynamic-table insertion (the peer's table is never used, so no
/// table-size signalling is ever needed): `:status` 200/204/206/304/400/404/500 as indexed fields
/// (static table), other statuses as a literal with indexed name; each header as "literal without
/// indexing" with the static-table name index when the name is in the static table, else a literal
/// name; values for which `HeaderValue::is_sensitive()` is true as "literal never indexed".
pub fn encode_response_head(status: StatusCode, headers: &HeaderMap, dst: &mut BytesMut) {
    match static_status_index(status) {
        Some(index) => dst.put_u8(0x80 | index),
        None => {
            let code = status.as_str().as_bytes();
            dst.reserve(2 + code.len());
            encode_int(dst, 0x00, 4, STATUS_NAME_INDEX);
            encode_string(dst, code);
        }
    }
    encode_trailers(headers, dst);
}

/// Encodes a trailer block (regular headers only, same rules).
pub fn encode_trailers(headers: &HeaderMap, dst: &mut BytesMut) {
    for (name, value) in headers {
        let name = name.as_str();
        let value_bytes = value.as_bytes();
        // At most 3 bytes of name index or 5 of name length, 5 of value length.
        dst.reserve(name.len() + value_bytes.len() + 11);
        let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
        match static_name_index(name) {
            Some(index) => encode_int(dst, flags, 4, index),
            None => {
                dst.put_u8(flags);
                encode_string(dst, name.as_bytes());
            }
        }
        encode_string(dst, value_bytes);
    }
}

#[cfg(test)]
mod tests;
