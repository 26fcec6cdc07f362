//! One converge pass: observe → plan → apply → verify.
//!
//! STUB.
