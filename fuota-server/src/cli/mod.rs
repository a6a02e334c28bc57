//! One module per `fuota` subcommand; each is a thin shell over the library.

#[cfg(feature = "service")]
pub mod access;
#[cfg(feature = "service")]
pub mod campaign;
#[cfg(feature = "service")]
pub mod client;
pub mod frag;
pub mod keys;
pub mod patch;
pub mod plan;
#[cfg(feature = "service")]
pub mod rollout;
#[cfg(feature = "service")]
pub mod server;
