//! (stub: filled in by the digitalocean work)
