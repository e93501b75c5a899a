//! (stub: filled in by the hetzner work)
