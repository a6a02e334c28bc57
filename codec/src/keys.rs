//! Multicast key derivation (TS005) and the TS004 v2 data-block integrity key and MIC.
