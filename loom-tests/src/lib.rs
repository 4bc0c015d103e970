//! loom models of shardpool's checkout/return protocol live in `tests/`.
