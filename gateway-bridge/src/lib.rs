#![doc = include_str!("../README.md")]
//! Bridges Semtech's UDP packet-forwarder protocol and ChirpStack Gateway Bridge MQTT topics.
//! The protocol handling lands with the gateway-bridge issue.

/// Version byte of the Semtech UDP packet-forwarder protocol this bridge speaks.
pub const PROTOCOL_VERSION: u8 = 2;
