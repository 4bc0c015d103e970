//! upstream layer (work in progress).
