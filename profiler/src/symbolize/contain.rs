//! Keeping a panic in a symbolizer from spreading past the binary that
//! caused it.
//!
//! The symbolizers parse whatever binaries the profiled processes map,
//! which can be malformed or hostile; a panic in a parser (our own or
//! blazesym's) on one of them must cost that binary its names, not the
//! recording or the agent's symbolizer thread. [`catch`] runs the work for
//! one binary and turns a panic into an error message. While it runs, the
//! process's panic hook stays quiet on this thread (the caller reports the
//! message once, through `tracing`, instead of the default hook's lines on
//! stderr); every other panic goes to the hook that was there before.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`catch`].
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The message and place of the panic [`catch`] is unwinding from.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`; a panic in it becomes `Err` with the panic's message and
/// where it was raised. Whatever `f` was changing may be left half done,
/// so the caller must not use that state again (it gives up on the binary).
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_hook();
    let outer = CATCHING.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(outer);
    result.map_err(|payload| {
        CAUGHT.take().unwrap_or_else(|| {
            payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned())
        })
    })
}

/// Chains a hook in front of the process's panic hook, once: panics inside
/// [`catch`] are recorded for it, the others passed on.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.get() {
                let place = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                CAUGHT.set(Some(format!("{message}{place}")));
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_place() {
        assert_eq!(catch(|| 7), Ok(7));
        let e = catch(|| -> u32 { panic!("bad table {}", 3) }).unwrap_err();
        assert!(e.starts_with("bad table 3 at "), "{e}");
        assert!(e.contains("contain.rs"), "{e}");
        // Arithmetic overflow, as a parser's unchecked `start + size`.
        let big = std::hint::black_box(u64::MAX);
        let e = catch(|| big + 1).unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        // Outside `catch`, nothing is swallowed.
        assert!(std::panic::catch_unwind(|| panic!("not ours")).is_err());
        assert!(CAUGHT.take().is_none());
    }
}
