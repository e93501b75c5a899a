//! (stub: filled in by the ssh work)
