//! Prints the RAM the patch applier needs (`core::mem::size_of`) on the build target.
use fuota_codec::patch::apply::{Applier, BorrowedApplier, DetoolsApplier};
use fuota_codec::patch::detools::Bspatch;
use fuota_codec::patch::heatshrink::Decoder;

fn main() {
    println!(
        "Applier<512>        {:>5} bytes",
        core::mem::size_of::<Applier<512>>()
    );
    println!(
        "Applier<256>        {:>5} bytes",
        core::mem::size_of::<Applier<256>>()
    );
    println!(
        "BorrowedApplier     {:>5} bytes (and the window it borrows)",
        core::mem::size_of::<BorrowedApplier<'_>>()
    );
    println!(
        "DetoolsApplier<512> {:>5} bytes",
        core::mem::size_of::<DetoolsApplier<512>>()
    );
    println!(
        "Decoder<512>        {:>5} bytes",
        core::mem::size_of::<Decoder<512>>()
    );
    println!(
        "Bspatch             {:>5} bytes",
        core::mem::size_of::<Bspatch>()
    );
}
