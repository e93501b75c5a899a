//! (stub: Prism)
