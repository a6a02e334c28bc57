//! Byte layouts of the LoRa Alliance application-layer packages used for FUOTA, their keys,
//! and the TS004 fragment FEC.
//!
//! - [`clock_sync`]: TS003 Application Layer Clock Synchronization (port 202, package id 1).
//! - [`fragmentation`]: TS004 Fragmented Data Block Transport (port 201, package id 3).
//! - [`multicast_setup`]: TS005 Remote Multicast Setup (port 200, package id 2).
//! - [`keys`]: multicast key derivation and the TS004 v2 data-block MIC.
//! - [`aes128`], [`aes_cmac`], [`sha256`]: the AES-128 cipher, AES-CMAC and SHA-256 those
//!   and the patch applier use, written small for the device.
//! - [`fec`]: the TS004 parity code (encoder and a flash-friendly decoder), and an optional
//!   Reed-Solomon mode.
//! - [`patch`]: the signed patch container and its streaming applier (heatshrink + bspatch).
//!
//! Every parser takes arbitrary bytes and never panics; every builder writes into a buffer the
//! caller owns. Nothing here allocates unless the `alloc` feature is on.
#![doc = include_str!("../README.md")]
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod aes128;
pub mod aes_cmac;
pub mod agent_report;
pub mod clock_sync;
pub mod error;
pub mod fec;
pub mod firmware_management;
pub mod fragmentation;
pub mod keys;
pub mod multicast_setup;
pub mod package;
pub mod patch;
pub mod sha256;
mod wire;

pub use error::{Error, ErrorKind};
pub use package::{Direction, PackageId, Version};
