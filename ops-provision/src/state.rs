//! (stub: fleet state)
