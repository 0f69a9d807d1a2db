//! Shared memory for procpool (placeholder; grows with the shared-array issue).
#![deny(unsafe_op_in_unsafe_fn)]
