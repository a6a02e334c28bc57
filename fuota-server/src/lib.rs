#![doc = include_str!("../README.md")]
//! The FUOTA server library: making signed patches ([`patch`]), cutting data blocks into
//! fragments (and rebuilding them, for checks). The planner and campaign engine land with
//! their issues.

pub mod engine;
pub mod fragmentation;
pub mod patch;
pub mod plan;
#[cfg(feature = "service")]
pub mod service;
