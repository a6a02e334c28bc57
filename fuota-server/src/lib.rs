#![doc = include_str!("../README.md")]
//! The FUOTA server library: making signed patches ([`patch`]), cutting data blocks into
//! fragments (and rebuilding them, for checks), the campaign planner ([`plan`]) and the
//! sans-IO campaign engine ([`engine`]); with the `service` feature, the service that runs
//! campaigns through ChirpStack (`service`).

pub mod engine;
pub mod fragmentation;
pub mod patch;
pub mod plan;
pub mod rollout;
#[cfg(feature = "service")]
pub mod service;
