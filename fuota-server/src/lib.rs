#![doc = include_str!("../README.md")]
//! The FUOTA server library: cutting data blocks into fragments (and rebuilding them, for
//! checks). The patch maker, planner and campaign engine land with their issues.

pub mod fragmentation;
