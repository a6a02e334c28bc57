//! `fuota-sim`: the radio simulator. The discrete-event core and scenarios land with the
//! campaign-engine issue; until then the binary only reports its version.

use clap::Parser;

/// Discrete-event LoRaWAN FUOTA simulator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "fuota-sim {}: no scenario runner yet",
        env!("CARGO_PKG_VERSION")
    );
}
