//! When a listener's control channel renews its token and pings, as a pure state machine
//! driven by the time passed in (PROTOCOL.md §3.5, §5.4): renew at 80% of the token's life
//! (the SDKs renew at expiry, which the relay's grace period absorbs; earlier is safer), ping
//! every keep-alive interval, and give the channel up when the relay has been silent for two
//! intervals. No clock is read here.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest renewal interval (tokens live at least a second).
const MIN_RENEWAL: Duration = Duration::from_millis(500);

/// What the channel should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send `renewToken` with a fresh token.
    Renew,
    /// Send a keep-alive ping.
    Ping,
    /// The relay has said nothing for two keep-alive intervals: reconnect.
    Silent,
}

/// A control channel's renewal and keep-alive times.
#[derive(Debug, Clone)]
pub struct Schedule {
    renew_every: Duration,
    keepalive: Duration,
    renew_at: Instant,
    ping_at: Instant,
    last_heard: Instant,
}

impl Schedule {
    /// For a channel opened at `now` with tokens living `token_ttl`, pinging every `keepalive`.
    pub fn new(token_ttl: Duration, keepalive: Duration, now: Instant) -> Self {
        let renew_every = token_ttl.mul_f32(0.8).max(MIN_RENEWAL);
        Schedule {
            renew_every,
            keepalive,
            renew_at: now + renew_every,
            ping_at: now + keepalive,
            last_heard: now,
        }
    }

    /// Anything arrived from the relay at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// The next time something may be due.
    pub fn next_wake(&self) -> Instant {
        self.renew_at.min(self.ping_at)
    }

    /// What is due at `now` (call when [`Schedule::next_wake`] has passed); moves the
    /// schedule on. `None` when nothing is due yet.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if now >= self.renew_at {
            self.renew_at = now + self.renew_every;
            return Some(Due::Renew);
        }
        if now >= self.ping_at {
            self.ping_at = now + self.keepalive;
            if now.duration_since(self.last_heard) > self.keepalive * 2 {
                return Some(Due::Silent);
            }
            return Some(Due::Ping);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_80_percent_and_pings_every_interval() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut schedule = Schedule::new(Duration::from_secs(100), Duration::from_secs(30), t0);
        assert_eq!(schedule.next_wake(), s(30));
        assert_eq!(schedule.due(s(29)), None);
        schedule.heard(s(29));
        assert_eq!(schedule.due(s(30)), Some(Due::Ping));
        schedule.heard(s(31));
        assert_eq!(schedule.due(s(60)), Some(Due::Ping));
        assert_eq!(schedule.next_wake(), s(80));
        assert_eq!(schedule.due(s(80)), Some(Due::Renew));
        assert_eq!(schedule.next_wake(), s(90));
    }

    #[test]
    fn a_relay_silent_for_two_intervals_is_given_up() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut schedule = Schedule::new(Duration::from_secs(3600), Duration::from_secs(10), t0);
        assert_eq!(schedule.due(s(10)), Some(Due::Ping));
        assert_eq!(
            schedule.due(s(20)),
            Some(Due::Ping),
            "20 s of silence is two intervals, not more"
        );
        assert_eq!(schedule.due(s(30)), Some(Due::Silent));
    }

    #[test]
    fn very_short_tokens_are_renewed_at_most_twice_a_second() {
        let t0 = Instant::now();
        let schedule = Schedule::new(Duration::from_millis(100), Duration::from_secs(30), t0);
        assert_eq!(schedule.next_wake(), t0 + MIN_RENEWAL);
    }
}
