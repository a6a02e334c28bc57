//! Data and coded fragments.
