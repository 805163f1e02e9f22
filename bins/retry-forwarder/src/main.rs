//! retry-forwarder
fn main() {}
