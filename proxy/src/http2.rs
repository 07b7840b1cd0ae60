//! Keel's own HTTP/2 server: the downstream side of every h2c (and, later,
//! h2 over TLS) connection the proxy accepts.
//!
//! One task per connection reads and writes the frames and polls every
//! stream's handler itself: no task per stream, no channels for response
//! bodies (the connection pulls them when the peer's flow-control windows
//! allow), HPACK straight into `http` types. It owns framing, HPACK,
//! stream states, flow control, limits against abusive peers and graceful
//! shutdown; what a request means is the handler's business (`http`
//! module). The upstream side still uses hyper's HTTP/2 client.

pub mod frame;
pub mod hpack;
pub mod server;
