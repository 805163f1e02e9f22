//! dlq-replayer
fn main() {}
