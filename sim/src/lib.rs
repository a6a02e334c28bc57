#![doc = include_str!("../README.md")]
//! The FUOTA simulator: a deterministic discrete-event world of LoRaWAN devices and gateways
//! that runs the real device agent (`fuota-device-agent`) and the real campaign engine
//! (`fuota-server`'s engine) in virtual time.

pub mod backend;
pub mod bootloader;
pub mod device;
pub mod dump;
pub mod firmware;
pub mod flash;
pub mod live;
pub mod mac;
pub mod plots;
pub mod radio;
pub mod report;
pub mod rollout;
pub mod run;
pub mod scenario;
pub mod sweep;
pub mod world;
