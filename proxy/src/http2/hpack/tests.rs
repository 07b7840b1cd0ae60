//! HPACK tests: the RFC 7541 Appendix C examples, blocks from another
//! implementation (Python's `hpack` 4.2.0, generated offline and checked in
//! as hex), one test per [`DecodeError`], the header-list limit, the
//! Huffman decoder against a bit-at-a-time reference, and the encoder.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::*;

/// A block from hex (spaces ignored).
fn block(hex: &str) -> Bytes {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd hex length");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn field(name: &str, value: &str) -> Field {
    Field {
        name: Name::parse(name.as_bytes()).unwrap(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn fields(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter()
        .map(|(name, value)| field(name, value))
        .collect()
}

/// Decodes a block that must be well-formed and within any list limit.
fn decode(decoder: &mut Decoder, hex: &str) -> Vec<Field> {
    let mut out = Vec::new();
    assert!(
        decoder
            .decode(block(hex), usize::MAX, |f| out.push(f))
            .unwrap()
    );
    out
}

fn decode_err(decoder: &mut Decoder, hex: &str) -> DecodeError {
    decoder.decode(block(hex), usize::MAX, |_| {}).unwrap_err()
}

/// Asserts the dynamic table's entries (newest first) and size.
fn assert_table(decoder: &Decoder, entries: &[(&str, &str)], size: usize) {
    let got: Vec<(&str, &[u8])> = decoder
        .table
        .entries
        .iter()
        .map(|(name, value)| (name.as_str(), &value[..]))
        .collect();
    let want: Vec<(&str, &[u8])> = entries.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    assert_eq!(got, want);
    assert_eq!(decoder.table.size, size);
    let sum: usize = entries.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert_eq!(sum, size, "expected size disagrees with the entries");
}

// ---- RFC 7541 Appendix C ----

#[test]
fn c2_1_literal_with_indexing() {
    let mut d = Decoder::new(4096);
    let got = decode(
        &mut d,
        "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
    );
    assert_eq!(got, fields(&[("custom-key", "custom-header")]));
    assert_table(&d, &[("custom-key", "custom-header")], 55);
}

#[test]
fn c2_2_literal_without_indexing() {
    let mut d = Decoder::new(4096);
    let got = decode(&mut d, "040c2f73616d706c652f70617468");
    assert_eq!(got, fields(&[(":path", "/sample/path")]));
    assert_table(&d, &[], 0);
}

#[test]
fn c2_3_literal_never_indexed() {
    let mut d = Decoder::new(4096);
    let got = decode(&mut d, "100870617373776f726406736563726574");
    assert_eq!(got, fields(&[("password", "secret")]));
    assert_table(&d, &[], 0);
}

#[test]
fn c2_4_indexed() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode(&mut d, "82"), fields(&[(":method", "GET")]));
    assert_table(&d, &[], 0);
}

/// C.3 and C.4: the same three requests, so the same fields and tables.
fn check_requests(blocks: [&str; 3]) {
    let mut d = Decoder::new(4096);
    let first = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(decode(&mut d, blocks[0]), fields(&first));
    assert_table(&d, &[(":authority", "www.example.com")], 57);

    let mut second = first.to_vec();
    second.push(("cache-control", "no-cache"));
    assert_eq!(decode(&mut d, blocks[1]), fields(&second));
    assert_table(
        &d,
        &[
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
        110,
    );

    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    assert_eq!(decode(&mut d, blocks[2]), fields(&third));
    assert_table(
        &d,
        &[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
        164,
    );
}

#[test]
fn c3_requests_without_huffman() {
    check_requests([
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    check_requests([
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ]);
}

/// C.5 and C.6: three responses through a 256-byte table, with eviction.
fn check_responses(blocks: [&str; 3]) {
    let mut d = Decoder::new(256);
    let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    let location = "https://www.example.com";
    let first = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", date1),
        ("location", location),
    ];
    assert_eq!(decode(&mut d, blocks[0]), fields(&first));
    assert_table(
        &d,
        &[
            ("location", location),
            ("date", date1),
            ("cache-control", "private"),
            (":status", "302"),
        ],
        222,
    );

    let mut second = first;
    second[0] = (":status", "307");
    assert_eq!(decode(&mut d, blocks[1]), fields(&second));
    assert_table(
        &d,
        &[
            (":status", "307"),
            ("location", location),
            ("date", date1),
            ("cache-control", "private"),
        ],
        222,
    );

    let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    let third = [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", date2),
        ("location", location),
        ("content-encoding", "gzip"),
        ("set-cookie", cookie),
    ];
    assert_eq!(decode(&mut d, blocks[2]), fields(&third));
    assert_table(
        &d,
        &[
            ("set-cookie", cookie),
            ("content-encoding", "gzip"),
            ("date", date2),
        ],
        215,
    );
}

#[test]
fn c5_responses_without_huffman() {
    check_responses([
        "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54\
         6e1768747470733a2f2f7777772e6578616d706c652e636f6d",
        "4803333037c1c0bf",
        "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a697077386\
         66f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d3336\
         30303b2076657273696f6e3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    check_responses([
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863\
         c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b3\
         35dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ]);
}

// ---- Blocks from Python's hpack 4.2.0 ----

/// `(block, fields Python's decoder read back)` for consecutive blocks of
/// one connection. Random header lists (seeded), including never-indexed
/// fields, reuse of earlier fields, arbitrary value octets and dynamic table
/// size updates (to 128 in the third raw block; to 0 then 256 in the second
/// and third Huffman blocks).
type Vectors = &'static [(&'static str, &'static [(&'static [u8], &'static [u8])])];

const PY_RAW: Vectors = &[
    (
        "421078593069575845287239784e6e6942497a14324944406f23297b2659416723683745613435621f2b05\
         218178697542056725552769",
        &[
            (b":method", b"xY0iWXE(r9xNniBI"),
            (b"user-agent", b"2ID@o#){&YAg#h7Ea45b"),
            (b"user-agent", b"!\x81xiu"),
            (b":method", b"g%U'i"),
        ],
    ),
    (
        "a081be4005782d666f6f007a052181786975",
        &[
            (b"cookie", b""),
            (b":authority", b""),
            (b":method", b"g%U'i"),
            (b"x-foo", b""),
            (b"user-agent", b"!\x81xiu"),
        ],
    ),
    (
        "3f615303482050c0bf12056725552769",
        &[
            (b"accept", b"H P"),
            (b"x-foo", b""),
            (b"user-agent", b"!\x81xiu"),
            (b":method", b"g%U'i"),
        ],
    ),
    (
        "be400c677270632d74696d656f75740446fc2a3b120c7a4d5b61346065337c492272",
        &[
            (b"accept", b"H P"),
            (b"grpc-timeout", b"F\xfc*;"),
            (b":method", b"zM[a4`e3|I\x22r"),
        ],
    ),
];

const PY_HUFFMAN: Vectors = &[
    (
        "1084f2b4a73f91d7fffbff5c3ffeffd6fbdd0b9c1721ff9f1089f2b585ed6950958d2783ffff834089f2b5\
         85ed6950958d2782d8bf5f964c3ff77397f7a34b3f6cecfffe0a7f7e14bfabd28d7f",
        &[
            (b"x-foo", b"P{@U`#TCjeL0:A|"),
            (b"x-request-id", b"\xb2"),
            (b"x-request-id", b"Q."),
            (b"content-type", b"tA>:W)MN3;3Q\x5c )w DOy 4"),
        ],
    ),
    (
        "206093fffedfffffb3ffffeefffe5fffffd5fffff47f4084f2b4a73f91d7fffbff5c3ffeffd6fbdd0b9c17\
         21ff9f4089f2b585ed6950958d2782d8bf4089f2b585ed6950958d2796ffff0ffff97fffdbfefffffecfff\
         f63ffffff7fffe6f1f10964c3ff77397f7a34b3f6cecfffe0a7f7e14bfabd28d7f",
        &[
            (b"cookie", b"\xe2\xf2\xff\xd0\x0c\xda"),
            (b"x-foo", b"P{@U`#TCjeL0:A|"),
            (b"x-request-id", b"Q."),
            (b"x-request-id", b"\xb1\xd9\xa3)\xf2\x9a\xdc\xbe"),
            (b"content-type", b"tA>:W)MN3;3Q\x5c )w DOy 4"),
        ],
    ),
    (
        "3fe1014084f2b4a73f91d7fffbff5c3ffeffd6fbdd0b9c1721ff9f4187fe57ff5e7ff3bb4492cbfccdc3fc\
         7f5e0fffb73a2ea46fe0ffe7ef1f119efffffeae3fffffe1fffffd3fffe3ffffdffffffefffff868fffe6f\
         fffeef4089f2b585ed6950958d2782d8bf",
        &[
            (b"x-foo", b"P{@U`#TCjeL0:A|"),
            (b":authority", b"\x22.'x$S"),
            (b":path", b"J\x22gU?9PE`:j. b9E]Z"),
            (b"cookie", b"\x0cV\x13\x0b\xd1\xb7\x1b\x95l\x80\x94"),
            (b"x-request-id", b"Q."),
        ],
    ),
    (
        "bfc07a92fff7cb9fefff44a7ff517f02f4283ff25e3f4084f2b4a73f91d7fffbff5c3ffeffd6fbdd0b9c17\
         21ff9f5f82fbcf4187fe57ff5e7ff3bb",
        &[
            (b":path", b"J\x22gU?9PE`:j. b9E]Z"),
            (b":authority", b"\x22.'x$S"),
            (b"user-agent", b"}x6+@cm@_!2y2=$eV"),
            (b"x-foo", b"P{@U`#TCjeL0:A|"),
            (b"content-type", b";L"),
            (b":authority", b"\x22.'x$S"),
        ],
    ),
];

fn check_vectors(vectors: Vectors) {
    let mut d = Decoder::new(4096);
    for (hex, want) in vectors {
        let got = decode(&mut d, hex);
        let got: Vec<(&str, &[u8])> = got
            .iter()
            .map(|f| (f.name.as_str(), &f.value[..]))
            .collect();
        let want: Vec<(&str, &[u8])> = want
            .iter()
            .map(|(n, v)| (std::str::from_utf8(n).unwrap(), *v))
            .collect();
        assert_eq!(got, want, "block {hex}");
    }
}

#[test]
fn python_blocks_without_huffman() {
    check_vectors(PY_RAW);
}

#[test]
fn python_blocks_with_huffman() {
    check_vectors(PY_HUFFMAN);
}

// ---- Names and tables ----

#[test]
fn every_static_entry_decodes_by_index() {
    let mut d = Decoder::new(4096);
    for (i, (name, value)) in STATIC_STRS.iter().enumerate() {
        let mut out = BytesMut::new();
        encode_int(&mut out, 0x80, 7, i + 1);
        let got = decode(&mut d, &hex(&out));
        assert_eq!(got, vec![field(name, value)], "static index {}", i + 1);
    }
}

#[test]
fn static_name_lookup_finds_first_index_only_for_static_names() {
    for (i, (name, _)) in STATIC_STRS.iter().enumerate() {
        if name.starts_with(':') {
            continue;
        }
        let first = STATIC_STRS.iter().position(|(n, _)| n == name).unwrap() + 1;
        assert_eq!(static_name_index(name), Some(first), "{name}");
        assert_eq!(first, i + 1, "regular names appear once");
    }
    for name in [
        "x-foo",
        "",
        "a",
        "agf",
        "content-typf",
        "dcontent-type",
        ":path",
        "age2",
    ] {
        assert_eq!(static_name_index(name), None, "{name}");
    }
}

#[test]
fn literal_names_map_to_pseudo_headers_and_header_constants() {
    let cases: [(&[u8], Name); 8] = [
        (b":authority", Name::Authority),
        (b":method", Name::Method),
        (b":path", Name::Path),
        (b":scheme", Name::Scheme),
        (b":status", Name::Status),
        (b":protocol", Name::Protocol),
        (b"content-type", Name::Header(header::CONTENT_TYPE)),
        (b"x-foo", Name::Header(HeaderName::from_static("x-foo"))),
    ];
    for (raw, name) in cases {
        assert_eq!(Name::parse(raw).unwrap(), name);
    }
    // `:protocol` is not in the static table: literal name, indexed value.
    let mut d = Decoder::new(4096);
    let got = decode(&mut d, "0009 3a70726f746f636f6c 09 776562736f636b6574");
    assert_eq!(got, fields(&[(":protocol", "websocket")]));
}

#[test]
fn raw_values_are_slices_of_the_block() {
    let mut d = Decoder::new(4096);
    let input = block("0f10 0a 746578742f706c61696e");
    let range = input.as_ptr_range();
    let mut got = Vec::new();
    d.decode(input.clone(), 100, |f| got.push(f)).unwrap();
    assert_eq!(got, fields(&[("content-type", "text/plain")]));
    assert!(range.contains(&got[0].value.as_ptr()));
}

#[test]
fn huffman_values_survive_later_blocks() {
    let mut d = Decoder::new(4096);
    let first = decode(&mut d, "828684418cf1e3c2e5f23a6ba0ab90f4ff");
    // Without the table entry, the same Huffman string again, twice.
    let second = decode(
        &mut d,
        "018cf1e3c2e5f23a6ba0ab90f4ff 018cf1e3c2e5f23a6ba0ab90f4ff",
    );
    assert_eq!(first[3], field(":authority", "www.example.com"));
    assert_eq!(second, vec![first[3].clone(), first[3].clone()]);
}

#[test]
fn size_updates_at_the_start_evict_and_regrow() {
    let mut d = Decoder::new(4096);
    decode(
        &mut d,
        "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
    );
    assert_table(&d, &[("custom-key", "custom-header")], 55);
    // Two updates at the start of one block: to 0 (evicts all), then 4096.
    assert_eq!(
        decode(&mut d, "20 3fe11f 82"),
        fields(&[(":method", "GET")])
    );
    assert_table(&d, &[], 0);
    assert_eq!(d.table.max_size, 4096);
    // An update alone is a valid block.
    assert!(decode(&mut d, "3f11").is_empty());
    assert_eq!(d.table.max_size, 48);
    // 40 bytes fit in 48; a second one evicts the first.
    decode(&mut d, "4005782d666f6f03626172");
    assert_table(&d, &[("x-foo", "bar")], 40);
    decode(&mut d, "4005782d62617a03717578");
    assert_table(&d, &[("x-baz", "qux")], 40);
    // An entry larger than the table empties it (not an error).
    decode(
        &mut d,
        "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
    );
    assert_table(&d, &[], 0);
}

#[test]
fn indexed_name_from_the_dynamic_table_evicted_by_its_own_insertion() {
    let mut d = Decoder::new(4096);
    decode(&mut d, "3f11 4005782d666f6f03626172");
    // Name index 62 (x-foo), which the insertion itself evicts.
    assert_eq!(decode(&mut d, "7e 0362617a"), fields(&[("x-foo", "baz")]));
    assert_table(&d, &[("x-foo", "baz")], 40);
}

// ---- Header-list size limit ----

#[test]
fn oversize_list_stops_delivery_but_keeps_the_table_in_sync() {
    let mut d = Decoder::new(4096);
    // x-foo: bar (40, inserted), :method GET (42), x-bar: baz (40, inserted).
    let input = "4005782d666f6f03626172 82 4005782d62617203626172";
    let mut got = Vec::new();
    let complete = d.decode(block(input), 81, |f| got.push(f)).unwrap();
    assert!(!complete);
    assert_eq!(got, fields(&[("x-foo", "bar")]));
    assert_table(&d, &[("x-bar", "bar"), ("x-foo", "bar")], 80);
    // Both insertions happened: the next block references them.
    assert_eq!(
        decode(&mut d, "be bf"),
        fields(&[("x-bar", "bar"), ("x-foo", "bar")])
    );
    // A list exactly at the limit is complete.
    let mut got = Vec::new();
    assert!(d.decode(block("be 82"), 82, |f| got.push(f)).unwrap());
    assert_eq!(got.len(), 2);
}

#[test]
fn oversize_never_calls_f_again_even_for_small_fields() {
    let mut d = Decoder::new(4096);
    let mut got = Vec::new();
    // :path with a 100-byte value, then :method GET.
    let long = format!("04 64 {}", "61".repeat(100));
    let complete = d.decode(block(&format!("82 {long} 82")), 100, |f| got.push(f));
    assert_eq!(complete, Ok(false));
    assert_eq!(got, fields(&[(":method", "GET")]));
}

// ---- Errors: one crafted block each ----

fn assert_error(hex: &str, error: DecodeError, message: &str) {
    let mut d = Decoder::new(4096);
    let got = decode_err(&mut d, hex);
    assert_eq!(got, error, "block {hex}");
    assert_eq!(got.to_string(), message);
}

#[test]
fn error_integer_overflow() {
    let message = "HPACK integer overflow (limit 2^32 - 1)";
    // Six continuation bytes.
    assert_error("ff ffffffffff 01", DecodeError::IntegerOverflow, message);
    // 2^32 + 126: five bytes, but too large.
    assert_error("ff ffffffff0f", DecodeError::IntegerOverflow, message);
    // 2^32 - 1 itself is an integer (and then an index out of range).
    let mut out = BytesMut::new();
    encode_int(&mut out, 0x80, 7, u32::MAX as usize);
    assert_eq!(
        Decoder::new(4096).decode(out.freeze(), usize::MAX, |_| {}),
        Err(DecodeError::IndexOutOfRange {
            index: u32::MAX as usize,
            entries: 61
        })
    );
}

#[test]
fn error_integer_truncated() {
    let message = "HPACK integer cut off by the end of the header block";
    assert_error("ff", DecodeError::IntegerTruncated, message);
    assert_error("ff 80", DecodeError::IntegerTruncated, message);
    // A literal whose value length is missing.
    assert_error("04", DecodeError::IntegerTruncated, message);
}

#[test]
fn error_index_zero() {
    assert_error(
        "80",
        DecodeError::IndexZero,
        "HPACK index 0 in an indexed field",
    );
}

#[test]
fn error_index_out_of_range() {
    assert_error(
        "be",
        DecodeError::IndexOutOfRange {
            index: 62,
            entries: 61,
        },
        "HPACK index 62 out of range (table has 61 entries)",
    );
    // As a literal's name index, after one insertion.
    let mut d = Decoder::new(4096);
    decode(&mut d, "4005782d666f6f03626172");
    assert_eq!(decode(&mut d, "be"), fields(&[("x-foo", "bar")]));
    let error = decode_err(&mut d, "7f00 0161");
    assert_eq!(
        error.to_string(),
        "HPACK index 63 out of range (table has 62 entries)"
    );
}

#[test]
fn error_huffman_padding_too_long() {
    let message = "invalid Huffman string: padding longer than 7 bits";
    // Eight 1 bits and nothing else.
    assert_error("01 81ff", DecodeError::HuffmanPaddingTooLong, message);
    // 'a' (00011) then eleven 1 bits.
    assert_error("01 821fff", DecodeError::HuffmanPaddingTooLong, message);
}

#[test]
fn error_huffman_padding_not_all_ones() {
    // 'a' (00011) then 000.
    assert_error(
        "01 8118",
        DecodeError::HuffmanPaddingNotOnes,
        "invalid Huffman string: padding not all ones",
    );
}

#[test]
fn error_huffman_eos() {
    // EOS (thirty 1 bits) then two bits of padding; in a name too.
    let message = "invalid Huffman string: EOS symbol";
    assert_error("01 84ffffffff", DecodeError::HuffmanEos, message);
    assert_error("00 84ffffffff 0161", DecodeError::HuffmanEos, message);
}

#[test]
fn error_string_past_end() {
    assert_error(
        "01 05 6162",
        DecodeError::StringPastEnd {
            len: 5,
            remaining: 2,
        },
        "HPACK string length 5 past the end of the header block (2 bytes left)",
    );
    // A Huffman-coded name.
    assert_error(
        "00 83 1f",
        DecodeError::StringPastEnd {
            len: 3,
            remaining: 1,
        },
        "HPACK string length 3 past the end of the header block (1 bytes left)",
    );
}

#[test]
fn error_table_size_above_limit() {
    assert_error(
        "3fe21f",
        DecodeError::TableSizeAboveLimit {
            size: 4097,
            limit: 4096,
        },
        "HPACK dynamic table size update to 4097 above the SETTINGS_HEADER_TABLE_SIZE limit 4096",
    );
}

#[test]
fn error_table_size_update_not_first() {
    assert_error(
        "82 20",
        DecodeError::TableSizeUpdateNotFirst,
        "HPACK dynamic table size update not at the start of the header block",
    );
}

/// A name HTTP/2 forbids is valid HPACK: it decodes (and indexes) as
/// `Name::Malformed`, for the server to refuse the one request.
fn assert_malformed(hex: &str, raw: &[u8]) {
    let mut d = Decoder::new(4096);
    let got = decode(&mut d, hex);
    assert_eq!(got.len(), 1, "block {hex}");
    assert_eq!(got[0].name, Name::Malformed(Bytes::copy_from_slice(raw)));
    assert_eq!(&got[0].value[..], b"a");
}

#[test]
fn invalid_header_names_decode_as_malformed() {
    // Uppercase (which `HeaderName` would silently lowercase), a space, an
    // empty name, a non-UTF-8 octet (incrementally indexed).
    assert_malformed("00 05 582d466f6f 0161", b"X-Foo");
    assert_malformed("00 05 7820666f6f 0161", b"x foo");
    assert_malformed("00 00 0161", b"");
    assert_malformed("40 02 78ff 0161", b"x\xff");
    // The indexed one stays in the table, so the next block can use it.
    let mut d = Decoder::new(4096);
    decode(&mut d, "40 02 78ff 0161");
    let again = decode(&mut d, "be");
    assert_eq!(again[0].name, Name::Malformed(Bytes::from_static(b"x\xff")));
}

#[test]
fn unknown_pseudo_headers_decode_as_malformed() {
    assert_malformed("00 04 3a666f6f 0161", b":foo");
}

// ---- Integers ----

#[test]
fn integers_round_trip_for_every_prefix() {
    let values = [
        0,
        1,
        14,
        15,
        16,
        30,
        31,
        62,
        63,
        126,
        127,
        128,
        255,
        1337,
        4096,
        1 << 21,
    ];
    for prefix in 4..=7 {
        for value in values.into_iter().chain([u32::MAX as usize]) {
            let mut out = BytesMut::new();
            encode_int(&mut out, 0, prefix, value);
            let mut pos = 0;
            assert_eq!(decode_int(&out, &mut pos, prefix), Ok(value));
            assert_eq!(pos, out.len());
        }
    }
    // RFC 7541 C.1: 10 and 1337 with a 5-bit prefix, 42 with 8 bits' worth.
    let mut out = BytesMut::new();
    encode_int(&mut out, 0, 5, 10);
    encode_int(&mut out, 0, 5, 1337);
    assert_eq!(hex(&out), "0a1f9a0a");
}

// ---- Huffman ----

/// Test-only encoder (Keel's encoder never Huffman-codes).
fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &byte in src {
        let (code, len) = huffman::CODES[usize::from(byte)];
        acc = acc << len | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
    }
    out
}

fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, huffman::HuffmanError> {
    let mut out = vec![0; huffman::max_decoded_len(src.len())];
    let len = huffman::decode(src, &mut out)?;
    out.truncate(len);
    Ok(out)
}

/// `(code, length)` to symbol, for [`huffman_reference`].
type CodeMap = std::collections::HashMap<(u32, u8), usize>;

/// Reference decoder: one bit at a time, looking each prefix up in `codes`.
fn huffman_reference(codes: &CodeMap, src: &[u8]) -> Result<Vec<u8>, huffman::HuffmanError> {
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u8);
    for bit in src
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
    {
        code = code << 1 | u32::from(bit);
        len += 1;
        if let Some(&symbol) = codes.get(&(code, len)) {
            if symbol == 256 {
                return Err(huffman::HuffmanError::Eos);
            }
            out.push(symbol as u8);
            (code, len) = (0, 0);
        }
    }
    if len > 7 {
        Err(huffman::HuffmanError::PaddingTooLong)
    } else if code != (1 << len) - 1 {
        Err(huffman::HuffmanError::PaddingNotOnes)
    } else {
        Ok(out)
    }
}

#[test]
fn huffman_rfc_strings() {
    assert_eq!(
        hex(&huffman_encode(b"www.example.com")),
        "f1e3c2e5f23a6ba0ab90f4ff"
    );
    assert_eq!(
        huffman_decode(&block("f1e3c2e5f23a6ba0ab90f4ff")).unwrap(),
        b"www.example.com"
    );
    assert_eq!(huffman_decode(&block("a8eb10649cbf")).unwrap(), b"no-cache");
    assert_eq!(huffman_decode(&[]).unwrap(), b"");
}

#[test]
fn huffman_every_symbol_in_every_position() {
    for symbol in 0..=255u8 {
        for before in 0..9 {
            let mut text = vec![b'e'; before];
            text.push(symbol);
            text.extend_from_slice(b"0z\xff");
            let encoded = huffman_encode(&text);
            assert_eq!(huffman_decode(&encoded).unwrap(), text, "symbol {symbol}");
        }
    }
}

#[test]
fn huffman_output_bound_holds_for_the_shortest_codes() {
    for n in 0..64 {
        let text = vec![b'0'; n];
        let encoded = huffman_encode(&text);
        assert_eq!(huffman_decode(&encoded).unwrap(), text);
    }
}

#[test]
fn huffman_matches_the_reference_on_random_input() {
    let codes: CodeMap = huffman::CODES
        .iter()
        .enumerate()
        .map(|(symbol, &code)| (code, symbol))
        .collect();
    let mut rng = fastrand::Rng::with_seed(7541);
    for round in 0..20_000 {
        let len = rng.usize(0..24);
        let input: Vec<u8> = if round % 2 == 0 {
            // Valid strings, sometimes with a corrupted byte.
            let text: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut encoded = huffman_encode(&text);
            if round % 4 == 0 && !encoded.is_empty() {
                let i = rng.usize(..encoded.len());
                encoded[i] = rng.u8(..);
            }
            encoded
        } else {
            // Arbitrary octets, biased to 1 bits (long codes and EOS).
            (0..len).map(|_| rng.u8(..) | rng.u8(..)).collect()
        };
        assert_eq!(
            huffman_decode(&input),
            huffman_reference(&codes, &input),
            "input {}",
            hex(&input)
        );
    }
}

// ---- Encoder ----

#[test]
fn encode_exact_bytes() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let mut dst = BytesMut::new();
    encode_response_head(StatusCode::OK, &headers, &mut dst);
    // :status 200 indexed (8); content-type (31) without indexing; raw value.
    assert_eq!(hex(&dst), "880f100a746578742f706c61696e");

    let mut dst = BytesMut::new();
    encode_response_head(
        StatusCode::from_u16(299).unwrap(),
        &HeaderMap::new(),
        &mut dst,
    );
    assert_eq!(hex(&dst), "0803323939");
}

#[test]
fn encode_indexed_statuses() {
    for (code, byte) in [
        (200, 0x88),
        (204, 0x89),
        (206, 0x8a),
        (304, 0x8b),
        (400, 0x8c),
        (404, 0x8d),
        (500, 0x8e),
    ] {
        let mut dst = BytesMut::new();
        encode_response_head(
            StatusCode::from_u16(code).unwrap(),
            &HeaderMap::new(),
            &mut dst,
        );
        assert_eq!(&dst[..], [byte], "{code}");
    }
}

fn sample_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
    headers.insert(header::SERVER, HeaderValue::from_static("keel"));
    headers.insert(
        header::DATE,
        HeaderValue::from_static("Tue, 05 May 2026 10:00:00 GMT"),
    );
    headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
    headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
    headers.insert("x-foo", HeaderValue::from_static("bar"));
    let mut secret = HeaderValue::from_static("s3cr3t");
    secret.set_sensitive(true);
    headers.insert("x-secret", secret);
    let mut token = HeaderValue::from_static("Bearer abc");
    token.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, token);
    headers.insert(
        "x-long-value",
        HeaderValue::from_str(&"v".repeat(200)).unwrap(),
    );
    headers
}

#[test]
fn encode_round_trips_through_the_decoder() {
    let headers = sample_headers();
    let mut d = Decoder::new(4096);
    for code in [200, 404, 503, 299] {
        let status = StatusCode::from_u16(code).unwrap();
        let mut dst = BytesMut::new();
        encode_response_head(status, &headers, &mut dst);
        let mut want = vec![field(":status", status.as_str())];
        want.extend(headers.iter().map(|(name, value)| Field {
            name: Name::Header(name.clone()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }));
        assert_eq!(decode(&mut d, &hex(&dst)), want, "{code}");
        // Nothing is ever inserted into the peer's table.
        assert_table(&d, &[], 0);
    }
    let mut dst = BytesMut::new();
    encode_trailers(&headers, &mut dst);
    assert_eq!(decode(&mut d, &hex(&dst)).len(), headers.len());
}

/// `encode_response_head(503, sample_headers())`. Python's hpack 4.2.0
/// decoded this block (offline) to exactly `:status: 503` and the sample
/// headers in order, with `x-secret` and `authorization` as never-indexed
/// fields and nothing in its dynamic table.
const HEAD_503: &str = "08033530330f10106170706c69636174696f6e2f6a736f6e0f0d0234320f27046b65656c0f12\
                        1d5475652c203035204d617920323032362031303a30303a303020474d540f2803613d310f\
                        2803623d320005782d666f6f036261721008782d736563726574067333637233741f080a42\
                        656172657220616263000c782d6c6f6e672d76616c75657f49";

#[test]
fn encode_matches_bytes_python_decoded() {
    let mut dst = BytesMut::new();
    encode_response_head(StatusCode::SERVICE_UNAVAILABLE, &sample_headers(), &mut dst);
    let want = format!("{HEAD_503}{}", "76".repeat(200));
    assert_eq!(hex(&dst), want);
}

#[test]
fn encode_trailers_exact_bytes() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let mut dst = BytesMut::new();
    encode_trailers(&trailers, &mut dst);
    // Python's hpack decodes this to grpc-status: 0, grpc-message: ok.
    assert_eq!(
        hex(&dst),
        "000b677270632d7374617475730130000c677270632d6d657373616765026f6b"
    );
}
