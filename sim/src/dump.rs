//! `--dump-flash DEVICE DIR`: a device's slots as files, to inspect or verify with imgtool.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::backend::Backend;
use crate::scenario::Built;
use crate::world::World;

/// Writes `primary.bin` and `secondary.bin` of device `who` (DevEUI in hex, or index).
pub fn dump_flash<B: Backend>(
    world: &World<B>,
    _built: &Built,
    who: &str,
    dir: &Path,
) -> Result<()> {
    let index = match u64::from_str_radix(who.trim_start_matches("0x"), 16) {
        Ok(eui) if who.len() > 6 => world.device_index(eui),
        _ => who
            .parse::<usize>()
            .ok()
            .filter(|&i| i < world.devices.len()),
    }
    .ok_or_else(|| {
        anyhow!(
            "no device {who:?} (give a DevEUI in hex or an index below {})",
            world.devices.len()
        )
    })?;
    let d = &world.devices[index];
    let (primary, secondary) = d.primary_and_secondary();
    std::fs::create_dir_all(dir)?;
    let flash = d.flash.borrow();
    for (name, slot) in [("primary.bin", primary), ("secondary.bin", secondary)] {
        let bytes = flash
            .read_vec(slot.offset, slot.len as usize)
            .map_err(|e| anyhow!("reading the {name} slot: {e}"))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
