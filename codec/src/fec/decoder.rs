//! The TS004 decoder.
