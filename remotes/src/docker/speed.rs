//! The low-speed limit: a response body that keeps sending, but too little
//! to ever finish, is given up on like one that went silent.

use std::time::{Duration, Instant};

use crate::{ConnectError, Error};

/// The least a response body must bring while it is being waited on: at
/// least `min_bytes` in every `window`. The idle-read timeout catches a
/// registry that goes silent; this catches one that trickles (a byte every
/// few seconds keeps a connection from ever being idle, and a 1 GiB layer
/// from ever arriving). A body under the limit fails with
/// [`Error::TooSlow`] ([`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)):
/// the fetch handler resumes a blob from the bytes already written, but
/// counts the attempt as one that got nowhere, so a registry that trickles
/// every time ends the fetch after a few windows. A body that fails (the
/// idle-read timeout, a reset) having brought fewer bytes than the limit's
/// rate over all the time it was waited on counts the same
/// ([`Error::Stalled`]): a registry that sends a little and then goes silent
/// every time ends the fetch after a few idle-read timeouts.
///
/// Only the time spent waiting on the network counts: while the reader does
/// not ask for more (a store that is slow to write), the window is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowSpeedLimit {
    /// Bytes a body must bring in each window; 0 turns the limit off.
    pub min_bytes: u64,
    /// How long each window lasts.
    pub window: Duration,
}

impl LowSpeedLimit {
    /// No limit: only the idle-read timeout ends a slow body.
    pub const OFF: LowSpeedLimit = LowSpeedLimit {
        min_bytes: 0,
        window: Duration::from_secs(60),
    };

    fn enabled(&self) -> bool {
        self.min_bytes > 0 && !self.window.is_zero()
    }
}

impl Default for LowSpeedLimit {
    /// 16 KiB a minute (273 bytes a second): far under what any link that
    /// can pull an image brings to each of its connections, far over a
    /// registry that drips to keep a connection open.
    fn default() -> Self {
        LowSpeedLimit {
            min_bytes: 16 << 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Holds one body to a [`LowSpeedLimit`]: told when the reader asks for
/// bytes and when they arrive, it fails the body at the end of a window that
/// brought too few, and calls a failed body too slow if it brought too few
/// over all its time.
#[derive(Debug)]
pub(crate) struct SpeedCheck {
    limit: LowSpeedLimit,
    /// The client's idle-read timeout, for a body that broke on it to name.
    idle_read: Option<Duration>,
    /// When the reader first asked.
    first_ask: Option<Instant>,
    /// The time the reader kept bytes without asking for more, in all.
    held: Duration,
    /// Bytes that arrived in all.
    total: u64,
    /// When the current window started, moved on by the time the reader
    /// kept bytes without asking for more; `None` before the first ask.
    window_start: Option<Instant>,
    /// Bytes that arrived in the current window.
    received: u64,
    /// When the last bytes were handed to the reader, until it asks again.
    handed_on: Option<Instant>,
}

impl SpeedCheck {
    /// A check of one body read by a client whose idle-read timeout is
    /// `idle_read` (`None`: none, or not known).
    pub(crate) fn new(limit: LowSpeedLimit, idle_read: Option<Duration>) -> Self {
        SpeedCheck {
            limit,
            idle_read,
            first_ask: None,
            held: Duration::ZERO,
            total: 0,
            window_start: None,
            received: 0,
            handed_on: None,
        }
    }

    /// The reader asks for more bytes at `now`.
    pub(crate) fn asked(&mut self, now: Instant) {
        self.first_ask.get_or_insert(now);
        match (self.window_start, self.handed_on.take()) {
            (None, _) => self.window_start = Some(now),
            // The reader's own time is not the registry's slowness.
            (Some(start), Some(handed_on)) => {
                let kept = now.saturating_duration_since(handed_on);
                self.held += kept;
                self.window_start = Some(start + kept);
            }
            (Some(_), None) => {}
        }
    }

    /// The body failed at `now` with `cause` (a reset, the idle-read
    /// timeout): the error to report. One that brought some bytes, but
    /// fewer than the limit's rate over all the time it was waited on, is
    /// [`Error::Stalled`]: a registry that sends a little and then goes
    /// silent must not count as making progress each time, or it could keep
    /// a fetch for (size / bytes per attempt) idle timeouts.
    pub(crate) fn failed(&self, now: Instant, cause: Error) -> Error {
        let Some(first_ask) = self.first_ask else {
            return cause;
        };
        if !self.limit.enabled() || self.total == 0 {
            // Nothing brought: no progress to mistake, and its own error
            // says best what happened.
            return cause;
        }
        let waited = now
            .saturating_duration_since(first_ask)
            .saturating_sub(self.held);
        let owed = u128::from(self.limit.min_bytes) * waited.as_nanos()
            / self.limit.window.as_nanos().max(1);
        if u128::from(self.total) >= owed {
            return cause;
        }
        Error::Stalled {
            received: self.total,
            waited,
            limit: self.limit,
            source: Box::new(cause),
        }
    }

    /// The body of `url` broke at `now` with `source` (a reset, the
    /// idle-read timeout): the error to report, as [`SpeedCheck::failed`]
    /// makes it, naming the idle-read limit when that ran out.
    pub(crate) fn broke(&self, now: Instant, url: &str, source: reqwest::Error) -> Error {
        let cause = Error::Connect {
            url: url.to_string(),
            source: ConnectError::new(source).after(1, None, self.idle_read),
        };
        self.failed(now, cause)
    }

    /// `bytes` arrived at `now` and are handed to the reader. An error for a
    /// window that has ended with too few.
    pub(crate) fn arrived(&mut self, bytes: u64, now: Instant, url: &str) -> Result<(), Error> {
        self.handed_on = Some(now);
        self.total = self.total.saturating_add(bytes);
        if !self.limit.enabled() {
            return Ok(());
        }
        self.received = self.received.saturating_add(bytes);
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) < self.limit.window {
            return Ok(());
        }
        if self.received < self.limit.min_bytes {
            return Err(Error::TooSlow {
                url: url.to_string(),
                received: self.received,
                limit: self.limit,
            });
        }
        self.window_start = Some(now);
        self.received = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocidist_content::Report;

    const LIMIT: LowSpeedLimit = LowSpeedLimit {
        min_bytes: 100,
        window: Duration::from_secs(10),
    };

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    /// The error reqwest gives for a body that broke with `cause`.
    async fn body_broken_by(cause: std::io::Error) -> reqwest::Error {
        let chunks = futures::stream::once(async move { Err::<bytes::Bytes, _>(cause) });
        let response = hyper::Response::new(reqwest::Body::wrap_stream(chunks));
        reqwest::Response::from(response).bytes().await.unwrap_err()
    }

    #[tokio::test]
    async fn a_body_broken_by_the_idle_read_limit_names_it_and_one_the_kernel_timed_out_does_not() {
        let check = SpeedCheck::new(LowSpeedLimit::OFF, Some(Duration::from_secs(300)));
        // A timer ran out (the client's own is reqwest's, kind TimedOut).
        let ours = body_broken_by(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle")).await;
        let message = Report::new(&check.broke(Instant::now(), "u", ours)).to_string();
        assert_eq!(message, "u: timed out: nothing received for 300s");
        // TCP keepalive gave up on a vanished peer, after a minute or so:
        // not the 300 s the message would otherwise claim.
        let kernel = body_broken_by(std::io::Error::from_raw_os_error(libc::ETIMEDOUT)).await;
        assert!(
            kernel.is_timeout(),
            "reqwest counts it a timeout: {kernel:?}"
        );
        let message = Report::new(&check.broke(Instant::now(), "u", kernel)).to_string();
        assert!(
            message.starts_with("u: timed out: ") && message.ends_with("(os error 110)"),
            "{message}"
        );
        assert!(!message.contains("300s"), "{message}");
    }

    #[test]
    fn a_window_that_brought_too_few_bytes_fails_when_it_ends() {
        let t0 = Instant::now();
        let mut check = SpeedCheck::new(LIMIT, None);
        for s in 0..9 {
            check.asked(at(t0, s));
            check.arrived(9, at(t0, s + 1), "u").unwrap_or_else(|e| {
                panic!("within the window: {e}");
            });
        }
        check.asked(at(t0, 9));
        match check.arrived(1, at(t0, 10), "u") {
            Err(Error::TooSlow { received, .. }) => assert_eq!(received, 82),
            other => panic!("expected TooSlow, got {other:?}"),
        }
    }

    #[test]
    fn enough_bytes_start_a_new_window() {
        let t0 = Instant::now();
        let mut check = SpeedCheck::new(LIMIT, None);
        check.asked(t0);
        check.arrived(100, at(t0, 10), "u").unwrap();
        // The new window starts empty: 99 bytes in it are too few.
        check.asked(at(t0, 10));
        check.arrived(99, at(t0, 20), "u").unwrap_err();
    }

    #[test]
    fn time_the_reader_keeps_the_bytes_is_not_counted() {
        let t0 = Instant::now();
        let mut check = SpeedCheck::new(LIMIT, None);
        // Each byte arrives at once, then the reader takes 30 s with it.
        let mut now = t0;
        for _ in 0..5 {
            check.asked(now);
            check.arrived(1, now, "u").unwrap();
            now += Duration::from_secs(30);
        }
        // 5 bytes in 150 s, but none of it spent waiting on the network.
        check.asked(now);
        check.arrived(1, now + Duration::from_secs(9), "u").unwrap();
        check.asked(now + Duration::from_secs(9));
        check
            .arrived(1, now + Duration::from_secs(10), "u")
            .unwrap_err();
    }

    #[test]
    fn a_body_that_failed_after_too_few_bytes_for_its_time_is_stalled() {
        let t0 = Instant::now();
        let cause = || Error::Interrupted {
            url: "u".into(),
            reason: "idle".into(),
        };
        // 50 bytes, then silence until the idle timeout 20 s later: too few
        // for its 21 s (210 owed), though no window ended with too few.
        let mut check = SpeedCheck::new(LIMIT, None);
        check.asked(t0);
        check.arrived(50, at(t0, 1), "u").unwrap();
        check.asked(at(t0, 1));
        match check.failed(at(t0, 21), cause()) {
            Error::Stalled {
                received, waited, ..
            } => assert_eq!((received, waited), (50, Duration::from_secs(21))),
            other => panic!("expected Stalled, got {other:?}"),
        }
        // Enough for its time: the failure is its own.
        let mut check = SpeedCheck::new(LIMIT, None);
        check.asked(t0);
        check.arrived(300, at(t0, 1), "u").unwrap();
        check.asked(at(t0, 1));
        assert!(matches!(
            check.failed(at(t0, 21), cause()),
            Error::Interrupted { .. }
        ));
        // Nothing brought: its own error too.
        let mut check = SpeedCheck::new(LIMIT, None);
        check.asked(t0);
        assert!(matches!(
            check.failed(at(t0, 60), cause()),
            Error::Interrupted { .. }
        ));
        // The reader's own time is not counted: 50 bytes, kept 100 s by the
        // reader, then 5 s of waiting (50 owed).
        let mut check = SpeedCheck::new(LIMIT, None);
        check.asked(t0);
        check.arrived(50, t0, "u").unwrap();
        check.asked(at(t0, 100));
        assert!(matches!(
            check.failed(at(t0, 105), cause()),
            Error::Interrupted { .. }
        ));
    }

    #[test]
    fn the_limit_off_never_fails() {
        let t0 = Instant::now();
        let mut check = SpeedCheck::new(LowSpeedLimit::OFF, None);
        check.asked(t0);
        check.arrived(0, at(t0, 3600), "u").unwrap();
    }
}
