//! One module per `fuota` subcommand; each is a thin shell over the library.

pub mod frag;
pub mod keys;
pub mod patch;
pub mod plan;
