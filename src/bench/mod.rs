//! bench layer (work in progress).
