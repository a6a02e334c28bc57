//! TS005 Remote Multicast Setup, v1.0.0 and v2.0.0 (port 200, package id 2).

pub const PORT: u8 = 200;
pub const PACKAGE_ID: u8 = 2;
