//! The FUOTA device agent (`no_std`, no heap): the sans-IO agent, its flash storage and the
//! MCUboot update; it re-exports the codec it is built on, so firmware depends on one
//! crate.
#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(any(test, feature = "sim-flash"))]
extern crate std;

pub use fuota_codec as codec;

pub mod agent;
pub mod clock;
pub mod frag_session;
pub mod frag_store;
pub mod hooks;
pub mod install;
pub mod journal;
pub mod mcuboot;
pub mod multicast;
pub mod rng;
#[cfg(feature = "sim-flash")]
pub mod sim_flash;
pub mod slot;
