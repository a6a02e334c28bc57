//! Measures the agent's worst stack depth on a Cortex-M4F by stack painting, over a complete
//! update: QEMU's mps2-an386 board, semihosting for the input, the report and the exit status.
//!
//! ```text
//! cargo build --profile size -p fuota-device-agent --features qemu-mps2 \
//!     --example stack-probe --target thumbv7em-none-eabihf
//! qemu-system-arm -M mps2-an386 -nodefaults -display none \
//!     -semihosting-config enable=on,target=native,arg=stack-probe,arg=INPUT \
//!     -kernel target/thumbv7em-none-eabihf/size/examples/stack-probe
//! ```
//!
//! `tests/tests/stack_depth.rs` makes INPUT with the server's code (a signed patch between two
//! MCUboot images, its TS004 fragments with losses), builds this and runs it. INPUT, all
//! little-endian:
//!
//! | field | bytes |
//! |---|---|
//! | magic `FUOTASTK` | 8 |
//! | patch signing key, SEC1 uncompressed | 65 |
//! | McKEKey, DataBlockIntKey | 16 + 16 |
//! | new image: version (major, minor, revision u16, build u32), length u32, SHA-256 | 8 + 4 + 32 |
//! | primary (running) image: length u32, bytes | 4 + n |
//! | downlinks to the end, each: phase (0 setup, 1 fragments), time ms u32, port, via (0xff unicast, else the multicast group), length u16, bytes | 10 + n |
//!
//! Each call into the agent is measured alone: the free stack below the driver's stack
//! pointer is painted, the call runs, and the lowest word no longer painted is its high-water
//! mark. The agent is called through function pointers the optimizer cannot see through, so
//! that none of it is inlined into the driver's frame. The maxima are printed per kind of call,
//! `stack-probe: stack KIND call=N total=M`: `new` (Agent::new), `setup` (handle_downlink of
//! clock sync, multicast group, class C session and fragmentation session setup), `fragment`
//! (handle_downlink of DataFragments: decoding, with lost ones recovered), `complete` (the
//! DataFragment that completes the block: its MIC check), `timeout` (handle_timeout before
//! that: the class C start), `install`
//! (handle_timeout once the block is complete: signature, apply, swap request), `poll`
//! (poll_timeout, poll_uplink, poll_event), then `max`. `call` is the bytes below the driver's
//! stack pointer, `total` the bytes below the initial stack pointer (the probe's own frames
//! included). The run fails unless the update went through and the secondary slot holds the
//! expected image.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![allow(unsafe_code)]

#[cfg(not(target_os = "none"))]
fn main() {
    // The probe only means something on the target; on the host it builds as a stub.
}

#[cfg(target_os = "none")]
mod probe {
    use core::arch::asm;
    use core::cell::RefCell;
    use core::hint::black_box;
    use core::mem::MaybeUninit;
    use core::panic::PanicInfo;
    use core::ptr::{addr_of, addr_of_mut};

    use cortex_m_rt::{entry, exception, ExceptionFrame};
    use cortex_m_semihosting::{debug, hprintln, nr, syscall, syscall1};
    use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
    use fuota_device_agent::agent::{Agent, AgentConfig, AgentError, Event, Layout};
    use fuota_device_agent::clock::Millis;
    use fuota_device_agent::codec::fec::decoder::DecoderState;
    use fuota_device_agent::codec::keys::Key128;
    use fuota_device_agent::codec::patch::container::ImageVersion;
    use fuota_device_agent::codec::patch::VerifyingKey;
    use fuota_device_agent::codec::sha256::Sha256;
    use fuota_device_agent::codec::Version;
    use fuota_device_agent::frag_session::{FragAreas, Via};
    use fuota_device_agent::multicast::{McEvent, RadioLimits};
    use fuota_device_agent::slot::Region;

    /// The agent under test: its type parameters are spelled here only.
    type ProbeAgent = Agent<'static, RamFlash, 64>;

    const SECTOR: usize = 1024;
    /// A region from its offset and length in KiB.
    const fn kib(offset: u32, len: u32) -> Region {
        Region {
            offset: offset * 1024,
            len: len * 1024,
        }
    }
    /// As in the end-to-end test: 32 KiB slots, then fragment storage and the journal.
    const LAYOUT: Layout = Layout {
        primary: kib(0, 32),
        secondary: kib(32, 32),
        fragments: [FragAreas {
            log: kib(64, 16),
            block: kib(80, 8),
            spare: kib(88, 4),
        }],
        journal: kib(92, 4),
    };
    const FLASH_LEN: usize = 96 * 1024;
    /// The decoder workspace of a product (as in size-probe): M = 1024, 64 lost, 242 bytes.
    const WORKSPACE: usize = DecoderState::workspace_len(1024, 64, 242);
    const INPUT_MAX: usize = 256 * 1024;
    const MAGIC: &[u8; 8] = b"FUOTASTK";
    /// What free stack words hold until something writes them.
    const PAINT: u32 = 0xC5AC_CE55;
    /// Stack painted below the driver before each call.
    const WINDOW: usize = 64 * 1024;

    extern "C" {
        // cortex-m-rt's linker script: the initial stack pointer, and the end of .bss/.uninit.
        static _stack_start: u32;
        static _stack_end: u32;
    }

    static mut INPUT: [u8; INPUT_MAX] = [0; INPUT_MAX];
    static mut FLASH_MEM: [u8; FLASH_LEN] = [0; FLASH_LEN];
    static mut FLASH: MaybeUninit<RefCell<RamFlash>> = MaybeUninit::uninit();
    static mut WS: [u8; WORKSPACE] = [0; WORKSPACE];
    static mut AGENT: MaybeUninit<ProbeAgent> = MaybeUninit::uninit();

    /// NOR flash in RAM: 8-byte writes onto erased bytes only, 1 KiB sectors.
    struct RamFlash {
        mem: &'static mut [u8],
    }

    impl ErrorType for RamFlash {
        type Error = NorFlashErrorKind;
    }

    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 1;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            let at = offset as usize;
            let src = self
                .mem
                .get(at..at + bytes.len())
                .ok_or(NorFlashErrorKind::OutOfBounds)?;
            bytes.copy_from_slice(src);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.mem.len()
        }
    }

    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 8;
        const ERASE_SIZE: usize = SECTOR;
        fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
            let (from, to) = (from as usize, to as usize);
            if from % SECTOR != 0 || to % SECTOR != 0 || from > to {
                return Err(NorFlashErrorKind::NotAligned);
            }
            self.mem
                .get_mut(from..to)
                .ok_or(NorFlashErrorKind::OutOfBounds)?
                .fill(0xff);
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            let at = offset as usize;
            if at % Self::WRITE_SIZE != 0 || bytes.len() % Self::WRITE_SIZE != 0 {
                return Err(NorFlashErrorKind::NotAligned);
            }
            let dst = self
                .mem
                .get_mut(at..at + bytes.len())
                .ok_or(NorFlashErrorKind::OutOfBounds)?;
            // Real flash would AND the bits silently; an agent bug should show here instead.
            if dst.iter().any(|&b| b != 0xff) {
                return Err(NorFlashErrorKind::Other);
            }
            dst.copy_from_slice(bytes);
            Ok(())
        }
    }

    fn fail(why: &str) -> ! {
        hprintln!("stack-probe: FAILED: {}", why);
        debug::exit(debug::EXIT_FAILURE);
        loop {
            core::hint::spin_loop();
        }
    }

    #[panic_handler]
    fn panic(info: &PanicInfo<'_>) -> ! {
        hprintln!("stack-probe: panic: {}", info);
        debug::exit(debug::EXIT_FAILURE);
        loop {
            core::hint::spin_loop();
        }
    }

    #[exception]
    unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
        hprintln!("stack-probe: hard fault at pc {:#010x}", frame.pc());
        debug::exit(debug::EXIT_FAILURE);
        loop {
            core::hint::spin_loop();
        }
    }

    /// The input file named by the second word of the semihosting command line, read whole.
    /// Not inlined: its buffers need not stay in `main`'s frame.
    #[inline(never)]
    fn read_input(buf: &'static mut [u8]) -> &'static [u8] {
        let mut cmdline = [0u8; 512];
        let mut block = [cmdline.as_mut_ptr() as usize, cmdline.len() - 1];
        // SAFETY: the host writes at most block[1] bytes into `cmdline` and the length back
        // into `block`, both live here.
        if unsafe { syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) } != 0 {
            fail("no semihosting command line (arg=stack-probe,arg=INPUT)");
        }
        let line = &cmdline[..block[1].min(cmdline.len() - 1)];
        let Some(space) = line.iter().position(|&b| b == b' ') else {
            fail("no input file on the command line");
        };
        // The path, then the NUL that SYS_OPEN wants after it.
        let mut path = [0u8; 512];
        let name = &line[space + 1..];
        path[..name.len()].copy_from_slice(name);
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let handle = unsafe { syscall!(OPEN, path.as_ptr(), nr::open::R_BINARY, name.len()) };
        if handle == usize::MAX {
            fail("cannot open the input file");
        }
        // SAFETY: `handle` is open.
        let len = unsafe { syscall!(FLEN, handle) };
        if len > buf.len() {
            fail("input file too large");
        }
        // SAFETY: the host writes `len` bytes into `buf`, which holds them.
        let unread = unsafe { syscall!(READ, handle, buf.as_mut_ptr(), len) };
        // SAFETY: `handle` is open; nothing uses it after this.
        unsafe { syscall!(CLOSE, handle) };
        if unread != 0 {
            fail("short read of the input file");
        }
        &buf[..len]
    }

    struct Cursor<'a> {
        buf: &'a [u8],
    }

    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            if n > self.buf.len() {
                fail("input truncated");
            }
            let (head, rest) = self.buf.split_at(n);
            self.buf = rest;
            head
        }
        fn array<const N: usize>(&mut self) -> [u8; N] {
            let mut out = [0u8; N];
            out.copy_from_slice(self.take(N));
            out
        }
        fn u8(&mut self) -> u8 {
            self.take(1)[0]
        }
        fn u16(&mut self) -> u16 {
            u16::from_le_bytes(self.array())
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.array())
        }
    }

    struct Expected {
        version: ImageVersion,
        len: usize,
        sha256: [u8; 32],
    }

    /// One downlink of the input.
    struct Downlink<'a> {
        phase: u8,
        now: Millis,
        via: Via,
        port: u8,
        bytes: &'a [u8],
    }

    fn next_downlink<'a>(c: &mut Cursor<'a>) -> Option<Downlink<'a>> {
        if c.buf.is_empty() {
            return None;
        }
        let phase = c.u8();
        let now = Millis::from(c.u32());
        let port = c.u8();
        let via = match c.u8() {
            0xff => Via::Unicast,
            g => Via::Multicast(g),
        };
        let len = usize::from(c.u16());
        Some(Downlink {
            phase,
            now,
            via,
            port,
            bytes: c.take(len),
        })
    }

    /// `Agent::poll_uplink`: port and length of the next uplink.
    type PollUplink = fn(&mut ProbeAgent, Millis, &mut [u8]) -> Option<(u8, usize)>;

    /// The agent's entry points, called through pointers the optimizer cannot see through:
    /// each call is a real call, its whole frame below the driver's stack pointer.
    struct Calls {
        downlink: fn(&mut ProbeAgent, Millis, Via, u8, &[u8]),
        timeout_at: fn(&ProbeAgent, Millis) -> Millis,
        timeout: fn(&mut ProbeAgent, Millis),
        uplink: PollUplink,
        event: fn(&mut ProbeAgent) -> Option<Event>,
    }

    impl Calls {
        fn new() -> Self {
            black_box(Self {
                downlink: ProbeAgent::handle_downlink,
                timeout_at: ProbeAgent::poll_timeout,
                timeout: ProbeAgent::handle_timeout,
                uplink: ProbeAgent::poll_uplink,
                event: ProbeAgent::poll_event,
            })
        }
    }

    /// What the agent said so far.
    #[derive(Default)]
    struct Seen {
        uplinks: usize,
        downlinks: usize,
        /// The multicast session opened on time (the clock was synced).
        class_c: bool,
        block_complete: bool,
        reboot: Option<ImageVersion>,
        failed: bool,
    }

    #[inline(always)]
    fn sp() -> usize {
        let sp: usize;
        // SAFETY: reads a register.
        unsafe { asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
        sp
    }

    /// The lowest word painted below a stack pointer `sp`: a window deep enough for any sane
    /// depth, so that painting before every call stays cheap.
    #[inline(always)]
    fn window_bottom(sp: usize) -> usize {
        (sp.saturating_sub(WINDOW) & !3).max(addr_of!(_stack_end) as usize)
    }

    /// Paints the free stack window below the caller's stack pointer. Inline assembly, so
    /// that painting itself puts nothing on the stack.
    #[inline(always)]
    fn paint() {
        let bottom = window_bottom(sp());
        // SAFETY: only words below the stack pointer and above all statics are written.
        unsafe {
            asm!(
                "mov {top}, sp",
                "2:",
                "cmp {p}, {top}",
                "bhs 3f",
                "str {pat}, [{p}], #4",
                "b 2b",
                "3:",
                p = inout(reg) bottom => _,
                top = out(reg) _,
                pat = in(reg) PAINT,
                options(nostack),
            );
        }
    }

    /// The lowest stack address written since [`paint`] (called with the same stack pointer).
    #[inline(always)]
    fn high_water() -> usize {
        let top = sp();
        let bottom = window_bottom(top);
        let mut p = bottom;
        // SAFETY: reads words between the end of the statics and the stack pointer.
        while p < top && unsafe { (p as *const u32).read_volatile() } == PAINT {
            p += 4;
        }
        if p == bottom {
            fail("the stack went past the painted window");
        }
        p
    }

    #[derive(Clone, Copy, Default)]
    struct Depth {
        /// Below the driver's stack pointer: the agent's call.
        call: usize,
        /// Below the initial stack pointer.
        total: usize,
    }

    impl Depth {
        fn max(self, o: Self) -> Self {
            Self {
                call: self.call.max(o.call),
                total: self.total.max(o.total),
            }
        }
    }

    /// What a call was for; each gets its own maximum.
    #[derive(Clone, Copy)]
    enum Kind {
        New,
        Setup,
        Fragment,
        /// The DataFragment that completes the block (and its MIC check).
        Complete,
        Timeout,
        Install,
        Poll,
    }

    /// The names of the kinds, in their order.
    const KINDS: [&str; 7] = [
        "new", "setup", "fragment", "complete", "timeout", "install", "poll",
    ];

    /// The deepest stack of each kind of call. Each call is measured alone: [`Meter::start`]
    /// paints, the call runs, [`Meter::stop`] finds its high-water mark.
    #[derive(Default)]
    struct Meter {
        depth: [Depth; KINDS.len()],
    }

    impl Meter {
        #[inline(always)]
        fn start() -> usize {
            paint();
            sp()
        }

        #[inline(always)]
        fn stop(base: usize) -> Depth {
            let low = high_water();
            Depth {
                call: base - low,
                total: addr_of!(_stack_start) as usize - low,
            }
        }

        fn record(&mut self, kind: Kind, d: Depth) {
            self.depth[kind as usize] = self.depth[kind as usize].max(d);
        }

        fn report(&self) {
            let mut max = Depth::default();
            for (name, d) in KINDS.iter().zip(self.depth) {
                report(name, d);
                max = max.max(d);
            }
            report("max", max);
        }
    }

    fn report(name: &str, d: Depth) {
        hprintln!(
            "stack-probe: stack {} call={} total={}",
            name,
            d.call,
            d.total
        );
    }

    /// Agent::new, measured; the agent goes into `slot`.
    #[inline(never)]
    fn start_agent(
        meter: &mut Meter,
        slot: &'static mut MaybeUninit<ProbeAgent>,
        flash: &'static RefCell<RamFlash>,
        config: AgentConfig,
        ws: &'static mut [u8],
    ) -> &'static mut ProbeAgent {
        type New = fn(
            &'static RefCell<RamFlash>,
            AgentConfig,
            &'static mut [u8],
            Millis,
        ) -> Result<ProbeAgent, AgentError<NorFlashErrorKind>>;
        let new: New = ProbeAgent::new;
        let new = black_box(new);
        let base = Meter::start();
        let agent = new(flash, config, ws, 0);
        meter.record(Kind::New, Meter::stop(base));
        match agent {
            Ok(agent) => slot.write(agent),
            Err(_) => fail("Agent::new"),
        }
    }

    /// Sends the agent's uplinks (nowhere) and acts on its events.
    #[inline(always)]
    fn drain(
        calls: &Calls,
        meter: &mut Meter,
        agent: &mut ProbeAgent,
        now: Millis,
        seen: &mut Seen,
    ) {
        let mut up = [0u8; 64];
        loop {
            let base = Meter::start();
            let next = (calls.uplink)(agent, now, &mut up);
            meter.record(Kind::Poll, Meter::stop(base));
            let Some((port, n)) = next else {
                break;
            };
            black_box((port, &up[..n]));
            seen.uplinks += 1;
        }
        loop {
            let base = Meter::start();
            let next = (calls.event)(agent);
            meter.record(Kind::Poll, Meter::stop(base));
            match next {
                None => break,
                Some(Event::BlockComplete { .. }) => seen.block_complete = true,
                Some(Event::RebootWanted { version }) => seen.reboot = Some(version),
                Some(Event::UpdateFailed(_) | Event::Reverted { .. }) => seen.failed = true,
                Some(Event::Multicast(McEvent::ClassCStart { .. })) => seen.class_c = true,
                Some(
                    Event::Multicast(_)
                    | Event::Booted { .. }
                    | Event::Confirmed { .. }
                    | Event::InstallDeferred(_)
                    | Event::RevertWanted { .. },
                ) => {}
            }
        }
    }

    /// Drives the update: each downlink at its time, timeouts as they fall due, uplinks and
    /// events drained after each step, until the agent wants the reboot (or gives up).
    #[inline(never)]
    fn run(
        calls: &Calls,
        meter: &mut Meter,
        agent: &mut ProbeAgent,
        input: &mut Cursor<'_>,
        seen: &mut Seen,
    ) {
        let mut now: Millis = 0;
        let mut rounds = 0;
        loop {
            drain(calls, meter, agent, now, seen);
            // The next downlink, until the block is complete: then a device stops listening
            // and only its timeouts matter (a few rounds are enough for the install).
            let downlink = if seen.block_complete {
                rounds += 1;
                if rounds > 16 || seen.reboot.is_some() || seen.failed {
                    break;
                }
                now += 1000;
                None
            } else {
                let Some(d) = next_downlink(input) else {
                    break;
                };
                now = d.now;
                Some(d)
            };

            let base = Meter::start();
            let due = (calls.timeout_at)(agent, now);
            meter.record(Kind::Poll, Meter::stop(base));
            if due <= now {
                let kind = if seen.block_complete {
                    Kind::Install
                } else {
                    Kind::Timeout
                };
                let base = Meter::start();
                (calls.timeout)(agent, now);
                meter.record(kind, Meter::stop(base));
            }
            if let Some(d) = downlink {
                let base = Meter::start();
                (calls.downlink)(agent, now, d.via, d.port, d.bytes);
                let depth = Meter::stop(base);
                seen.downlinks += 1;
                // Its events tell whether this was the fragment that completed the block.
                drain(calls, meter, agent, now, seen);
                let kind = match (d.phase, seen.block_complete) {
                    (0, _) => Kind::Setup,
                    (_, false) => Kind::Fragment,
                    (_, true) => Kind::Complete,
                };
                meter.record(kind, depth);
            }
        }
    }

    #[entry]
    fn main() -> ! {
        // SAFETY: `main` runs once; these statics are touched nowhere else.
        let (input_buf, flash_mem, flash_slot, ws, agent_slot) = unsafe {
            (
                &mut *addr_of_mut!(INPUT),
                &mut *addr_of_mut!(FLASH_MEM),
                &mut *addr_of_mut!(FLASH),
                &mut *addr_of_mut!(WS),
                &mut *addr_of_mut!(AGENT),
            )
        };
        let mut input = Cursor {
            buf: read_input(input_buf),
        };
        let total_len = input.buf.len();
        if input.take(8) != MAGIC {
            fail("not a stack-probe input");
        }
        let Ok(patch_key) = VerifyingKey::from_sec1_bytes(input.take(65)) else {
            fail("patch key");
        };
        let mc_ke_key = Key128::from_bytes(input.array());
        let data_block_int_key = Key128::from_bytes(input.array());
        let version = ImageVersion {
            major: input.u8(),
            minor: input.u8(),
            revision: input.u16(),
            build: input.u32(),
        };
        let expected = Expected {
            version,
            len: input.u32() as usize,
            sha256: input.array(),
        };
        let primary_len = input.u32() as usize;
        let primary = input.take(primary_len);
        if primary_len > LAYOUT.primary.len as usize || expected.len > LAYOUT.secondary.len as usize
        {
            fail("images too large for the slots");
        }
        // Erased flash, the running image in the primary slot.
        flash_mem.fill(0xff);
        flash_mem[..primary_len].copy_from_slice(primary);
        hprintln!(
            "stack-probe: input {} bytes, primary image {} bytes",
            total_len,
            primary_len
        );

        let flash: &'static RefCell<RamFlash> =
            flash_slot.write(RefCell::new(RamFlash { mem: flash_mem }));
        let config = AgentConfig {
            version: Version::V2,
            mc_ke_key,
            data_block_int_key,
            limits: RadioLimits::EU868,
            patch_key,
            layout: LAYOUT,
            boot_max_align: 8,
            permanent: false,
            max_lost: 64,
            seed: 0x5eed,
            hw_version: 1,
        };
        let calls = Calls::new();
        let mut meter = Meter::default();
        let mut seen = Seen::default();
        let agent = start_agent(&mut meter, agent_slot, flash, config, ws);
        run(&calls, &mut meter, agent, &mut input, &mut seen);
        meter.report();
        let mut unused = 0;
        while next_downlink(&mut input).is_some() {
            unused += 1;
        }
        hprintln!(
            "stack-probe: {} downlinks fed, {} left after the block completed, {} uplinks",
            seen.downlinks,
            unused,
            seen.uplinks
        );

        if !seen.class_c {
            fail("the class C session never started");
        }
        if !seen.block_complete {
            fail("the data block never completed");
        }
        if seen.failed {
            fail("the agent reported a failed update");
        }
        match seen.reboot {
            Some(v) if v == expected.version => {}
            Some(_) => fail("RebootWanted for another version"),
            None => fail("no RebootWanted"),
        }
        let sec = LAYOUT.secondary.offset as usize;
        let digest = Sha256::digest(&flash.borrow().mem[sec..sec + expected.len]);
        if digest[..] != expected.sha256 {
            fail("the secondary slot does not hold the new image");
        }
        hprintln!(
            "stack-probe: update ok: RebootWanted {}, secondary slot SHA-256 matches",
            expected.version
        );
        debug::exit(debug::EXIT_SUCCESS);
        loop {
            core::hint::spin_loop();
        }
    }
}
