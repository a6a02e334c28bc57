#![doc = include_str!("../README.md")]

pub mod base64_field;
pub mod bridge;
pub mod counters;
pub mod datarate;
#[cfg(feature = "driver")]
pub mod driver;
pub mod eui;
mod json_object;
pub mod mqtt;
pub mod semtech;
pub mod timestamp;

pub use bridge::{Bridge, Config, Output, Session};
pub use counters::Counters;
pub use eui::Eui64;
pub use semtech::PROTOCOL_VERSION;
