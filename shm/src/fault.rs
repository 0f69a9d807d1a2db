//! A real invalid memory access, for crash tests.
//!
//! procpool's crash workload must fail the way buggy native code fails: the kernel
//! delivers SIGSEGV for an access to memory the process may not touch. `raise(SIGSEGV)`
//! would not do: std's stack-overflow handler ignores the first SIGSEGV that does not
//! come from a fault.

use std::num::NonZeroUsize;

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};

/// Reads from a freshly mapped page that allows no access, so the kernel kills this
/// process with SIGSEGV. Never returns.
pub fn segfault() -> ! {
    let page = NonZeroUsize::new(4096).expect("4096 is not zero");
    // SAFETY: a fresh anonymous private mapping at an address the kernel chooses
    // cannot overlap anything this process already uses.
    let guard = unsafe { mmap_anonymous(None, page, ProtFlags::PROT_NONE, MapFlags::MAP_PRIVATE) };
    match guard {
        Ok(pointer) => {
            // SAFETY: not safe, and meant not to be: the page is PROT_NONE, so this
            // read faults and the process dies of SIGSEGV before the value exists.
            let byte = unsafe { pointer.cast::<u8>().as_ptr().read_volatile() };
            unreachable!("read {byte} from a PROT_NONE page")
        }
        Err(err) => {
            // Without a page to fault on, abort: the caller wanted this process dead.
            eprintln!("procpool: could not map a guard page to fault on ({err}); aborting");
            std::process::abort()
        }
    }
}
