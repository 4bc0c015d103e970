//! server layer (work in progress).
