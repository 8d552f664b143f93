//! The SFTP backend of the storage layer (`storage::SftpStore`) against a real OpenSSH
//! server on loopback ([`common::sshd`]): what a command reaches through `dyn Storage` on an
//! SSH host, file by file: list, stat, read from an offset, a write under a temporary name
//! that is read back before it is renamed, protection, removal, and what SFTP cannot keep.
//!
//! One test in this binary: it points the process's HOME at the world's (the SSH client
//! settings live in `~/.ssh` there), which no other test in the same process may share.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::sshd::Sshd;
use common::{temporaries, Env};
use hpcstage_staging::hash::Digest;
use hpcstage_staging::remote::{Location, SshOptions};
use hpcstage_staging::storage::{self, Capabilities, S3Options, Storage};
use hpcstage_staging::walk::{Filter, Kind};
use hpcstage_staging::Error;

fn read_all(store: &dyn Storage, rel: &str, from: u64) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .read(Path::new(rel), from, &mut |block| {
            out.extend_from_slice(block);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("read {rel} from {from}: {e}"));
    out
}

#[test]
fn an_ssh_folder_is_a_storage_whose_writes_stay_hidden_until_read_back_and_committed() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    let dir = sshd.remote_dir(&env, "remote");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"hello world").unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    sshd.give_to_login_user(&dir);
    // The only test of this binary: no other thread reads the environment.
    std::env::set_var("HOME", env.path("home"));
    let location = Location::parse(OsStr::new(&sshd.spec(&dir))).unwrap();
    let store = storage::open(&location, &SshOptions::default(), &S3Options::default())
        .expect("open the SSH folder");

    // What SFTP cannot carry is said once, by the backend.
    let note = Capabilities::limits_note(store.as_ref()).expect("SFTP has limits");
    assert!(
        note.contains("hard links become separate files")
            && note.contains("sparse files are copied in full")
            && !note.contains("symbolic links"),
        "{note}"
    );

    // Listing, stat, links, and a read that starts at a byte offset (a resumed read).
    let tree = store.list(&Filter::default()).unwrap();
    let mut listed: Vec<_> = tree
        .entries
        .iter()
        .map(|e| (e.rel.display().to_string(), e.kind))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        listed,
        vec![
            ("a.txt".to_string(), Kind::File),
            ("link".to_string(), Kind::Symlink),
            ("sub".to_string(), Kind::Dir),
        ]
    );
    assert_eq!(store.stat(Path::new("a.txt")).unwrap().unwrap().size, 11);
    assert!(store.stat(Path::new("missing")).unwrap().is_none());
    assert_eq!(
        store.read_link(Path::new("link")).unwrap(),
        Path::new("a.txt")
    );
    assert_eq!(read_all(store.as_ref(), "a.txt", 6), b"world");

    // A write: under a temporary name until it was read back and committed.
    let bytes = b"new bytes".as_slice();
    let rel = Path::new("sub/b.txt");
    let mut upload = store.create(rel, 9, Digest::of(bytes)).unwrap();
    upload.write(&bytes[..4]).unwrap();
    upload.write(&bytes[4..]).unwrap();
    let written = upload.finish().unwrap();
    assert!(store.stat(rel).unwrap().is_none(), "visible before commit");
    assert_eq!(temporaries(&dir).len(), 1, "{:?}", temporaries(&dir));
    store.verify(&written).unwrap();
    store.commit(&written).unwrap();
    assert_eq!(std::fs::read(dir.join(rel)).unwrap(), bytes);
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
    store.protect(&written, None).unwrap();
    let mode = std::fs::metadata(dir.join(rel))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "still writable: {mode:o}");

    // Bytes that are not the source's are refused, and leave no temporary behind.
    let mut upload = store
        .create(Path::new("c.txt"), 5, Digest::of(b"hello"))
        .unwrap();
    upload.write(b"HELLO").unwrap();
    assert!(matches!(upload.finish(), Err(Error::SourceChanged { .. })));
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));

    // What the server holds is what is compared: a temporary changed on the host after
    // it was written fails the read-back, and is not committed.
    let mut upload = store
        .create(Path::new("d.txt"), 2, Digest::of(b"ok"))
        .unwrap();
    upload.write(b"ok").unwrap();
    let written = upload.finish().unwrap();
    let tmp = temporaries(&dir).pop().expect("the temporary of d.txt");
    std::fs::write(&tmp, b"KO").unwrap();
    assert!(
        matches!(store.verify(&written), Err(Error::ReadBackMismatch { .. })),
        "a changed temporary passed the read-back"
    );
    assert!(store.stat(Path::new("d.txt")).unwrap().is_none());

    store.remove(Path::new("a.txt")).unwrap();
    assert!(!dir.join("a.txt").exists());
}
