//! (stub: sshd in a network namespace)
