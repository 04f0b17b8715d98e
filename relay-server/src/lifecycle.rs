//! The timing of one listener's control channel, as a pure state machine driven by events and
//! by the time passed in: when the token expires (plus the grace period, §3.5), when to ping,
//! and when a listener that answers nothing is given up (§5.4). No clock is read here, so the
//! rules are tested with plain numbers and the channel with paused tokio time.

use std::time::Duration;

use tokio::time::Instant;

/// Token expiries further away than this are treated as this far (a signed `se` may be any
/// 64-bit number; deadlines must stay representable).
pub(crate) const MAX_EXPIRY_HORIZON: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Keep-alive pings a listener may leave unanswered (nothing received from it since) before
/// it is dropped.
pub(crate) const MAX_UNANSWERED_PINGS: u32 = 2;

/// What is due when the ping timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PingDue {
    /// Send a keep-alive ping.
    Ping,
    /// The listener answered none of the last pings: drop it.
    GiveUp,
}

/// One listener's deadlines.
#[derive(Debug, Clone)]
pub(crate) struct ListenerLife {
    expires_at: u64,
    grace: Duration,
    keepalive: Option<Duration>,
    next_ping: Option<Instant>,
    unanswered: u32,
}

impl ListenerLife {
    /// A channel opened at `now` with a token expiring at `expires_at` (Unix seconds).
    pub(crate) fn new(
        expires_at: u64,
        grace: Duration,
        keepalive: Option<Duration>,
        now: Instant,
    ) -> Self {
        ListenerLife {
            expires_at,
            grace,
            keepalive,
            next_ping: keepalive.map(|k| now + k),
            unanswered: 0,
        }
    }

    /// When the channel must close for an expired token, given the Unix time `unix_now` at
    /// the instant `now`: expiry plus grace, with the expiry clamped to the horizon.
    pub(crate) fn expiry_deadline(&self, unix_now: u64, now: Instant) -> Instant {
        let left =
            Duration::from_secs(self.expires_at.saturating_sub(unix_now)).min(MAX_EXPIRY_HORIZON);
        now + left + self.grace
    }

    /// The token's expiry, Unix seconds.
    pub(crate) fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// A valid `renewToken` moved the expiry.
    pub(crate) fn renewed(&mut self, expires_at: u64) {
        self.expires_at = expires_at;
    }

    /// Something arrived from the listener: it is alive.
    pub(crate) fn heard(&mut self) {
        self.unanswered = 0;
    }

    /// When the next keep-alive ping is due; `None` with keep-alive off.
    pub(crate) fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    /// The ping timer fired at `now`.
    pub(crate) fn ping_due(&mut self, now: Instant) -> PingDue {
        self.next_ping = self.keepalive.map(|k| now + k);
        if self.unanswered >= MAX_UNANSWERED_PINGS {
            return PingDue::GiveUp;
        }
        self.unanswered += 1;
        PingDue::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn expiry_is_the_token_plus_grace_and_moves_on_renewal() {
        let t0 = Instant::now();
        let mut life = ListenerLife::new(1_000, GRACE, None, t0);
        assert_eq!(
            life.expiry_deadline(900, t0),
            t0 + Duration::from_secs(100) + GRACE
        );
        assert_eq!(
            life.expiry_deadline(1_100, t0),
            t0 + GRACE,
            "an expired token still gets its grace"
        );
        life.renewed(5_000);
        assert_eq!(
            life.expiry_deadline(1_000, t0),
            t0 + Duration::from_secs(4_000) + GRACE
        );
        assert_eq!(life.next_ping(), None);
    }

    #[test]
    fn far_expiries_are_clamped() {
        let t0 = Instant::now();
        let life = ListenerLife::new(u64::MAX, GRACE, None, t0);
        assert_eq!(life.expiry_deadline(0, t0), t0 + MAX_EXPIRY_HORIZON + GRACE);
    }

    #[test]
    fn a_listener_that_answers_nothing_is_given_up_on_the_third_ping() {
        let k = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut life = ListenerLife::new(u64::MAX, GRACE, Some(k), t0);
        assert_eq!(life.next_ping(), Some(t0 + k));
        assert_eq!(life.ping_due(t0 + k), PingDue::Ping);
        assert_eq!(life.ping_due(t0 + 2 * k), PingDue::Ping);
        life.heard();
        assert_eq!(
            life.ping_due(t0 + 3 * k),
            PingDue::Ping,
            "hearing anything resets the count"
        );
        assert_eq!(life.ping_due(t0 + 4 * k), PingDue::Ping);
        assert_eq!(life.ping_due(t0 + 5 * k), PingDue::GiveUp);
        assert_eq!(life.next_ping(), Some(t0 + 6 * k));
    }
}
