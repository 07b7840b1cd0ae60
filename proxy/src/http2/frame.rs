//! HTTP/2 framing (RFC 9113 §4 and §6): the 9-octet frame header, the
//! frame types and flags the server handles, error codes, settings, and
//! writers for the frames the server sends. Reading a frame's payload is
//! the connection's job (`server`); this module only knows the layout.

use bytes::{BufMut, BytesMut};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub const HEAD_LEN: usize = 9;

/// The protocol's default and minimum SETTINGS_MAX_FRAME_SIZE.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The initial flow-control window of streams and connections.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY.
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING).
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
    /// PADDED (DATA, HEADERS).
    pub const PADDED: u8 = 0x8;
    /// PRIORITY (HEADERS).
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers.
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (RFC 9113 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// NO_ERROR.
    NoError = 0x0,
    /// PROTOCOL_ERROR.
    Protocol = 0x1,
    /// INTERNAL_ERROR.
    Internal = 0x2,
    /// FLOW_CONTROL_ERROR.
    FlowControl = 0x3,
    /// STREAM_CLOSED.
    StreamClosed = 0x5,
    /// FRAME_SIZE_ERROR.
    FrameSize = 0x6,
    /// REFUSED_STREAM.
    RefusedStream = 0x7,
    /// CANCEL.
    Cancel = 0x8,
    /// COMPRESSION_ERROR.
    Compression = 0x9,
    /// ENHANCE_YOUR_CALM.
    EnhanceYourCalm = 0xb,
}

impl Reason {
    /// The code's name, as the RFC spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoError => "NO_ERROR",
            Self::Protocol => "PROTOCOL_ERROR",
            Self::Internal => "INTERNAL_ERROR",
            Self::FlowControl => "FLOW_CONTROL_ERROR",
            Self::StreamClosed => "STREAM_CLOSED",
            Self::FrameSize => "FRAME_SIZE_ERROR",
            Self::RefusedStream => "REFUSED_STREAM",
            Self::Cancel => "CANCEL",
            Self::Compression => "COMPRESSION_ERROR",
            Self::EnhanceYourCalm => "ENHANCE_YOUR_CALM",
        }
    }
}

/// A code received from the peer, named when known.
pub fn code_name(code: u32) -> String {
    let known = [
        (0x0, "NO_ERROR"),
        (0x1, "PROTOCOL_ERROR"),
        (0x2, "INTERNAL_ERROR"),
        (0x3, "FLOW_CONTROL_ERROR"),
        (0x4, "SETTINGS_TIMEOUT"),
        (0x5, "STREAM_CLOSED"),
        (0x6, "FRAME_SIZE_ERROR"),
        (0x7, "REFUSED_STREAM"),
        (0x8, "CANCEL"),
        (0x9, "COMPRESSION_ERROR"),
        (0xa, "CONNECT_ERROR"),
        (0xb, "ENHANCE_YOUR_CALM"),
        (0xc, "INADEQUATE_SECURITY"),
        (0xd, "HTTP_1_1_REQUIRED"),
    ];
    known.iter().find(|(c, _)| *c == code).map_or_else(
        || format!("error code {code:#x}"),
        |(_, n)| (*n).to_string(),
    )
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared).
    pub stream: u32,
}

impl Head {
    /// Parses the first [`HEAD_LEN`] octets of `b`.
    pub fn parse(b: &[u8; HEAD_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// Whether `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Appends a frame header.
pub fn put_head(dst: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    dst.put_slice(&[len[1], len[2], len[3], kind, flags]);
    dst.put_u32(stream & MAX_WINDOW);
}

/// Appends a SETTINGS frame with `values`.
pub fn put_settings(dst: &mut BytesMut, values: &[(u16, u32)]) {
    put_head(dst, values.len() * 6, kind::SETTINGS, 0, 0);
    for (id, v) in values {
        dst.put_u16(*id);
        dst.put_u32(*v);
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn put_settings_ack(dst: &mut BytesMut) {
    put_head(dst, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Appends a PING (or its acknowledgement).
pub fn put_ping(dst: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    put_head(dst, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    dst.put_slice(&payload);
}

/// Appends a WINDOW_UPDATE.
pub fn put_window_update(dst: &mut BytesMut, stream: u32, increment: u32) {
    put_head(dst, 4, kind::WINDOW_UPDATE, 0, stream);
    dst.put_u32(increment & MAX_WINDOW);
}

/// Appends a RST_STREAM.
pub fn put_rst(dst: &mut BytesMut, stream: u32, reason: Reason) {
    put_head(dst, 4, kind::RST_STREAM, 0, stream);
    dst.put_u32(reason as u32);
}

/// Appends a GOAWAY with `debug` as its debug data.
pub fn put_goaway(dst: &mut BytesMut, last_stream: u32, reason: Reason, debug: &[u8]) {
    put_head(dst, 8 + debug.len(), kind::GOAWAY, 0, 0);
    dst.put_u32(last_stream & MAX_WINDOW);
    dst.put_u32(reason as u32);
    dst.put_slice(debug);
}

/// Appends a header block as HEADERS plus CONTINUATION frames of at most
/// `max_frame` octets each.
pub fn put_header_block(
    dst: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let end = if end_stream { flag::END_STREAM } else { 0 };
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let mut rest = chunks.peekable();
    let first_flags = end
        | if rest.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
    put_head(dst, first.len(), kind::HEADERS, first_flags, stream);
    dst.put_slice(first);
    while let Some(chunk) = rest.next() {
        let flags = if rest.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        put_head(dst, chunk.len(), kind::CONTINUATION, flags, stream);
        dst.put_slice(chunk);
    }
}

/// Appends DATA frames carrying `data`, each at most `max_frame` octets;
/// END_STREAM on the last when `end_stream`.
pub fn put_data(dst: &mut BytesMut, stream: u32, data: &[u8], end_stream: bool, max_frame: usize) {
    if data.is_empty() {
        put_head(
            dst,
            0,
            kind::DATA,
            if end_stream { flag::END_STREAM } else { 0 },
            stream,
        );
        return;
    }
    let mut chunks = data.chunks(max_frame.max(1)).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last && end_stream {
            flag::END_STREAM
        } else {
            0
        };
        put_head(dst, chunk.len(), kind::DATA, flags, stream);
        dst.put_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_clear_the_reserved_bit() {
        let mut b = BytesMut::new();
        put_head(
            &mut b,
            0x01_0203,
            kind::HEADERS,
            flag::END_HEADERS,
            0x8000_0005,
        );
        let head = Head::parse(b[..HEAD_LEN].try_into().expect("nine octets"));
        assert_eq!(
            head,
            Head {
                len: 0x01_0203,
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream: 5
            }
        );
    }

    #[test]
    fn a_large_header_block_is_split_into_continuations() {
        let mut b = BytesMut::new();
        put_header_block(&mut b, 3, &[7; 10], true, 4);
        let frames: Vec<Head> = [0, 13, 26]
            .iter()
            .map(|&at| Head::parse(b[at..at + HEAD_LEN].try_into().expect("nine octets")))
            .collect();
        assert_eq!(b.len(), 3 * HEAD_LEN + 10);
        assert_eq!(
            frames
                .iter()
                .map(|h| (h.kind, h.flags, h.len))
                .collect::<Vec<_>>(),
            [
                (kind::HEADERS, flag::END_STREAM, 4),
                (kind::CONTINUATION, 0, 4),
                (kind::CONTINUATION, flag::END_HEADERS, 2)
            ]
        );
    }

    #[test]
    fn data_is_split_by_frame_size_with_end_stream_on_the_last() {
        let mut b = BytesMut::new();
        put_data(&mut b, 1, &[1; 5], true, 3);
        let first = Head::parse(b[..HEAD_LEN].try_into().expect("nine octets"));
        let second = Head::parse(b[12..12 + HEAD_LEN].try_into().expect("nine octets"));
        assert_eq!((first.len, first.flags), (3, 0));
        assert_eq!((second.len, second.flags), (2, flag::END_STREAM));
    }
}
