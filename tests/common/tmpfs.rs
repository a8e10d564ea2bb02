//! A small disk: a tmpfs of a given size, for members whose disk fills up.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a path, unmounted when dropped, but for a test that
/// failed: its contents are evidence then, and it says where they are.
pub struct Tmpfs(pub PathBuf);

/// What fills a tmpfs up to its last byte.
const FILLER: &str = "filler";

impl Tmpfs {
    /// `None`, with a note, where mounting needs a root this test lacks.
    pub fn mount(at: &Path, megabytes: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs", at.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("NOTE: mounting a tmpfs needs root; what needs a small disk is skipped");
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    /// Takes every free byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join(FILLER)).unwrap();
        let block = vec![0u8; 1 << 20];
        loop {
            match file.write(&block) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
    }

    /// Gives back what `fill` took.
    pub fn empty(&self) {
        std::fs::remove_file(self.0.join(FILLER)).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the small disk stays mounted at {} (umount it when done)", self.0.display());
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
