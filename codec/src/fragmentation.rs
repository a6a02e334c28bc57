//! TS004 Fragmented Data Block Transport, v1.0.0 and v2.0.0 (port 201, package id 3).

pub const PORT: u8 = 201;
pub const PACKAGE_ID: u8 = 3;
