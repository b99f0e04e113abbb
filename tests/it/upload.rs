//! Uploads over SFTP into a directory that containers can write, against a real sshd.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::support::rig::Sshd;

const PRECIOUS: &str = "ssh-ed25519 AAAAprecious deploy@laptop\n";
const RECORD: &[u8] = b"{\"outcome\": \"healthy\"}\n";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Issue 25: `release.json` is rewritten after containers ran, in the compose project
/// directory. A container that bind-mounts `.` could plant
/// `release.json.berth-upload -> ~/.ssh/authorized_keys`, which berth then truncated,
/// overwrote and chmodded. A link at the target itself must be replaced, not followed
/// (`mv` onto a link to a directory would move the file into it).
#[test]
fn a_symlink_planted_in_the_project_dir_is_replaced_not_written_through() {
    let sshd = Sshd::start();
    let session = sshd.session();
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("authorized_keys");
    std::fs::write(&outside, PRECIOUS).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();

    let planted = [
        ("release.json.berth-upload", outside.as_path()),
        ("a.json", outside.as_path()),
        ("b.json", elsewhere.as_path()),
    ];
    for (name, to) in planted {
        symlink(to, project.join(name)).unwrap();
    }
    for target in ["release.json", "a.json", "b.json"] {
        let target = project.join(target);
        session
            .upload(target.to_str().unwrap(), RECORD, 0o640)
            .unwrap_or_else(|e| panic!("upload to {}: {e}", target.display()));
        let kept = std::fs::symlink_metadata(&target).unwrap();
        assert!(kept.is_file(), "{} is a regular file", target.display());
        assert_eq!(std::fs::read(&target).unwrap(), RECORD);
        assert_eq!(mode(&target), 0o640);
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), PRECIOUS);
    assert_eq!(mode(&outside), 0o600, "the linked file's mode is untouched");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert!(
        std::fs::symlink_metadata(project.join("release.json.berth-upload")).is_err(),
        "no temp name is left behind"
    );
}
