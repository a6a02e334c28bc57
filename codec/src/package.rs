//! What the three packages share: versions, directions, identifiers and ports.

/// Version of a package. The version travels with every session: v1 and v2 differ in layouts
/// and in the FEC parity rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// v1.0.0 of the package.
    V1,
    /// v2.0.0 of the package.
    V2,
}

impl Version {
    /// The PackageVersion value on the wire.
    pub const fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }
}

/// Which way a payload travels: the same CID means different commands each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Server to device: requests and commands.
    Downlink,
    /// Device to server: answers and device-initiated requests.
    Uplink,
}

/// PackageIdentifier values of PackageVersionAns, and the default FPort of each package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackageId {
    /// TS003 Application Layer Clock Synchronization.
    ClockSync,
    /// TS005 Remote Multicast Setup.
    MulticastSetup,
    /// TS004 Fragmented Data Block Transport.
    Fragmentation,
    /// TS006 Firmware Management Protocol.
    FirmwareManagement,
}

impl PackageId {
    pub const fn id(self) -> u8 {
        match self {
            PackageId::ClockSync => 1,
            PackageId::MulticastSetup => 2,
            PackageId::Fragmentation => 3,
            PackageId::FirmwareManagement => 4,
        }
    }

    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(PackageId::ClockSync),
            2 => Some(PackageId::MulticastSetup),
            3 => Some(PackageId::Fragmentation),
            4 => Some(PackageId::FirmwareManagement),
            _ => None,
        }
    }

    /// The default FPort.
    pub const fn port(self) -> u8 {
        match self {
            PackageId::ClockSync => 202,
            PackageId::MulticastSetup => 200,
            PackageId::Fragmentation => 201,
            PackageId::FirmwareManagement => 203,
        }
    }

    pub const fn from_port(port: u8) -> Option<Self> {
        match port {
            202 => Some(PackageId::ClockSync),
            200 => Some(PackageId::MulticastSetup),
            201 => Some(PackageId::Fragmentation),
            203 => Some(PackageId::FirmwareManagement),
            _ => None,
        }
    }
}

/// One command of a package in one direction: the unit that [`Commands`] iterates over.
pub trait Command<'a>: Sized {
    /// Parses the command at the start of `bytes` (CID first) and says how many bytes it took.
    fn parse_one(version: Version, bytes: &'a [u8]) -> Result<(Self, usize), crate::Error>;

    /// [`Command::parse_one`] without the error: for a caller that only stops at one (a
    /// device), so that no error value is made at all. Gives the bytes after the command
    /// instead of its length: a parser that read the command's fields exactly has them at
    /// hand, without working out its length again.
    fn parse_valid(version: Version, bytes: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (command, used) = Self::parse_one(version, bytes).ok()?;
        Some((command, bytes.get(used..).unwrap_or(&[])))
    }
}

/// Iterator over the commands packed in one payload. After an error it yields nothing more:
/// without a valid length the rest of the payload cannot be framed.
#[derive(Debug, Clone)]
pub struct Commands<'a, C> {
    version: Version,
    rest: &'a [u8],
    failed: bool,
    _command: core::marker::PhantomData<C>,
}

impl<'a, C: Command<'a>> Commands<'a, C> {
    pub fn new(version: Version, payload: &'a [u8]) -> Self {
        Self {
            version,
            rest: payload,
            failed: false,
            _command: core::marker::PhantomData,
        }
    }

    /// The commands up to the first error, which ends the iteration unreported: what a
    /// device does with a payload, without the cost of describing the error.
    pub fn valid(self) -> Valid<'a, C> {
        Valid(self)
    }
}

/// Iterator returned by [`Commands::valid`].
#[derive(Debug, Clone)]
pub struct Valid<'a, C>(Commands<'a, C>);

impl<'a, C> Valid<'a, C> {
    /// The bytes not parsed yet, the next command's CID first.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.0.rest
    }
}

impl<'a, C: Command<'a>> Iterator for Valid<'a, C> {
    type Item = C;

    fn next(&mut self) -> Option<C> {
        let c = &mut self.0;
        if c.failed || c.rest.is_empty() {
            return None;
        }
        match C::parse_valid(c.version, c.rest) {
            Some((command, rest)) => {
                c.rest = rest;
                Some(command)
            }
            None => {
                c.failed = true;
                None
            }
        }
    }
}

impl<'a, C: Command<'a>> core::iter::FusedIterator for Valid<'a, C> {}

impl<'a, C: Command<'a>> Iterator for Commands<'a, C> {
    type Item = Result<C, crate::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match C::parse_one(self.version, self.rest) {
            Ok((command, used)) => {
                self.rest = self.rest.get(used..).unwrap_or(&[]);
                Some(Ok(command))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a, C: Command<'a>> core::iter::FusedIterator for Commands<'a, C> {}
