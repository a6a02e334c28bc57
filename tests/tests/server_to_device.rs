//! The server's fragments, through the air as DataFragment frames, into the device's decoder
//! over a flash-like store that refuses to write a slot twice without an erase.

use fuota_codec::fec::decoder::Decoder;
use fuota_codec::fec::{FragmentStore, Progress};
use fuota_device_agent::codec::fragmentation::{self, Downlink};
use fuota_device_agent::codec::Version;
use fuota_server::fragmentation::{encode_block, Code};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// NOR-flash-like: a slot is erased to 0xff before each rewrite, and erases are counted.
struct Flash {
    bytes: Vec<u8>,
    frag_size: usize,
    erases: usize,
}

impl FragmentStore for Flash {
    type Error = &'static str;

    fn read_slot(&mut self, slot: usize, buf: &mut [u8]) -> Result<(), Self::Error> {
        let start = slot * self.frag_size;
        buf.copy_from_slice(
            self.bytes
                .get(start..start + buf.len())
                .ok_or("read out of range")?,
        );
        Ok(())
    }

    fn write_slot(&mut self, slot: usize, data: &[u8]) -> Result<(), Self::Error> {
        let start = slot * self.frag_size;
        let dst = self
            .bytes
            .get_mut(start..start + data.len())
            .ok_or("write out of range")?;
        if dst.iter().any(|b| *b != 0xff) {
            dst.fill(0xff);
            self.erases += 1;
        }
        dst.copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn server_fragments_decode_on_the_device() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for version in [Version::V1, Version::V2] {
        let mut image = vec![0u8; 30_000];
        rng.fill_bytes(&mut image);
        let frag_size = 112;
        let (layout, frames) =
            encode_block(&image, frag_size, 60, Code::Ts004(version), 1).unwrap();
        let m = layout.nb_frag;
        let mut flash = Flash {
            bytes: vec![0xff; m * frag_size],
            frag_size,
            erases: 0,
        };
        let mut workspace = vec![0u8; Decoder::workspace_len(m, 64, frag_size)];
        let mut decoder = Decoder::new(version, m, frag_size, 64, &mut workspace).unwrap();
        let mut progress = decoder.progress();
        for frame in frames.iter().filter(|_| rng.gen_bool(0.85)) {
            let mut cmds = fragmentation::downlinks(version, frame);
            let Some(Ok(Downlink::DataFragment(f))) = cmds.next() else {
                panic!("not a DataFragment")
            };
            assert_eq!(f.frag_index, 1);
            progress = decoder
                .push(&mut flash, usize::from(f.n), f.payload)
                .unwrap();
            if progress == Progress::Complete {
                break;
            }
        }
        assert_eq!(progress, Progress::Complete);
        assert_eq!(&flash.bytes[..image.len()], &image[..]);
        assert!(flash.bytes[image.len()..].iter().all(|b| *b == 0));
    }
}
