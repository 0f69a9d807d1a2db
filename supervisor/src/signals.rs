//! How signals reach the event loop: SIGCHLD (and SIGINT/SIGTERM, when the pool takes
//! them over) become bytes on self-pipes that the loop polls with the workers' pipes,
//! so a signal wakes it like any other input and no handler does more than write one
//! byte.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// SIGINT/SIGTERM and SIGCHLD, each turned into a byte on a pipe the loop polls.
pub(crate) struct SignalPipes {
    /// Present when the pool takes over SIGINT and SIGTERM.
    pub(crate) interrupts: Option<UnixStream>,
    pub(crate) children: UnixStream,
    ids: Vec<signal_hook::SigId>,
}

impl SignalPipes {
    /// Listens for SIGCHLD, and for SIGINT and SIGTERM if `take_interrupts`.
    pub(crate) fn register(take_interrupts: bool) -> std::io::Result<SignalPipes> {
        let (children, child_writer) = nonblocking_pair()?;
        let mut ids = vec![signal_hook::low_level::pipe::register(
            signal_hook::consts::SIGCHLD,
            child_writer,
        )?];
        let mut interrupts = None;
        if take_interrupts {
            let (reader, writer) = nonblocking_pair()?;
            for sig in INTERRUPTS {
                ids.push(signal_hook::low_level::pipe::register(
                    sig,
                    writer.try_clone()?,
                )?);
            }
            if RUNNING_POOLS.fetch_add(1, Ordering::SeqCst) == 0 {
                default_when_idle().store(false, Ordering::SeqCst);
            }
            interrupts = Some(reader);
        }
        Ok(SignalPipes {
            interrupts,
            children,
            ids,
        })
    }

    /// Number of signals that arrived on `stream` since the last call.
    pub(crate) fn drain(mut stream: &UnixStream) -> usize {
        let mut count = 0;
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            count += n;
        }
        count
    }
}

impl Drop for SignalPipes {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        if self.interrupts.is_some() && RUNNING_POOLS.fetch_sub(1, Ordering::SeqCst) == 1 {
            default_when_idle().store(true, Ordering::SeqCst);
        }
    }
}

fn nonblocking_pair() -> std::io::Result<(UnixStream, UnixStream)> {
    let (reader, writer) = UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    Ok((reader, writer))
}

/// What ends a run as the first Ctrl-C does: SIGINT, SIGTERM, and SIGHUP (the
/// terminal was closed).
const INTERRUPTS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// Pools alive in this process that take over SIGINT and SIGTERM.
static RUNNING_POOLS: AtomicUsize = AtomicUsize::new(0);

/// While no pool is alive, SIGINT and SIGTERM do what they would without procpool:
/// end the process. signal-hook cannot uninstall its handler once a pool registered
/// one, so this conditional default action stands in for the OS default.
fn default_when_idle() -> &'static AtomicBool {
    static IDLE: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    IDLE.get_or_init(|| {
        let idle = Arc::new(AtomicBool::new(true));
        for sig in INTERRUPTS {
            // Should this fail, the signal is ignored after the pool: no worse than
            // signal-hook alone.
            let _ = signal_hook::flag::register_conditional_default(sig, Arc::clone(&idle));
        }
        idle
    })
}
