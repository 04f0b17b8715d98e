//! Time for code with deadlines, as a parameter. Deadlines use tokio's clock, which
//! `tokio::time::pause()` turns virtual in tests; token expiries are Unix seconds, which the
//! system clock gives. A [`Clock`] made with [`Clock::following_tokio`] derives Unix time
//! from tokio's clock, so a test that pauses and advances time moves both together and never
//! has to sleep to outwait a token.

use tokio::time::Instant;

/// Where "now" comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system clock (Unix time) and tokio's clock (deadlines).
    #[default]
    System,
    /// Unix time = `base` plus the tokio time passed since `start`.
    FollowingTokio {
        /// Unix seconds at `start`.
        base: u64,
        /// The tokio instant `base` corresponds to.
        start: Instant,
    },
}

impl Clock {
    /// A clock whose Unix time starts at `base` now and follows tokio's (possibly paused)
    /// clock from here.
    pub fn following_tokio(base: u64) -> Self {
        Clock::FollowingTokio {
            base,
            start: Instant::now(),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn unix_now(&self) -> u64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            Clock::FollowingTokio { base, start } => base.saturating_add(start.elapsed().as_secs()),
        }
    }

    /// Now, for deadlines.
    pub fn instant_now(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_following_clock_moves_with_tokio_time() {
        let clock = Clock::following_tokio(1_000);
        assert_eq!(clock.unix_now(), 1_000);
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.unix_now(), 1_090);
        assert!(Clock::System.unix_now() > 1_700_000_000);
    }
}
