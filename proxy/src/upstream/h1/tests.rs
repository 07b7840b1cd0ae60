//! The HTTP/1.1 client against scripted servers on loopback.
