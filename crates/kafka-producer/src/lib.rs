//! kafka-producer
