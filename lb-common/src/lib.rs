//! What the XDP program and the agent must agree on byte for byte.
//!
//! Everything here is `#[repr(C)]` with fixed-width fields and explicit padding, and
//! every struct carries a compile-time size assert. Byte order is in the field name:
//! `_be` fields hold network-order values exactly as they sit in the packet.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod hash;
pub mod maglev;
pub mod maps;
pub mod stats;

pub use maps::*;
