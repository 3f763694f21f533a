//! Targets: where changes are written. One file per target kind.

pub mod ldap;
pub mod password;
pub mod schema;

/// Why a target could not be used. Each variant says what happens next.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No server answered: the run stops before any write (exit 69).
    #[error("{0}")]
    Unreachable(String),
    /// TLS verification failed: the run stops before any write (exit 69).
    #[error("{0}")]
    Tls(String),
    /// The server refused the bind: the run stops before any write (exit 69).
    #[error("{0}")]
    Bind(String),
    /// Reading the directory failed: the run stops before any write (exit 69).
    #[error("{0}")]
    Read(String),
    /// The configuration names attributes or classes the server does not know (exit 78).
    #[error("{0}")]
    Schema(String),
}

impl TargetError {
    pub fn exit_code(&self) -> i32 {
        match self {
            TargetError::Schema(_) => crate::exit::CONFIG,
            _ => crate::exit::UNAVAILABLE,
        }
    }
}
