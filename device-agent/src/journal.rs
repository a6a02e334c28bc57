//! The agent's durable state: an append-only log of checksummed records in a flash region of
//! two or more sectors; the valid record with the highest sequence number is the state.
//!
//! Records live in fixed slots of `SLOT` bytes (a multiple of the write size):
//! `magic "FJ" | seq u32 | len u16 | payload | crc32 (over magic..payload)`, little-endian,
//! the rest of the slot 0xFF. A slot is free when it reads all 0xFF. Appending writes the next
//! free slot after the newest record; when a sector is full the next one is erased first.
//! The newest record is never in the sector being erased, so a power cut during any write or
//! erase leaves either the old state or the new one: a torn record fails its CRC and is
//! skipped, a torn erase only damages records older than the newest.

use embedded_storage::nor_flash::NorFlash;

use crate::slot::{is_erased, Region, WordWriter, MAX_WRITE_SIZE};

const MAGIC: [u8; 2] = *b"FJ";
const HEADER: usize = 8;
const TRAILER: usize = 4;

/// CRC-32 (IEEE 802.3, reflected, as zlib).
pub fn crc32(data: &[u8]) -> u32 {
    !crc32_update(!0, data)
}

/// Feeds `data` to a CRC-32 register (start with `!0`, finish with `!`).
pub(crate) fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A record on its way to flash, with its running CRC; the first flash error is kept.
struct RecordWriter<'f, F: NorFlash> {
    flash: &'f mut F,
    words: WordWriter,
    crc: u32,
    written: usize,
    error: Option<F::Error>,
}

impl<F: NorFlash> RecordWriter<'_, F> {
    fn put(&mut self, bytes: &[u8]) {
        self.crc = crc32_update(self.crc, bytes);
        self.written += bytes.len();
        if self.error.is_none() {
            self.error = self.words.write(self.flash, bytes).err();
        }
    }

    /// By reference: the writer is not moved (copied) into the call.
    fn finish(&mut self) -> Result<(), F::Error> {
        if self.error.is_none() {
            self.error = self.words.finish(self.flash).err();
        }
        self.error.take().map_or(Ok(()), Err)
    }
}

/// Why the journal failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalError<E> {
    Flash(E),
    /// The region is not whole sectors, has fewer than two, `SLOT` does not fit the flash's
    /// geometry, or the write size is above [`crate::slot::MAX_WRITE_SIZE`].
    BadLayout,
    /// The payload is longer than a slot holds.
    TooLong {
        len: usize,
        max: usize,
    },
    /// [`Journal::append_with`] was given another number of bytes than announced.
    LengthMismatch {
        expected: usize,
        got: usize,
    },
}

/// Where the newest record is, after a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    slot: u32,
    seq: u32,
}

/// A journal just opened, and its newest record's payload (`None` when it is empty).
pub type Opened<'b, const SLOT: usize> = (Journal<SLOT>, Option<&'b [u8]>);

/// The journal over `region`; `SLOT` bytes per record slot.
#[derive(Debug)]
pub struct Journal<const SLOT: usize> {
    region: Region,
    head: Option<Head>,
}

impl<const SLOT: usize> Journal<SLOT> {
    /// Largest payload a record holds.
    pub const MAX_PAYLOAD: usize = SLOT - HEADER - TRAILER;

    fn slots_per_sector<F: NorFlash>() -> u32 {
        (F::ERASE_SIZE / SLOT) as u32
    }

    fn slot_count<F: NorFlash>(&self) -> u32 {
        self.region.len / F::ERASE_SIZE as u32 * Self::slots_per_sector::<F>()
    }

    fn slot_offset<F: NorFlash>(&self, slot: u32) -> u32 {
        let per = Self::slots_per_sector::<F>();
        self.region.offset + slot / per * F::ERASE_SIZE as u32 + slot % per * SLOT as u32
    }

    /// Opens the journal: scans every slot for the newest valid record.
    pub fn open<F: NorFlash>(
        flash: &mut F,
        region: Region,
    ) -> Result<Self, JournalError<F::Error>> {
        Self::scan(flash, region, &mut [0u8; SLOT])
    }

    /// [`Journal::open`] and [`Journal::read`] in one: `buf` is the scan's buffer, then
    /// holds the newest record (no second slot buffer on the stack).
    pub fn open_read<'b, F: NorFlash>(
        flash: &mut F,
        region: Region,
        buf: &'b mut [u8; SLOT],
    ) -> Result<Opened<'b, SLOT>, JournalError<F::Error>> {
        let journal = Self::scan(flash, region, buf)?;
        let payload = journal.read(flash, buf)?;
        Ok((journal, payload))
    }

    fn scan<F: NorFlash>(
        flash: &mut F,
        region: Region,
        buf: &mut [u8; SLOT],
    ) -> Result<Self, JournalError<F::Error>> {
        let sector = F::ERASE_SIZE as u32;
        if !region.is_aligned(sector)
            || region.len / sector < 2
            || SLOT < HEADER + TRAILER + 1
            || SLOT % F::WRITE_SIZE != 0
            || F::WRITE_SIZE > MAX_WRITE_SIZE
            || SLOT > F::ERASE_SIZE
        {
            return Err(JournalError::BadLayout);
        }
        let mut journal = Self { region, head: None };
        for slot in 0..journal.slot_count::<F>() {
            flash
                .read(journal.slot_offset::<F>(slot), buf)
                .map_err(JournalError::Flash)?;
            if let Some((seq, _)) = Self::decode(buf) {
                if journal.head.is_none_or(|h| seq > h.seq) {
                    journal.head = Some(Head { slot, seq });
                }
            }
        }
        Ok(journal)
    }

    fn decode(buf: &[u8; SLOT]) -> Option<(u32, &[u8])> {
        if buf[..2] != MAGIC {
            return None;
        }
        let seq = u32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]);
        let len = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
        if len > Self::MAX_PAYLOAD {
            return None;
        }
        let end = HEADER + len;
        let crc = u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]);
        (crc32(&buf[..end]) == crc).then(|| (seq, &buf[HEADER..end]))
    }

    /// Reads the newest record's payload into `out`; `Ok(None)` for an empty journal.
    pub fn read<'b, F: NorFlash>(
        &self,
        flash: &mut F,
        out: &'b mut [u8; SLOT],
    ) -> Result<Option<&'b [u8]>, JournalError<F::Error>> {
        let Some(head) = self.head else {
            return Ok(None);
        };
        flash
            .read(self.slot_offset::<F>(head.slot), out)
            .map_err(JournalError::Flash)?;
        // A record that was valid at open and now is not means the flash changed under us;
        // say "empty" rather than hand back garbage.
        Ok(Self::decode(out).map(|(_, payload)| payload))
    }

    /// Sequence number of the newest record.
    pub fn seq(&self) -> Option<u32> {
        self.head.map(|h| h.seq)
    }

    fn is_free<F: NorFlash>(
        &self,
        flash: &mut F,
        slot: u32,
    ) -> Result<bool, JournalError<F::Error>> {
        is_erased(flash, self.slot_offset::<F>(slot), SLOT).map_err(JournalError::Flash)
    }

    /// Makes `payload` the new state. Durable when this returns `Ok`.
    pub fn append<F: NorFlash>(
        &mut self,
        flash: &mut F,
        payload: &[u8],
    ) -> Result<(), JournalError<F::Error>> {
        self.append_with(flash, payload.len(), |out| out(payload))
    }

    /// Makes a payload of `len` bytes the new state; `produce` hands its bytes, in order and
    /// in pieces of any size, to the function it is given. They go to flash as they come (no
    /// buffer of a whole record). Durable when this returns `Ok`; if `produce` gives other
    /// than `len` bytes, the record is left without its CRC (invalid) and the state unchanged.
    pub fn append_with<F: NorFlash>(
        &mut self,
        flash: &mut F,
        len: usize,
        produce: impl FnOnce(&mut dyn FnMut(&[u8])),
    ) -> Result<(), JournalError<F::Error>> {
        if len > Self::MAX_PAYLOAD {
            return Err(JournalError::TooLong {
                len,
                max: Self::MAX_PAYLOAD,
            });
        }
        let count = self.slot_count::<F>();
        let per = Self::slots_per_sector::<F>();
        let seq = self.head.map_or(0, |h| h.seq.wrapping_add(1));
        // A free slot after the head in the head's sector; else the next sector, erased (the
        // head's sector is never erased, so the current state survives a cut).
        let mut target = None;
        if let Some(h) = self.head {
            let sector_end = (h.slot / per + 1) * per;
            for slot in h.slot + 1..sector_end {
                if self.is_free(flash, slot)? {
                    target = Some(slot);
                    break;
                }
            }
        }
        let slot = match target {
            Some(slot) => slot,
            None => {
                // The sector after the head's, wrapping round (a compare, not a division
                // that could panic).
                let sector = self.head.map_or(0, |h| h.slot / per + 1);
                let sector = if sector < count / per { sector } else { 0 };
                let from = self.region.offset + sector * F::ERASE_SIZE as u32;
                flash
                    .erase(from, from + F::ERASE_SIZE as u32)
                    .map_err(JournalError::Flash)?;
                sector * per
            }
        };
        let Some(words) = WordWriter::new::<F>(self.slot_offset::<F>(slot)) else {
            return Err(JournalError::BadLayout);
        };
        let mut w = RecordWriter {
            flash,
            words,
            crc: !0,
            written: 0,
            error: None,
        };
        // The header in one piece (the word writer makes the same flash writes either way):
        // magic, sequence number and length, little-endian, packed in one u64 (fewer byte
        // moves than an array of the eight bytes).
        let header = u64::from(u16::from_le_bytes(MAGIC))
            | u64::from(seq) << 16
            | u64::from(len as u16) << 48;
        w.put(&header.to_le_bytes());
        produce(&mut |bytes| w.put(bytes));
        let got = w.written - HEADER;
        // Of the wrong length, the record is left without its CRC: invalid, the state
        // unchanged. Either way it is finished by the one call below.
        if got == len {
            let crc = !w.crc;
            w.put(&crc.to_le_bytes());
        }
        w.finish().map_err(JournalError::Flash)?;
        if got != len {
            return Err(JournalError::LengthMismatch { expected: len, got });
        }
        self.head = Some(Head { slot, seq });
        Ok(())
    }
}

#[cfg(all(test, feature = "sim-flash"))]
mod tests {
    use super::*;
    use crate::sim_flash::SimFlash;

    type Flash = SimFlash<8, 256>;
    const REGION: Region = Region {
        offset: 256,
        len: 512,
    };

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn newest_record_wins_across_sectors_and_reopens() {
        let mut flash = Flash::new(4);
        let mut j = Journal::<64>::open(&mut flash, REGION).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(j.read(&mut flash, &mut out).unwrap(), None);
        for i in 0..20u32 {
            j.append(&mut flash, &i.to_le_bytes()).unwrap();
        }
        let j = Journal::<64>::open(&mut flash, REGION).unwrap();
        assert_eq!(
            j.read(&mut flash, &mut out).unwrap(),
            Some(&19u32.to_le_bytes()[..])
        );
        assert_eq!(j.seq(), Some(19));
        // Nothing outside the region was touched.
        assert!(flash.as_bytes()[..256].iter().all(|&b| b == 0xff));
        assert!(flash.as_bytes()[768..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn open_read_finds_what_open_and_read_find() {
        let mut flash = Flash::new(4);
        let mut buf = [0u8; 64];
        let (mut j, none) = Journal::<64>::open_read(&mut flash, REGION, &mut buf).unwrap();
        assert_eq!(none, None);
        for i in 0..7u32 {
            j.append(&mut flash, &i.to_le_bytes()).unwrap();
        }
        let (j, newest) = Journal::<64>::open_read(&mut flash, REGION, &mut buf).unwrap();
        assert_eq!(newest, Some(&6u32.to_le_bytes()[..]));
        assert_eq!(j.seq(), Some(6));
    }

    /// A power cut at every write or erase of a run of appends: after the reboot the journal
    /// holds either the last completed state or the one being written, never anything else.
    #[test]
    fn every_power_cut_leaves_old_or_new_state() {
        let appends = 30u32;
        let mut total_ops = 0;
        {
            let mut flash = Flash::new(4);
            let mut j = Journal::<64>::open(&mut flash, REGION).unwrap();
            for i in 0..appends {
                j.append(&mut flash, &i.to_le_bytes()).unwrap();
            }
            total_ops = total_ops.max(flash.operations());
        }
        for k in 0..total_ops {
            let mut flash = Flash::new(4);
            flash.cut_power_after(k);
            let mut done: Option<u32> = None;
            {
                let mut j = Journal::<64>::open(&mut flash, REGION).unwrap();
                for i in 0..appends {
                    if j.append(&mut flash, &i.to_le_bytes()).is_err() {
                        break;
                    }
                    done = Some(i);
                }
            }
            flash.reboot();
            let mut j = Journal::<64>::open(&mut flash, REGION).unwrap();
            let mut out = [0u8; 64];
            let got = j
                .read(&mut flash, &mut out)
                .unwrap()
                .map(|p| u32::from_le_bytes(p.try_into().unwrap()));
            let next = done.map_or(0, |d| d + 1);
            assert!(
                got == done || got == Some(next),
                "cut after {k}: got {got:?}, last done {done:?}"
            );
            // And the journal keeps working after the cut.
            j.append(&mut flash, &999u32.to_le_bytes()).unwrap();
            let j = Journal::<64>::open(&mut flash, REGION).unwrap();
            assert_eq!(
                j.read(&mut flash, &mut out).unwrap(),
                Some(&999u32.to_le_bytes()[..]),
                "cut after {k}"
            );
        }
    }

    /// Records larger than the staging buffer, produced in pieces, at every power-cut point:
    /// old or new state, never a mix.
    #[test]
    fn records_in_pieces_survive_every_power_cut() {
        let record =
            |i: u32| -> std::vec::Vec<u8> { (0..100u32).map(|b| (b * 7 + i) as u8).collect() };
        let produce = |i: u32| {
            move |out: &mut dyn FnMut(&[u8])| {
                let r = record(i);
                out(&r[..3]);
                out(&r[3..70]);
                out(&r[70..]);
            }
        };
        let appends = 12u32;
        let total_ops = {
            let mut flash = Flash::new(4);
            let mut j = Journal::<128>::open(&mut flash, REGION).unwrap();
            for i in 0..appends {
                j.append_with(&mut flash, 100, produce(i)).unwrap();
            }
            flash.operations()
        };
        for k in 0..total_ops {
            let mut flash = Flash::new(4);
            flash.cut_power_after(k);
            let mut done: Option<u32> = None;
            {
                let mut j = Journal::<128>::open(&mut flash, REGION).unwrap();
                for i in 0..appends {
                    if j.append_with(&mut flash, 100, produce(i)).is_err() {
                        break;
                    }
                    done = Some(i);
                }
            }
            flash.reboot();
            let j = Journal::<128>::open(&mut flash, REGION).unwrap();
            let mut out = [0u8; 128];
            let got = j.read(&mut flash, &mut out).unwrap().map(|p| p.to_vec());
            let next = done.map_or(0, |d| d + 1);
            assert!(
                got == done.map(record) || got == Some(record(next)),
                "cut after {k}: last done {done:?}"
            );
        }
    }

    #[test]
    fn a_record_of_the_wrong_length_is_refused_and_the_state_kept() {
        let mut flash = Flash::new(4);
        let mut j = Journal::<128>::open(&mut flash, REGION).unwrap();
        j.append(&mut flash, b"good").unwrap();
        let short = j.append_with(&mut flash, 10, |out| out(b"only six"));
        assert_eq!(
            short,
            Err(JournalError::LengthMismatch {
                expected: 10,
                got: 8
            })
        );
        let j = Journal::<128>::open(&mut flash, REGION).unwrap();
        let mut out = [0u8; 128];
        assert_eq!(j.read(&mut flash, &mut out).unwrap(), Some(&b"good"[..]));
    }
}
