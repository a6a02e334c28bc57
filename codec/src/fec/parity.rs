//! The TS004 parity rows.
