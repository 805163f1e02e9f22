//! http-front
