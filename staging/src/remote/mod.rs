//! Remote NAS access over SSH (SFTP through libssh2).
//!
//! A NAS path may be `[user@]host[:port]:/path` ([`Location`]). The host alias is
//! resolved through `~/.ssh/config`, the host key must already be in `known_hosts`, and
//! authentication uses ssh-agent or key files, as OpenSSH would. [`Remote`] keeps a pool
//! of connections: `storage::SftpStore` maps it onto the `Storage` trait, through which the
//! copy engine reads a remote tree with the same guarantees as a local one, and pull and
//! ingest write verified folders through it ([`Remote::begin_upload`]). Many small files
//! are read through one `tar` pipe per batch where the host has GNU tar (`stream.rs`).

mod connect;
mod find;
mod pool;
mod read;
mod spec;
mod stream;
mod write;

pub use connect::{Endpoint, SshOptions};
pub(crate) use pool::Fault;
pub use pool::{Remote, RemoteErrorKind};
pub(crate) use read::meta_of;
pub use spec::{Location, LocationKind, RemoteSpec};
pub(crate) use write::flush_remote;
pub use write::{Upload, UploadOptions, UploadReport};
