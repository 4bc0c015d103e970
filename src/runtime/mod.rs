//! runtime layer (work in progress).
