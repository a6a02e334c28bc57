//! The firmware's say in an update: whether it may start now, whether the new image works,
//! and how many unconfirmed boots of it are too many. The agent calls these at the right
//! moments; every one has a default, so [`NoHooks`] installs as soon as a block is complete
//! and confirms the new image after its first boot.
//!
//! What the hooks decide goes to the server as an UpdateReport
//! ([`fuota_codec::agent_report`]): a deferral with its reason, a failed self-test, a boot
//! loop, a revert.

pub use fuota_codec::agent_report::Refusal;

use crate::clock::Millis;

/// Decisions around an update, implemented by the integrator.
pub trait UpdateHooks {
    /// Called before an install starts (and again before an interrupted one resumes), at
    /// `now` on the agent's clock: battery level, mains power, a busy period. A refusal puts the install off: it is
    /// reported, and the agent asks again after [`UpdateHooks::retry_ms`].
    fn may_update(&mut self, now: Millis) -> Result<(), Refusal> {
        let _ = now;
        Ok(())
    }

    /// How long after a refusal the agent asks again.
    fn retry_ms(&self) -> Millis {
        15 * 60_000
    }

    /// Called after the reboot into the new image (at the first
    /// [`Agent::handle_timeout`](crate::agent::Agent::handle_timeout), then after each
    /// [`SelfTest::Later`] and [`UpdateHooks::retry_ms`]): whether it works. `Pass` confirms it
    /// (MCUboot keeps it); `Fail` reports the failure and asks for a reboot, after which the
    /// bootloader runs the old image again; `Later` when the answer needs more (a join, an
    /// uplink that went through). The firmware may also confirm on its own with
    /// [`Agent::confirm`](crate::agent::Agent::confirm).
    fn self_test(&mut self, now: Millis) -> SelfTest {
        let _ = now;
        SelfTest::Pass
    }

    /// Boots of the new image without a passed self-test that are tolerated. One more, and
    /// the agent has the bootloader go back to the previous image: a test swap does that by
    /// itself at the first unconfirmed reset, but a permanent swap needs the agent to ask.
    fn boot_limit(&self) -> u8 {
        3
    }
}

/// What a self-test found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    Pass,
    Fail,
    /// Not known yet: ask again later.
    Later,
}

/// The defaults: install at once, a new image that boots is good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHooks;

impl UpdateHooks for NoHooks {}

impl<H: UpdateHooks + ?Sized> UpdateHooks for &mut H {
    fn may_update(&mut self, now: Millis) -> Result<(), Refusal> {
        (**self).may_update(now)
    }
    fn retry_ms(&self) -> Millis {
        (**self).retry_ms()
    }
    fn self_test(&mut self, now: Millis) -> SelfTest {
        (**self).self_test(now)
    }
    fn boot_limit(&self) -> u8 {
        (**self).boot_limit()
    }
}
