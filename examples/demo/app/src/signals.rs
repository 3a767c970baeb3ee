//! SIGTERM / SIGINT: a flag to poll plus a socket that becomes readable, so that a thread
//! sleeping in poll(2) wakes up at once.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

pub struct Shutdown {
    flag: Arc<AtomicBool>,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
}

impl Shutdown {
    /// Installs the handlers for SIGTERM and SIGINT.
    pub fn install() -> Result<Shutdown> {
        let shutdown = Shutdown::for_tests()?;
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, shutdown.flag.clone())
                .context("installing a signal handler")?;
            let tx = shutdown
                .wake_tx
                .try_clone()
                .context("cloning the wake-up socket")?;
            signal_hook::low_level::pipe::register(sig, tx)
                .context("installing a signal handler")?;
        }
        Ok(shutdown)
    }

    /// A shutdown switch without signal handlers: `request` flips it.
    pub fn for_tests() -> Result<Shutdown> {
        let (wake_rx, wake_tx) = UnixStream::pair().context("creating the wake-up socket")?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Shutdown {
            flag: Arc::new(AtomicBool::new(false)),
            wake_rx,
            wake_tx,
        })
    }

    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Asks for a shutdown as a signal would.
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Readable once a shutdown was requested (never drained, so it stays readable).
    pub fn wake_fd(&self) -> RawFd {
        self.wake_rx.as_raw_fd()
    }

    /// Sleeps for `d` or until a shutdown is requested; true if it was.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.requested() {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }
}
